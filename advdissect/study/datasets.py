"""What each dataset of a config is, known before any job runs: where it lives, how many images
it dissects, how they are cut into shards, and their image size and label count."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

from ..data.download import BRODEN_IMAGE_SIZE, BRODEN_IMAGES, BRODEN_LABELS
from ..errors import ConfigError
from ..specs import ShardPlan


def dataset_root(name: str, spec: Mapping) -> Path:
    """The directory of dataset `name`: generated (resources/synthetic/<name>), downloaded
    (resources/broden/<variant>) or given (`path`, also of an ImageFolder)."""
    if spec["source"] == "synthetic":
        return Path("resources/synthetic") / name
    if spec["source"] == "broden":
        return Path("resources/broden") / spec["variant"]
    return Path(spec["path"])


def dataset_size(name: str, spec: Mapping) -> int:
    """How many rows of dataset `name` are dissected (known before any job runs)."""
    if "n_images" in spec:
        return int(spec["n_images"])
    source = spec["source"]
    # n_images is required for a local directory, whatever its index.csv holds.
    available = None if source == "local" else available_images(spec)
    if available is not None:
        return available
    raise ConfigError(
        f"config: datasets.{name}.n_images: required for source {source!r} with split {spec.get('split', 'all')!r}"
    )


def available_images(spec: Mapping) -> int | None:
    """How many rows the dataset's split holds, where that is known before any job runs."""
    split = spec.get("split", "all")
    source = spec["source"]
    if source == "synthetic":
        synthetic = spec.get("synthetic", {})
        n_train, n_val = synthetic.get("n_train", 2000), synthetic.get("n_val", 500)
        return {"train": n_train, "val": n_val, "all": n_train + n_val}[split]
    if source == "broden":
        return BRODEN_IMAGES[spec["variant"]] if split == "all" else None
    index = Path(spec["path"]) / "index.csv"
    if not index.is_file():
        return None
    with open(index, newline="") as f:
        rows = list(csv.DictReader(f))
    return len(rows) if split == "all" else sum(1 for row in rows if row.get("split") == split)


def generated_spec(spec: Mapping, datasets: Mapping[str, Mapping]) -> Mapping:
    """The spec of the synthetic dataset that a local one reads, where the local path is a
    synthetic dataset's directory not generated yet (config/rehearsal.yaml's smaller sizes);
    otherwise `spec` itself."""
    if spec["source"] != "local" or (Path(spec["path"]) / "index.csv").is_file():
        return spec
    for name, other in datasets.items():
        if other["source"] == "synthetic" and dataset_root(name, other) == Path(spec["path"]):
            return other
    return spec


def dataset_facts(spec: Mapping) -> tuple[tuple[int, int], int]:
    """((height, width) of the images, number of label numbers) of a dataset."""
    source = spec["source"]
    if source == "synthetic" and spec.get("synthetic", {}).get("layout") == "broden":
        from ..data import broden_shaped

        return (broden_shaped.IMAGE_SIZE, broden_shaped.IMAGE_SIZE), broden_shaped.n_labels()
    if source == "synthetic":
        from ..data.broden import CATEGORIES
        from ..data.synthetic import vocabulary

        synthetic = spec.get("synthetic", {})
        size = int(synthetic.get("image_size", 112))
        vocab = vocabulary(int(synthetic.get("n_classes", 16)))
        numbers = [n for cat in CATEGORIES for n in getattr(vocab, cat).values()]
        return (size, size), max(numbers) + 1
    if source == "broden":
        size = BRODEN_IMAGE_SIZE[spec["variant"]]
        return (size, size), BRODEN_LABELS
    root = Path(spec["path"])
    with open(root / "index.csv", newline="") as f:
        first = next(csv.DictReader(f))
    with open(root / "label.csv", newline="") as f:
        n_labels = max(int(row["number"]) for row in csv.DictReader(f)) + 1
    return (int(first["ih"]), int(first["iw"])), n_labels


def shard_plan(name: str, spec: Mapping) -> ShardPlan:
    """How `datasets.<name>` is cut into shards."""
    return ShardPlan(split=spec["split"], n_images=dataset_size(name, spec), shard_size=spec["shard_size"])


def dissectable(spec: Mapping) -> bool:
    """Broden-format datasets can be dissected; ImageFolder ones only train models."""
    return spec["source"] != "imagefolder"
