"""Where a run's time went: per rule, the jobs, their summed and longest wall time, from the
Snakemake benchmark files under results/benchmarks/ (one TSV per job).

    .venv/bin/python benchmarks/rule_times.py [results/benchmarks] [--markdown]

Wall seconds add up across jobs that ran at the same time, so the total exceeds the run's
elapsed time by up to the number of cores; `cpu_time` is the jobs' own CPU seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def rule_times(root: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(root.rglob("*.tsv")):
        rule = path.relative_to(root).parts[0].removesuffix(".tsv")
        bench = pd.read_csv(path, sep="\t")
        rows.append({"rule": rule, "s": float(bench["s"].iloc[0]), "cpu_time": float(bench["cpu_time"].iloc[0])})
    if not rows:
        raise SystemExit(f"no benchmark files under {root}")
    jobs = pd.DataFrame(rows)
    table = jobs.groupby("rule").agg(
        jobs=("s", "size"), wall_s=("s", "sum"), longest_s=("s", "max"), cpu_s=("cpu_time", "sum")
    )
    table = table.sort_values("wall_s", ascending=False)
    table.loc["total"] = [table["jobs"].sum(), table["wall_s"].sum(), table["longest_s"].max(), table["cpu_s"].sum()]
    table["jobs"] = table["jobs"].astype(int)
    return table.round(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("root", nargs="?", default="results/benchmarks", type=Path)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    table = rule_times(args.root)
    print(table.to_markdown() if args.markdown else table.to_string())


if __name__ == "__main__":
    main()
