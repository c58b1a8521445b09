"""How each rule's cost grows with the image count, from a run of config/rehearsal.yaml.

    snakemake --cores 2 --configfile config/rehearsal.yaml --directory rehearsal
    .venv/bin/python benchmarks/rehearsal_fit.py rehearsal [--out benchmarks/results/rehearsal_cpu.md]

The rehearsal dissects the same generated set at several sizes (one dataset entry per size).
For every rule whose jobs belong to one dataset, the run's own benchmark files (one TSV per
job: `cpu_time`, `max_rss`) give per size its jobs, their summed CPU seconds and the largest
job's peak memory; a least-squares line through the sizes gives the CPU seconds per 1,000
images, extrapolated to Broden's 63,305 images. The peak memory of a rule with one job per
shard is the largest seen (a job holds one shard whatever the set's size); that of a job over
the whole set is extrapolated along its own line, so a step that does not stream shows it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from advdissect.data.download import BRODEN_IMAGES as BRODEN_SIZES

BRODEN_IMAGES = BRODEN_SIZES["broden1_224"]
# The jobs a GPU runs in the real study: their CPU seconds here say nothing about an H200.
GPU_RULES = ("attack_shard", "activations", "ablation")
# Rules with one job set per dataset, shared by every model and attack; the others are per image set.
PER_DATASET = ("segmentations", "ceilings")


def dataset_sizes(config: dict) -> dict[str, int]:
    """n_images of each dataset of the rehearsal config (n_val + n_train for the generated one)."""
    sizes = {}
    for name, spec in config["datasets"].items():
        if "n_images" in spec:
            sizes[name] = int(spec["n_images"])
        else:
            gen = spec.get("synthetic", {})
            sizes[name] = int(gen.get("n_train", 0)) + int(gen.get("n_val", 0))
    return sizes


def job_costs(bench_root: Path, sizes: dict[str, int]) -> pd.DataFrame:
    """One row per job of a per-dataset rule: rule, dataset, images, cpu_s, wall_s, rss_mb."""
    rows = []
    for path in sorted(bench_root.rglob("*.tsv")):
        parts = path.relative_to(bench_root).with_suffix("").parts
        if len(parts) < 2 or parts[1] not in sizes:
            continue  # a summary or figure job over every dataset
        bench = pd.read_csv(path, sep="\t")
        rows.append(
            {
                "rule": parts[0],
                "dataset": parts[1],
                "images": sizes[parts[1]],
                "cpu_s": float(bench["cpu_time"].iloc[0]),
                "wall_s": float(bench["s"].iloc[0]),
                "rss_mb": float(bench["max_rss"].iloc[0]),
            }
        )
    if not rows:
        raise SystemExit(f"no per-dataset benchmark files under {bench_root}")
    return pd.DataFrame(rows)


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line."""
    slope, intercept = np.polyfit(x.astype(float), y.astype(float), 1)
    return float(slope), float(intercept)


def fit(jobs: pd.DataFrame) -> pd.DataFrame:
    per_size = jobs.groupby(["rule", "images"]).agg(
        jobs=("cpu_s", "size"), cpu_s=("cpu_s", "sum"), peak_mb=("rss_mb", "max")
    )
    sizes = sorted(jobs["images"].unique())
    rows = []
    for rule, frame in per_size.groupby(level="rule"):
        frame = frame.droplevel("rule").reindex(sizes)
        if frame["jobs"].isna().any():
            continue  # not run at every size (the generator): see once_only
        x = np.asarray(sizes)
        cpu_slope, cpu_fixed = _line(x, frame["cpu_s"].to_numpy())
        mem_slope, mem_fixed = _line(x, frame["peak_mb"].to_numpy())
        row = {"rule": rule, f"jobs at {sizes[-1]:,}": int(frame.at[sizes[-1], "jobs"])}
        for n in sizes:
            row[f"CPU-s {n:,}"] = round(float(frame.at[n, "cpu_s"]), 1)
        row["CPU-s per 1,000 images"] = round(cpu_slope * 1000, 2)
        row[f"CPU-s at {BRODEN_IMAGES:,}"] = round(max(cpu_fixed + cpu_slope * BRODEN_IMAGES, 0.0))
        for n in sizes:
            row[f"peak MB {n:,}"] = round(float(frame.at[n, "peak_mb"]))
        # A rule with a job per shard holds one shard whatever the set's size: its peak stays
        # the largest seen. A job over the whole set may grow: its line is extrapolated.
        per_shard = frame.at[sizes[-1], "jobs"] > frame.at[sizes[0], "jobs"]
        grown = frame["peak_mb"].max() if per_shard else mem_fixed + mem_slope * BRODEN_IMAGES
        row[f"peak MB at {BRODEN_IMAGES:,}"] = round(max(grown, frame["peak_mb"].max()))
        rows.append(row)
    table = pd.DataFrame(rows).set_index("rule")
    return table.sort_values(f"CPU-s {sizes[-1]:,}", ascending=False)


