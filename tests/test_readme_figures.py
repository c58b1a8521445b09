"""Figures the README quotes from files the benchmarks wrote: the quoted text is the file's."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import rehearsal_fit  # noqa: E402


def test_the_rehearsal_table_is_the_fit_scripts_file():
    """README's rehearsal table and its summary lines are benchmarks/results/rehearsal_cpu.md, verbatim."""
    written = (ROOT / "benchmarks" / "results" / "rehearsal_cpu.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for line in written.splitlines():
        if line.strip():
            assert line in readme, line[:80]


def test_the_fit_recovers_a_known_line(tmp_path):
    """rehearsal_fit on made-up benchmark files: CPU seconds growing by 2 per image plus 5 per job,
    one job per shard of 100 images, and a whole-set job whose memory grows by 1 MB per image."""
    sizes = {"small": 100, "mid": 200, "large": 400}
    for name, n in sizes.items():
        for shard in range(n // 100):
            path = tmp_path / "per_shard" / name / f"{shard:04d}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"s": [1.0], "max_rss": [500.0], "cpu_time": [5.0 + 2.0 * 100]}).to_csv(path, sep="\t")
        path = tmp_path / "whole_set" / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"s": [1.0], "max_rss": [100.0 + n], "cpu_time": [3.0 + 0.5 * n]}).to_csv(path, sep="\t")
    table = rehearsal_fit.fit(rehearsal_fit.job_costs(tmp_path, sizes))
    full = rehearsal_fit.BRODEN_IMAGES
    shard = table.loc["per_shard"]
    # 4 jobs at the largest size; 2.05 CPU-s per image (2 + 5 per 100-image job)
    assert shard["jobs at 400"] == 4 and shard["CPU-s per 1,000 images"] == 2050.0
    assert shard[f"peak MB at {full:,}"] == 500  # one shard at a time, whatever the set
    whole = table.loc["whole_set"]
    assert whole["CPU-s per 1,000 images"] == 500.0 and whole[f"CPU-s at {full:,}"] == round(3 + 0.5 * full)
    assert whole[f"peak MB at {full:,}"] == 100 + full
