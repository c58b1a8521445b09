"""The whole workflow on a tiny config: outputs, no-op re-runs, partial re-runs, shard independence,
the report, and the linter."""

import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny_config.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str, config: Path | None = None, check: bool = True) -> str:
    cmd = [
        *SNAKEMAKE,
        "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(config or workdir / "config.yaml"),
        "--cores", "2",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    output = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{output[-6000:]}")
    return output


def write_config(path: Path, **dataset_overrides) -> dict:
    config = yaml.safe_load(TINY.read_text())
    config["datasets"]["tiny"].update(dataset_overrides)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """The tiny study, run to completion with 3 shards."""
    workdir = tmp_path_factory.mktemp("study")
    write_config(workdir / "config.yaml", shard_size=8)
    snakemake(workdir)
    return workdir


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count from a dry run's job stats table."""
    counts: dict[str, int] = {}
    match = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\n\s*\n", output, re.S)
    if not match:
        return counts
    for line in match.group(1).splitlines():
        name, _, number = line.rpartition(" ")
        if name.strip() and name.strip() != "total":
            counts[name.strip()] = int(number)
    return counts


def job_wildcards(output: str) -> list[dict[str, str]]:
    found = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("wildcards:"):
            found.append(dict(part.split("=", 1) for part in line[len("wildcards:"):].strip().split(", ")))
    return found


def test_outputs_have_the_documented_columns(study):
    summary = study / "results" / "summary"
    expected = {
        "models.csv": ["model", "arch", "weights", "dataset", "heldout_accuracy"],
        "attacks.csv": ["dataset", "model", "attack", "method", "eps", "n_images", "agreement",
                        "success_rate", "linf_max", "l2_mean"],
        "table2.csv": ["dataset", "model", "layer", "attack", "threshold_mode", "category", "units",
                       "detectors", "ratio_percent"],
        "training.csv": ["arch", "method", "clean_accuracy", "attack", "adversarial_accuracy"],
    }
    for name, columns in expected.items():
        frame = pd.read_csv(summary / name)
        assert list(frame.columns[: len(columns)]) == columns, name
        assert len(frame) > 0, name
    table2 = pd.read_csv(summary / "table2.csv")
    assert set(table2["category"]) == {"color", "texture", "material", "part", "object", "scene", "all"}
    assert set(table2["threshold_mode"]) == {"self", "clean"}
    assert (summary / "table2.md").read_text().startswith("# Table 2")
    tally = pd.read_csv(study / "results/tiny/rand18/fgsm_2/self/tally/layer4.csv")
    assert tally["unit"].tolist() == list(range(1, 513))
    attacks = pd.read_csv(summary / "attacks.csv")
    assert (attacks["linf_max"] <= attacks["eps"] + 1e-6).all()


def test_figures_exist(study):
    figures = study / "results" / "figures"
    for path in [
        "detectors/tiny/rand18/layer3.png", "detectors/tiny/rand18/layer3.svg",
        "eps_sweep/tiny/rand18/layer4.png", "units/tiny/rand18/layer4/fgsm_2.png",
        "concept_drift.png", "training.png", "learning_curves.png",
    ]:
        assert (figures / path).stat().st_size > 1000, path


def test_second_run_does_nothing_quickly(study):
    start = time.monotonic()
    output = snakemake(study, "--dry-run")
    assert "Nothing to be done" in output
    assert time.monotonic() - start < 60


def test_changing_one_eps_reruns_only_that_attack(study, tmp_path):
    config = yaml.safe_load((study / "config.yaml").read_text())
    config["attacks"]["fgsm_2"]["eps"] = "3/255"
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    output = snakemake(study, "--dry-run", config=changed)
    jobs = planned_jobs(output)
    # 2 models use fgsm_2 on 3 shards; rand18 has 2 layers, small18 1 and small18_atda 1.
    assert jobs["attack_shard"] == 3 * 3
    assert jobs["activations"] == 3 * (2 + 1 + 1)
    assert jobs["thresholds"] == 2 + 1 + 1
    assert jobs["count_shard"] == 3 * 2 * (2 + 1 + 1)  # both threshold modes
    assert "train_model" not in jobs and "make_synthetic" not in jobs
    attacks = {w["attack"] for w in job_wildcards(output) if "attack" in w}
    assert attacks == {"fgsm_2"}


def test_adding_a_layer_adds_only_its_jobs(study, tmp_path):
    config = yaml.safe_load((study / "config.yaml").read_text())
    config["models"]["small18"]["layers"] = ["layer4", "layer2"]
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(snakemake(study, "--dry-run", config=changed))
    assert "attack_shard" not in jobs and "train_model" not in jobs
    assert jobs["activations"] == 3 * 2  # clean and fgsm_2, 3 shards
    assert jobs["thresholds"] == 2
    layers = {w["layer"] for w in job_wildcards(snakemake(study, "--dry-run", config=changed)) if "layer" in w}
    assert layers == {"layer2"}


def test_changing_the_iou_cut_reruns_only_summaries(study, tmp_path):
    config = yaml.safe_load((study / "config.yaml").read_text())
    config["dissection"]["iou_threshold"] = 0.05
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(snakemake(study, "--dry-run", config=changed))
    heavy = {"attack_shard", "activations", "thresholds", "count_shard", "merge_counts", "train_model"}
    assert not heavy & set(jobs)
    assert jobs["units_table"] > 0 and jobs["table2"] == 1


def test_results_do_not_depend_on_the_shard_count(study, tmp_path):
    write_config(tmp_path / "config.yaml", shard_size=24)
    snakemake(tmp_path, "--until", "table2")
    ours = pd.read_csv(study / "results/summary/table2.csv")
    theirs = pd.read_csv(tmp_path / "results/summary/table2.csv")
    pd.testing.assert_frame_equal(ours, theirs)
    for tally in (study / "results/tiny/rand18/fgsm_2/clean/tally").glob("*.csv"):
        other = tmp_path / tally.relative_to(study)
        assert tally.read_bytes() == other.read_bytes(), tally.name


def test_report_holds_every_figure_and_table(study):
    report = study / "report.zip"
    snakemake(study, "--report", str(report))
    with zipfile.ZipFile(report) as archive:
        names = archive.namelist()
    for needle in ["table2.csv", "models.csv", "attacks.csv", "training.csv", "concept_drift_summary.csv",
                   "concept_drift.png", "training.png", "learning_curves.png"]:
        assert any(name.endswith(needle) for name in names), needle
    assert sum("/detectors/" in name and name.endswith(".png") for name in names) >= 4
    assert sum("/eps_sweep/" in name and name.endswith(".png") for name in names) >= 4
    assert sum("/units/" in name and name.endswith(".png") for name in names) >= 4


def test_lint_is_clean():
    proc = subprocess.run([*SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