def once_only(jobs: pd.DataFrame) -> pd.DataFrame:
    """Rules run for one size only (make_synthetic writes the largest set once)."""
    seen = jobs.groupby("rule")["images"].nunique()
    once = jobs[jobs["rule"].isin(seen[seen < jobs["images"].nunique()].index)]
    return once.groupby(["rule", "images"]).agg(
        jobs=("cpu_s", "size"), cpu_s=("cpu_s", "sum"), peak_mb=("rss_mb", "max")
    )


def cpu_side(table: pd.DataFrame, image_sets: int, datasets: int, image_sets_here: int) -> str:
    """The CPU jobs of a study of `image_sets` image sets on `datasets` Broden variants, at 63,305
    images, from the rehearsal's fitted rates (its `image_sets_here` image sets per size)."""
    at_full = table[f"CPU-s at {BRODEN_IMAGES:,}"]
    cpu = at_full.drop([r for r in GPU_RULES if r in at_full.index])
    per_dataset = cpu[cpu.index.isin(PER_DATASET)].sum()
    per_set = cpu[~cpu.index.isin(PER_DATASET)].sum() / image_sets_here
    total = image_sets * per_set + datasets * per_dataset
    return (
        f"CPU jobs at {BRODEN_IMAGES:,} images (GPU-class rules {', '.join(GPU_RULES)} left out): "
        f"{per_set:,.0f} CPU-s per image set of this layer pair and {per_dataset:,.0f} per dataset; "
        f"{image_sets} image sets on {datasets} dataset(s): {total / 3600:,.1f} CPU-hours."
    )


def _between(total: pd.Series) -> str:
    steps = total.diff().dropna().to_numpy() / np.diff(total.index.to_numpy()) * 1000
    return ", ".join(f"{v:.1f}" for v in steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path, help="the rehearsal's working directory (snakemake --directory)")
    parser.add_argument("--configfile", type=Path, default=Path("config/rehearsal.yaml"))
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    parser.add_argument("--study-image-sets", type=int, default=40, help="image sets of the study (paper.yaml: 40)")
    parser.add_argument("--study-datasets", type=int, default=2, help="Broden variants of the study (paper.yaml: 2)")
    args = parser.parse_args()
    config = yaml.safe_load(args.configfile.read_text())
    jobs = job_costs(args.workdir / "results" / "benchmarks", dataset_sizes(config))
    table = fit(jobs)
    fitted = jobs[jobs["rule"].isin(table.index)]
    total = fitted.groupby("images")["cpu_s"].sum()
    once = ", ".join(
        f"{rule} ({n:,} images) {row.cpu_s:,.1f} CPU-s, peak {row.peak_mb:,.0f} MB"
        for (rule, n), row in once_only(jobs).iterrows()
    )
    lines = [
        table.to_markdown(),
        "",
        f"Run once: {once}." if once else "",
        "CPU seconds of every per-dataset job, by size: "
        + ", ".join(f"{n:,} images {s:,.0f}" for n, s in total.items())
        + f"; {_between(total)} CPU-s per 1,000 images between sizes.",
        cpu_side(table, args.study_image_sets, args.study_datasets, len(config["attacks"])),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
