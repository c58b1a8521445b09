"""The package's wings: data flows one way, base < data < nets < dissect < report < study.

A module imports modules of its own wing or of a lower one, never of a higher one, and no
modules import each other in a circle (imports inside functions count too). README.md's
layout section draws the same order."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "advdissect"
ORDER = ("", "data", "nets", "dissect", "report", "study")  # "" is the base: advdissect/*.py


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else ""


def _imports(module: str, path: Path) -> set[str]:
    """The package's modules that `module` imports, at any depth of its code."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        out.update(name for name in names if name in MODULES and name != module)
    return out


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def test_every_module_lies_in_a_known_wing():
    assert {_wing(m) for m in MODULES} == set(ORDER)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_wing(module):
    rank = ORDER.index(_wing(module))
    upward = sorted(other for other in GRAPH[module] if ORDER.index(_wing(other)) > rank)
    assert not upward, f"{module} imports the higher wing(s) of {upward}"


def test_no_import_circle():
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            raise AssertionError("import circle: " + " -> ".join(trail[trail.index(module) :] + [module]))
        if module in done:
            return
        for other in sorted(GRAPH[module]):
            visit(other, trail + [module])
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, [])


def test_the_base_and_the_wings_import_no_torch():
    """Reading specs, or importing a wing's package, stays light: torch comes with its modules."""
    code = (
        "import sys, advdissect.specs, advdissect.data, advdissect.nets, advdissect.dissect, "
        "advdissect.report, advdissect.study; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
