"""The whole workflow on a tiny config: outputs, no-op re-runs, partial re-runs, shard independence,
the report, and the linter."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import pandas as pd
import pytest
import yaml

from advdissect.study import config as adconfig
from advdissect.study import disk

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny_config.yaml"
PINNED = ROOT / "tests" / "data" / "tiny_tables.sha256"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

pytestmark = pytest.mark.workflow


def snakemake_command(workdir: Path, config: Path | None = None) -> list[str]:
    return [
        *SNAKEMAKE,
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config or workdir / "config.yaml"),
        "--cores",
        "2",
    ]


def snakemake(workdir: Path, *args: str, config: Path | None = None, check: bool = True) -> str:
    cmd = [*snakemake_command(workdir, config), *args]
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


def job_wildcards(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job a dry run lists."""
    found, rule = [], None
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("rule ") and line.endswith(":"):
            rule = line[5:-1]
        elif line.startswith("wildcards:"):
            pairs = line[len("wildcards:") :].strip().split(", ")
            found.append((rule, dict(part.split("=", 1) for part in pairs)))
    return found


def test_outputs_have_the_documented_columns(study):
    summary = study / "results" / "summary"
    expected = {
        "models.csv": ["model", "arch", "weights", "dataset", "heldout_accuracy"],
        "attacks.csv": [
            "dataset",
            "model",
            "attack",
            "method",
            "eps",
            "n_images",
            "agreement",
            "success_rate",
            "linf_max",
            "l2_mean",
        ],
        "table2.csv": [
            "dataset",
            "model",
            "layer",
            "attack",
            "threshold_mode",
            "category",
            "units",
            "detectors",
            "ratio_percent",
        ],
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


def _header_shape(markdown: str, names: set[str]) -> list[list[str]]:
    """Each table's header cells, without the dataset column and the config's own names."""
    from advdissect.report import results_md

    return [
        [c for c in header.strip("|").split("|") if not set(c.split()) & (names | {"dataset"})]
        for header in results_md.table_headers(markdown)
    ]


def test_readme_block_has_the_format_the_workflow_writes(study):
    """README's results block is demo_results.md of the demo config; the tiny study's file has
    the same sections and table columns (its own models and attacks aside)."""
    from advdissect.report import results_md

    ours = (study / "results/summary/demo_results.md").read_text()
    block = results_md.embedded_block((ROOT / "README.md").read_text())
    assert results_md.section_titles(ours) == results_md.section_titles(block)
    names = set()
    for path in (TINY, ROOT / "config" / "config.yaml"):
        config = yaml.safe_load(path.read_text())
        names |= set(config["attacks"]) | set(config["models"])
    assert _header_shape(ours, names) == _header_shape(block, names)


def test_figures_exist(study):
    figures = study / "results" / "figures"
    for path in [
        "detectors/tiny/rand18/layer3.png",
        "detectors/tiny/rand18/layer3.svg",
        "eps_sweep/tiny/rand18/layer4.png",
        "units/tiny/rand18/layer4/fgsm_2.png",
        "concept_drift.png",
        "training.png",
        "learning_curves.png",
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
    # 3 models use fgsm_2 on 3 shards; rand18 has 2 layers, small18 1 and small18_atda 1. One
    # activations job and one count job per shard hold every layer (and both threshold modes).
    assert jobs["attack_shard"] == 3 * 3
    assert jobs["activations"] == 3 * 3
    assert jobs["thresholds"] == 2 + 1 + 1
    assert jobs["count_shard"] == 3 * 3
    assert jobs["merge_counts"] == 2 * (2 + 1 + 1)  # both threshold modes
    assert "train_model" not in jobs and "make_synthetic" not in jobs
    attacks = {w["attack"] for _, w in job_wildcards(output) if "attack" in w}
    assert attacks == {"fgsm_2"}


def test_adding_a_layer_reruns_its_models_dissection_only(study, tmp_path):
    # Every layer of a model comes from one forward pass per image shard, so a new layer re-runs
    # that model's activation jobs and what reads them; attacks, training and other models stay.
    config = yaml.safe_load((study / "config.yaml").read_text())
    config["models"]["small18"]["layers"] = ["layer4", "layer2"]
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    output = snakemake(study, "--dry-run", config=changed)
    jobs = planned_jobs(output)
    assert "attack_shard" not in jobs and "train_model" not in jobs
    assert jobs["activations"] == 3 * 2  # clean and fgsm_2, 3 shards
    assert jobs["thresholds"] == 2 * 2  # both layers of both image sets
    per_layer = [w for rule, w in job_wildcards(output) if "layer" in w and rule != "eps_sweep"]
    assert {w["layer"] for w in per_layer} == {"layer2", "layer4"}
    assert {w["model"] for w in per_layer} == {"small18"}


def test_forcerun_of_one_shard_reruns_it_and_what_reads_it(study):
    # the README's recovery command for one shard
    output = snakemake(study, "--dry-run", "--forcerun", "results/tiny/rand18/fgsm_2/images/0001.h5")
    jobs = planned_jobs(output)
    assert jobs["attack_shard"] == 1 and jobs["activations"] == 1
    # the image set's thresholds (layer3, layer4) come from every shard, so every shard is recounted
    assert jobs["thresholds"] == 2 and jobs["count_shard"] == 3
    assert "train_model" not in jobs and "segmentations" not in jobs
    wildcards = [(rule, w) for rule, w in job_wildcards(output) if "attack" in w]
    assert {w["shard"] for rule, w in wildcards if rule in ("attack_shard", "activations")} == {"0001"}
    assert {(w["model"], w["attack"]) for rule, w in wildcards if rule != "eps_sweep"} == {("rand18", "fgsm_2")}


def test_changing_the_iou_cut_reruns_only_merges_and_summaries(study, tmp_path):
    config = yaml.safe_load((study / "config.yaml").read_text())
    config["dissection"]["iou_threshold"] = 0.05
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(snakemake(study, "--dry-run", config=changed))
    heavy = {"attack_shard", "activations", "thresholds", "count_shard", "train_model"}
    assert not heavy & set(jobs)
    assert jobs["merge_counts"] > 0 and jobs["table2"] == 1


def test_changing_the_figure_style_reruns_only_figures(study, tmp_path):
    config = yaml.safe_load((study / "config.yaml").read_text())
    config["figures"]["style"]["dpi"] = 61
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(snakemake(study, "--dry-run", config=changed))
    figures = {
        "layer_figures",
        "eps_sweep",
        "unit_pictures",
        "concept_drift",
        "training_summary",
        "ablation_summary",
    }
    # training_summary rewrites training.csv beside its figures, so the results summary follows.
    assert set(jobs) - {"all", "demo_results"} <= figures and jobs["layer_figures"] == 4


def test_changing_batch_size_or_device_ids_reruns_nothing(study, tmp_path):
    config = yaml.safe_load((study / "config.yaml").read_text())
    config.setdefault("dissection", {})["batch_size"] = 3
    config.setdefault("compute", {})["gpus"] = [5, 6]
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    output = snakemake(study, "--dry-run", config=changed)
    assert "Nothing to be done" in output, output[-3000:]


def test_adding_a_model_adds_only_its_chain(study, tmp_path):
    config = yaml.safe_load((study / "config.yaml").read_text())
    config["models"]["rand18b"] = dict(config["models"]["rand18"], weights={"source": "random", "seed": 4})
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    output = snakemake(study, "--dry-run", config=changed)
    jobs = planned_jobs(output)
    assert "train_model" not in jobs and "make_synthetic" not in jobs
    assert jobs["attack_shard"] == 3 * 3  # its three attacks, 3 shards each
    # The epsilon sweep of every layer reads table2.csv, which gains rows; nothing else is re-made.
    others = {(rule, w["model"]) for rule, w in job_wildcards(output) if w.get("model", "rand18b") != "rand18b"}
    assert {rule for rule, _ in others} <= {"eps_sweep"}, others


def test_results_do_not_depend_on_the_shard_count(study, tmp_path):
    write_config(tmp_path / "config.yaml", shard_size=24)
    snakemake(tmp_path, "--until", "table2")
    ours = pd.read_csv(study / "results/summary/table2.csv")
    theirs = pd.read_csv(tmp_path / "results/summary/table2.csv")
    pd.testing.assert_frame_equal(ours, theirs)
    for tally in (study / "results/tiny/rand18/fgsm_2/clean/tally").glob("*.csv"):
        other = tmp_path / tally.relative_to(study)
        assert tally.read_bytes() == other.read_bytes(), tally.name


def test_disk_estimate_matches_the_files(study):
    config = adconfig.load_config([study / "config.yaml"])
    estimated, real = disk.by_kind(disk.estimate(config)), disk.measured(study)
    for kind in [*disk.KINDS, "total"]:
        assert estimated.loc[kind, "files"] == real.loc[kind, "files"], kind
    for kind in [k for k in disk.KINDS if k != "records"]:
        assert estimated.loc[kind, "bytes"] == pytest.approx(real.loc[kind, "bytes"], rel=0.05), kind
    # the per-image records depend on the data: their rates are estimates, not shapes
    est, got = estimated.loc["records", "bytes"], real.loc["records", "bytes"]
    print(f"per-image records: estimated {est} bytes, written {got}")
    assert got / 4 <= est <= got * 4


def test_temporary_images_and_activations_are_removed_after_use(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["models"] = {"rand18": dict(config["models"]["rand18"], layers=["layer4"])}
    config["attacks"] = {name: config["attacks"][name] for name in ("clean", "fgsm_2")}
    config["storage"] = {"temporary": ["images", "activations"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(tmp_path)
    real = disk.measured(tmp_path)
    assert real.loc["images", "files"] == real.loc["activations", "files"] == 0
    assert real.loc["thresholds", "files"] == 2 and real.loc["iou", "files"] == 3  # clean; fgsm_2 self + clean
    for table in ["table2.csv", "attacks.csv", "demo_results.md"]:
        assert (tmp_path / "results/summary" / table).is_file(), table
    assert len(list((tmp_path / "results/figures/units").rglob("*.png"))) == 1
    assert "Nothing to be done" in snakemake(tmp_path, "--dry-run")


def test_report_holds_every_figure_and_table(study):
    report = study / "report.zip"
    snakemake(study, "--report", str(report))
    with zipfile.ZipFile(report) as archive:
        names = archive.namelist()
    for needle in [
        "table2.csv",
        "models.csv",
        "attacks.csv",
        "training.csv",
        "concept_drift_summary.csv",
        "concept_drift.png",
        "training.png",
        "learning_curves.png",
        "attack_effects.csv",
        "ablation.csv",
        "ablation.png",
    ]:
        assert any(name.endswith(needle) for name in names), needle
    # The archive keeps file names under hashed folders: a detector, an epsilon-sweep and an
    # IoU-sweep figure per dissected layer (4 layers), a unit picture per layer and attack (3 + 3),
    # a unit browser per layer (its page and a picture per unit).
    pngs = [Path(name).name for name in names if name.endswith(".png")]
    assert sum(name.startswith("layer") for name in pngs) == 3 * 4
    assert sum(name.endswith("/index.html") for name in names) == 4
    assert sum(name.endswith(".jpg") for name in names) == 256 + 3 * 512
    assert sum(name.startswith(("fgsm_2", "noise_2")) for name in pngs) == 6
    with zipfile.ZipFile(report) as archive:
        html = archive.read(next(name for name in names if name.endswith("report.html"))).decode()
    for category in [
        "Detectors",
        "Epsilon sweep",
        "IoU-cut sweep",
        "Unit pictures",
        "Unit browser",
        "Ablation",
        "Concept drift",
        "Training",
    ]:
        assert category in html, category


def test_a_config_error_is_one_line(tmp_path):
    config = write_config(tmp_path / "config.yaml")
    config["dissection"]["quantile"] = 1.5
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [*snakemake_command(tmp_path), "--dry-run"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line and not line.startswith("Using workflow")]
    assert lines == ["config: dissection.quantile: 1.5 is greater than or equal to the maximum of 1"]


def test_lint_is_clean():
    proc = subprocess.run([*SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# Files that legitimately differ between two runs: they hold wall-clock seconds.
VOLATILE = {"metrics.json", "history.csv"}


def result_files(workdir: Path, under: str = "") -> dict[str, bytes]:
    """Every result file (under results/`under`) but logs, benchmarks and VOLATILE ones:
    relative path -> bytes."""
    files = {}
    for path in sorted((workdir / "results" / under).rglob("*")):
        rel = path.relative_to(workdir / "results")
        if path.is_file() and rel.parts[0] not in ("logs", "benchmarks") and path.name not in VOLATILE:
            files[str(rel)] = path.read_bytes()
    return files


def temporaries(folder: Path) -> list[str]:
    """Names of the in-progress files (store.atomic_path's `.<name>.<random>.tmp`) in folder."""
    return [n for n in os.listdir(folder) if n.startswith(".") and n.endswith(".tmp")]


def kill_while_a_shard_is_written(workdir: Path, watch: list[Path], timeout: float = 900) -> Path:
    """Run the study and SIGKILL Snakemake and its jobs as soon as a shard's temporary file
    exists in one of the `watch` folders (a node dying mid-write); the shard's target path."""
    proc = subprocess.Popen(
        snakemake_command(workdir),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            for folder in watch:
                try:
                    if not temporaries(folder):
                        continue
                except FileNotFoundError:
                    continue
                # Freeze every process first, then look again: a writer that finished its
                # rename between the two looks is resumed and the watch goes on.
                os.killpg(proc.pid, signal.SIGSTOP)
                partial = temporaries(folder)
                if partial:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return folder / partial[0][1:].rsplit(".", 2)[0]
                os.killpg(proc.pid, signal.SIGCONT)
        raise AssertionError("the run ended before any shard was caught mid-write")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_killed_run_resumes_to_the_same_bytes(study, tmp_path):
    """Determinism and atomicity: a second run of the same config (its untrained model only),
    killed while writing a shard and resumed, produces every image, activation, threshold,
    count and table of that model byte for byte as the first."""
    config = write_config(tmp_path / "config.yaml", shard_size=8)
    config["models"] = {"rand18": config["models"]["rand18"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    runs = tmp_path / "results" / "tiny" / "rand18"
    watch = [runs / attack / kind for attack in ("clean", "fgsm_2", "noise_2") for kind in ("images",)]
    watch += [
        runs / attack / "activations" / layer
        for attack in ("clean", "fgsm_2", "noise_2")
        for layer in ("layer3", "layer4")
    ]
    target = kill_while_a_shard_is_written(tmp_path, watch)
    assert not target.exists(), f"{target} exists although its writer was killed mid-write"
    for path in (tmp_path / "results").rglob("*.h5"):  # every file under a final name is whole
        with h5py.File(path, "r") as f:
            assert "kind" in f.attrs, path
    snakemake(tmp_path, "--unlock")
    snakemake(tmp_path, "--rerun-incomplete")
    assert not list((tmp_path / "results").rglob(f".{target.name}.*.tmp")), "leftover not cleared"
    ours, theirs = result_files(study, "tiny/rand18"), result_files(tmp_path, "tiny/rand18")
    assert sorted(theirs) == sorted(ours)
    differ = [name for name in ours if ours[name] != theirs[name]]
    assert not differ, f"files differ between two runs of one config: {differ[:10]}"
    for kind in ("images", "activations", "thresholds", "counts", "tally"):
        assert any(f"/{kind}/" in name for name in ours), kind


def test_intervals_ablation_sweeps_and_browser_in_the_tiny_study(study):
    summary = study / "results" / "summary"
    table2 = pd.read_csv(summary / "table2.csv")
    assert table2["ci_low_percent"].notna().all() and table2["ci_high_percent"].notna().all()
    assert (table2["ci_low_percent"] <= table2["ci_high_percent"]).all()
    assert table2["ci_low_percent"].between(0, 100).all() and table2["ci_high_percent"].between(0, 100).all()
    effects = pd.read_csv(summary / "attack_effects.csv")
    # rand18 (2 layers, fgsm_2 and noise_2), small18 and small18_atda (layer4, fgsm_2); 2 modes, 7 categories
    assert len(effects) == (2 * 2 + 1 + 1) * 2 * 7
    assert (effects["difference"] == effects["attack_percent"] - effects["clean_percent"]).all()
    boot = pd.read_csv(study / "results/tiny/rand18/clean/bootstrap.csv")  # one table per image set
    assert boot.groupby(["mode", "layer"]).size().to_dict() == {("self", "layer3"): 1000, ("self", "layer4"): 1000}
    assert (boot.loc[boot["layer"] == "layer4", "units"] == 512).all()
    ablation = pd.read_csv(summary / "ablation.csv")
    # deepest layers: rand18 layer4 (fgsm_2, noise_2), small18 and small18_atda layer4 (fgsm_2); 2 modes
    assert len(ablation) == 4 * 2 * (1 + 5)
    assert set(ablation["units_set"]) == {"drifted", "random"}
    assert (ablation["restored"] <= ablation["flipped"]).all()
    sweep = pd.read_csv(summary / "iou_sweep/tiny/rand18/layer4.csv")
    assert sweep.groupby(["attack", "threshold_mode"])["detectors"].apply(lambda d: d.is_monotonic_decreasing).all()
    page = (study / "results/browser/tiny/rand18/layer4/index.html").read_text()
    assert page.count("<tr>") == 1 + 512 and page.count('<img loading="lazy"') == 512


def test_models_trained_on_an_imagefolder_are_dissected_on_broden(tmp_path, tiny_imagefolder):
    config = yaml.safe_load(TINY.read_text())
    config["datasets"]["folder"] = {"source": "imagefolder", "path": str(tiny_imagefolder), "image_size": 32}
    train = {"source": "train", "dataset": "folder", "epochs": 1, "batch_size": 8}
    config["models"] = {
        "folder18": {"arch": "resnet18", "num_classes": 3, "layers": ["layer4"], "attacks": ["fgsm_2"],
                     "weights": dict(train, method="standard")},
        "folder18_atda": {"arch": "resnet18", "num_classes": 3, "layers": ["layer4"], "attacks": ["fgsm_2"],
                          "weights": dict(train, method="atda", init="folder18", eps="2/255")},
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    jobs = planned_jobs(snakemake(tmp_path, "--dry-run"))
    assert jobs["make_synthetic"] == 1 and jobs["train_model"] == 2  # the folder is read, not generated
    units = "results/tiny/folder18_atda/fgsm_2/clean/units/layer4.csv"
    snakemake(tmp_path, units)
    metrics = json.loads((tmp_path / "results/models/folder18_atda/metrics.json").read_text())
    assert metrics["method"] == "atda" and metrics["n_train"] == 24 and metrics["n_val"] == 12
    assert metrics["dataset"] == str(tiny_imagefolder) and metrics["init"].endswith("folder18/weights.pt")
    assert len(pd.read_csv(tmp_path / units)) == 512
    assert not (tmp_path / "results" / "folder").exists()  # nothing is dissected on the folder


def table_digests(workdir: Path) -> dict[str, str]:
    """sha256 of every table a run wrote (CSV and Markdown), by path; training histories are
    left out (they hold wall-clock seconds)."""
    digests = {}
    for path in sorted((workdir / "results").rglob("*")):
        name = path.relative_to(workdir).as_posix()
        if path.suffix not in (".csv", ".md") or name.startswith(("results/benchmarks/", "results/logs/")):
            continue
        if path.name != "history.csv":
            digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def test_the_tiny_study_writes_the_pinned_tables(study):
    """Every table of the tiny study, byte for byte, as pinned in tests/data/tiny_tables.sha256.

    A change that is meant to alter results re-pins them: ADVDISSECT_PIN=1 pytest -k pinned
    (then say in the commit why the numbers moved)."""
    ours = table_digests(study)
    if os.environ.get("ADVDISSECT_PIN") == "1":
        PINNED.write_text("".join(f"{digest}  {name}\n" for name, digest in ours.items()))
    pinned = dict(reversed(line.split("  ", 1)) for line in PINNED.read_text().splitlines())
    assert sorted(ours) == sorted(pinned), "the tiny study writes other tables than the pinned ones"
    differ = [name for name in pinned if ours[name] != pinned[name]]
    assert not differ, f"{len(differ)} of {len(pinned)} tables differ from the pinned bytes: {differ[:8]}"


def test_a_vision_transformer_is_dissected_from_its_token_grid(tmp_path):
    """The tiny ViT stand-in (64 px, 8 x 8 patches, 16 channels) with random weights, on a few
    images, clean and one attack: every stage reads its encoder blocks as 16 x 8 x 8 maps."""
    config = yaml.safe_load(TINY.read_text())
    config["datasets"]["tiny"].update(n_images=8, shard_size=8)
    blocks = ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    config["models"] = {
        "vit": {"arch": "vit_tiny", "num_classes": 16, "layers": blocks, "weights": {"source": "random", "seed": 0}}
    }
    config["attacks"] = {"clean": {"method": "clean"}, "fgsm_2": {"method": "fgsm", "eps": "2/255"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake(tmp_path)
    check_outputs_of_the_tiny_vit(tmp_path, blocks)


def check_outputs_of_the_tiny_vit(tmp_path: Path, blocks: list[str]) -> None:
    for attack, mode in (("clean", "self"), ("fgsm_2", "self"), ("fgsm_2", "clean")):
        for layer in blocks:
            units = pd.read_csv(tmp_path / f"results/tiny/vit/{attack}/{mode}/units/{layer}.csv")
            assert len(units) == 16  # a unit per channel of the token embedding
    table2 = pd.read_csv(tmp_path / "results/summary/table2.csv")
    assert set(table2["layer"]) == set(blocks) and (table2["units"] == 16).all()
    ceilings = pd.read_csv(tmp_path / "results/summary/ceilings.csv")
    assert set(zip(ceilings["layer"], ceilings["height"], ceilings["width"])) == {(b, 8, 8) for b in blocks}
    ablation = pd.read_csv(tmp_path / "results/summary/ablation.csv")
    assert set(ablation["layer"]) == {blocks[-1]} and (ablation["units"] == 16).all()
    assert (ablation["flipped"] > 0).all()  # the attack's gradient passes the transformer
    page = (tmp_path / f"results/browser/tiny/vit/{blocks[-1]}/index.html").read_text()
    assert page.count("<tr>") == 1 + 16
