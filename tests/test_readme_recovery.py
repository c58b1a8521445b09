"""README's "When things go wrong": every message it quotes is one the code can print, and every
row says where it is shown to work.

A quoted message is split at its placeholders (`…`, `<…>`); each literal piece must occur in
the source of the library or the workflow, so a reworded error cannot leave the table pointing
at a message nobody sees any more. Rows that quote Snakemake's own words, or quote no message,
name where their claim is shown.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Rows that quote Snakemake's or PyTorch's own words, not ours, and where the behaviour is tested.
OUTSIDE = {
    "Config file is not valid JSON or YAML": "test_config.py::test_config_command_names_the_file_and_line",
    "Error: Directory cannot be locked": "Snakemake's lock; the README gives its own command",
    "see why a job runs": "Snakemake's dry run and the per-rule log and benchmark paths",
}
# Rows without a quoted message: the test that shows the row's claim.
CLAIMS = {
    "CUDA out of memory": ("test_activations.py", "test_out_of_memory_halves_the_batch"),
    "a job was killed": ("test_workflow.py", "kill"),
    "re-run one shard": ("test_workflow.py", "--forcerun"),
}


def table_rows() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## When things go wrong", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 2 and not set(cells[0]) <= set("-") and cells[0] != "what you see":
            rows.append((cells[0], cells[1]))
    return rows


def sources() -> str:
    paths = [*ROOT.glob("advdissect/**/*.py"), *ROOT.glob("workflow/**/*.py"), *ROOT.glob("workflow/rules/*.smk")]
    return "\n".join(p.read_text() for p in paths)


def literal_pieces(message: str) -> list[str]:
    pieces = re.split(r"…|<[^>]*>(?:\.\w+)?", message)  # a placeholder may carry a suffix: <file>.sha256
    return [p.strip(" '\"") for p in pieces if len(p.strip(" '\"")) >= 4]


def test_the_table_has_its_rows():
    rows = table_rows()
    assert len(rows) >= 15, [r[0] for r in rows]


@pytest.mark.parametrize("seen", [r[0] for r in table_rows()])
def test_each_row_points_at_something_real(seen):
    quoted = re.findall(r"`([^`]+)`", seen)
    if any(key in seen for key in OUTSIDE):
        return
    claim = next((v for k, v in CLAIMS.items() if seen.startswith(k)), None)
    if claim is not None:
        test_file, needle = claim
        assert needle in (ROOT / "tests" / test_file).read_text(), (seen, claim)
        return
    assert quoted, f"row {seen!r} quotes no message and names no test"
    code = sources()
    for message in quoted:
        for piece in literal_pieces(message):
            assert piece in code, f"README quotes {message!r}, but {piece!r} occurs in no error of the code"
