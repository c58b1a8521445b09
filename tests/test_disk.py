"""The disk estimate: the files it counts are the jobs the workflow plans; the command line."""

import subprocess
import sys
from pathlib import Path

import pytest

from advdissect.study import config as adconfig
from advdissect.study import disk

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny_config.yaml"


def planned_jobs(config_path: Path, workdir: Path) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir)]
        + ["--configfile", str(config_path), "--dry-run", "--cores", "1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts = {}
    table = out.split("Job stats:")[1].split("\n\n")[0]
    for line in table.splitlines()[3:]:
        name, number = line.split()
        counts[name] = int(number)
    return counts


@pytest.mark.slow  # Snakemake plans the tiny study's DAG
def test_files_counted_are_the_jobs_planned(tmp_path):
    estimated = disk.by_kind(disk.estimate(adconfig.load_config([TINY])))
    jobs = planned_jobs(TINY, tmp_path)
    assert estimated.loc["segmentations", "files"] == jobs["segmentations"]
    assert estimated.loc["images", "files"] == jobs["attack_shard"]
    assert estimated.loc["activations", "files"] == jobs["activations"]
    assert estimated.loc["thresholds", "files"] == jobs["thresholds"]
    assert estimated.loc["counts", "files"] == jobs["count_shard"]
    assert estimated.loc["iou", "files"] == jobs["merge_counts"]


def test_sizes_follow_the_arrays():
    config = adconfig.load_config([TINY])
    frame = disk.estimate(config).set_index(["kind", "model"])
    # rand18: 3 attacks x 2 shards of 12 images of 3 x 64 x 64 bytes and 56 bytes of per-image values
    images = frame.loc[("images", "rand18"), "bytes"]
    assert images == 6 * disk._file(12 * (3 * 64 * 64 + 56), 10, 12, 9)
    # layer3 (256 x 4 x 4) and layer4 (512 x 2 x 2) float32 activations, as float16 half the array bytes
    config["dissection"]["activation_dtype"] = "float16"
    half = disk.estimate(config).set_index(["kind", "model"]).loc[("activations", "rand18"), "bytes"]
    full = frame.loc[("activations", "rand18"), "bytes"]
    # 3 attacks x 2 shards, each file holding rows and both layers
    overhead = 6 * disk._file(12 * 8, 3, 24, 1)
    assert full - overhead == 3 * 2 * 12 * (256 * 16 + 512 * 4) * 4
    assert half - overhead == (full - overhead) // 2


def test_rehearsal_sizes_before_its_set_is_generated(tmp_path, monkeypatch):
    """config/rehearsal.yaml's smaller sizes read the generated set's directory, which does not
    exist before the run: their facts come from the generator's spec, at 224 px."""
    monkeypatch.chdir(tmp_path)
    config = adconfig.load_config([ROOT / "config" / "rehearsal.yaml"])
    frame = disk.estimate(config).set_index(["kind", "dataset"])["bytes"]
    cells = 256 * 14 * 14 + 512 * 7 * 7  # resnet18_shapes' layer3 and layer4 at 224 px
    for name, n in (("rehearsal4k", 4000), ("rehearsal8k", 8000), ("rehearsal", 16000)):
        assert frame[("activations", name)] == pytest.approx(2 * n * cells * 4, rel=1e-3)
        assert frame[("images", name)] == pytest.approx(2 * n * 3 * 224 * 224, rel=1e-3)
        per_image = frame[("segmentations", name)] / n
        assert per_image == pytest.approx(disk.BRODEN_LAYERS_PER_IMAGE * 112 * 112 * 2, rel=0.01)


def test_command_prints_every_kind_and_the_total(capsys):
    # in this process (test_command_reports_a_bad_config runs `python -m advdissect.study.disk` itself)
    assert disk.main(["--configfile", str(TINY)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["kind", "files", "bytes", "size"]
    assert [line.split()[0] for line in lines[1:]] == [*disk.KINDS, "total"]


def test_a_training_only_dataset_is_not_read(tmp_path):
    """The ImageNet fine-tuning config: its ImageFolder is not there, and nothing asks for it."""
    config = adconfig.load_config([ROOT / "config" / "imagenet_finetune.yaml"])
    assert not Path(config["datasets"]["imagenet"]["path"]).exists()
    frame = disk.estimate(config)
    assert set(frame["dataset"]) == {"broden224"}
    assert set(frame[frame["kind"] != "segmentations"]["model"]) == set(config["models"])
    assert set(frame[frame["kind"] == "segmentations"]["model"]) == {""}  # a dataset's, not a model's


def test_command_reports_a_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("shard_size: 12", "shard_size: 0"))
    proc = subprocess.run(
        [sys.executable, "-m", "advdissect.study.disk", "--configfile", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: config: datasets.tiny.shard_size")


@pytest.mark.parametrize("n,text", [(999, "999 B"), (1500, "1.5 KB"), (2.5e9, "2.5 GB")])
def test_human_sizes(n, text):
    assert disk.human(n) == text
