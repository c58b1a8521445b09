"""The disk a config's run keeps, per artifact kind, known before any job runs.

    python -m advdissect.study.disk [--configfile config/paper.yaml ...]

Sizes follow from the image counts and sizes, the dissected layers' shapes (one dummy forward
pass of each architecture, random weights) and the datasets' label counts. The HDF5 files are
uncompressed, so a file is its arrays' bytes plus a small header; tables, figures and model
weights are small next to them and are not counted.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from ..data.broden import CATEGORIES, PIXEL_CATEGORIES
from ..dissect.counts import IMAGE_RECORDS
from ..errors import AdvDissectError
from .config import load_config
from .datasets import dataset_facts, dataset_root, dataset_size, generated_spec
from .plan import Plan, glob_pattern

# Per-image arrays of an images shard besides the pixels: rows, labels, clean_pred, adv_pred,
# target (int64) and clean_conf, adv_conf, linf, l2 (float32).
IMAGE_EXTRAS = 5 * 8 + 4 * 4
DTYPE_BYTES = {"float32": 4, "float16": 2}
# HDF5 bookkeeping, measured on h5py's files: a file header with the identity attributes, one
# object header per array, and the chunk index of the array chunked one image per chunk.
FILE_OVERHEAD = 5632
ARRAY_OVERHEAD = 448
CHUNK_INDEX = 4096
CHUNK_OVERHEAD = 32
# Every array is chunked (Fletcher-32 needs chunks); one in h5py's own chunks adds its index.
OTHER_CHUNKED = 2100
KINDS = ("segmentations", "images", "activations", "thresholds", "counts", "records", "iou")
# The per-image records that the count jobs write for the bootstrap (inside the counts files,
# counted apart: their size depends on the data, not only on the shapes). Per (image, unit) of
# a dissection: RECORDED_PAIRS records of a unit's mask size (3 int32 and a byte each) and,
# per such mask, LABELS_PER_MASK records of its intersection with a label (4 int32 each); per
# image, LABELS_PER_IMAGE label-area records (3 int32) and one byte of annotated categories.
# The rates are the largest of the demo's models (a random AlexNet's conv2: 0.29 masks per
# (image, unit), 3.4 labels per mask; trained layers 0.03-0.13), so for those models the
# estimate is an upper bound; Broden's richer images may hold more labels per mask.
RECORDED_PAIRS = 0.3
LABELS_PER_MASK = 3.5
LABELS_PER_IMAGE = 10
RECORD_ARRAYS = sum(len(columns) for columns in IMAGE_RECORDS.values())  # per dissection
# Pixel-level layers (color, object, part layers, material) per image where no index.csv can be
# read yet: the mean of the 22,210 ADE20K rows of the real broden1_224 index (its richest
# source), and about what the synthetic generator draws.
BRODEN_LAYERS_PER_IMAGE = 2.72
SYNTHETIC_LAYERS_PER_IMAGE = 4.0


def pixel_layers(name: str, spec: Mapping, n_images: int, generated: Mapping | None = None) -> float:
    """Pixel-level layers of the first n_images rows of the dissected split: counted in the
    dataset's index.csv when it exists, else estimated per image (from `generated`, the spec
    of the synthetic dataset that will write it, where given)."""
    index = dataset_root(name, spec) / "index.csv"
    if not index.is_file():
        spec = generated or spec
        broden_like = spec["source"] == "broden" or spec.get("synthetic", {}).get("layout") == "broden"
        return (BRODEN_LAYERS_PER_IMAGE if broden_like else SYNTHETIC_LAYERS_PER_IMAGE) * n_images
    frame = pd.read_csv(index, dtype=str, keep_default_na=False)
    if spec["split"] != "all":
        frame = frame[frame["split"] == spec["split"]]
    cells = frame.head(n_images)[list(PIXEL_CATEGORIES)]
    return float(sum(cells[c].map(lambda s: sum(1 for x in s.split(";") if x.strip())).sum() for c in PIXEL_CATEGORIES))


def layer_shapes(model_spec: Mapping, image_size: tuple[int, int]) -> dict[str, tuple[int, int, int]]:
    """{layer: (units, h, w)} of a model's dissected layers at an image size."""
    from ..nets.layers import feature_shapes
    from ..nets.models import load_model

    model = load_model(model_spec["arch"], model_spec["num_classes"], weights_file=None)
    return feature_shapes(model.eval(), model_spec["layers"], image_size)


def _file(array_bytes: int, n_arrays: int, chunked_rows: int = 0, other_chunked: int = 0) -> int:
    """Bytes of a file of `n_arrays` arrays: one chunked one row per chunk into `chunked_rows`
    chunks (if any) and `other_chunked` in h5py's own chunks (1-D arrays, the count tables)."""
    index = CHUNK_INDEX + chunked_rows * CHUNK_OVERHEAD if chunked_rows else 0
    return FILE_OVERHEAD + n_arrays * ARRAY_OVERHEAD + index + other_chunked * OTHER_CHUNKED + array_bytes


def _shard_sizes(n_images: int, shard_size: int) -> list[int]:
    n = math.ceil(n_images / shard_size)
    return [min(shard_size, n_images - i * shard_size) for i in range(n)]


def estimate(config: Mapping) -> pd.DataFrame:
    """One row per artifact file group: kind, dataset, model, files, bytes."""
    plan = Plan(config)
    chains = plan.chains()
    # Only the dissected datasets: a training-only one (an ImageFolder) has no Broden files.
    datasets = config["datasets"]
    facts = {
        name: dataset_facts(generated_spec(datasets[name], datasets)) for name in dict.fromkeys(d for d, _, _ in chains)
    }
    rows = [_segmentations_row(name, datasets, facts[name]) for name in facts]
    shapes: dict[tuple[str, str], dict[str, tuple[int, int, int]]] = {}
    for dataset, model, attack in chains:
        if (dataset, model) not in shapes:
            shapes[dataset, model] = layer_shapes(config["models"][model], facts[dataset][0])
        layers = list(shapes[dataset, model].values())
        rows += _image_set_rows(config, (dataset, model), facts[dataset], layers, plan.attack_modes(attack))
    frame = pd.DataFrame(rows, columns=["kind", "dataset", "model", "files", "bytes"])
    return frame.groupby(["kind", "dataset", "model"], sort=False, as_index=False).sum()


def _row(kind: str, dataset: str, model: str, files: int, size: int) -> dict:
    return {"kind": kind, "dataset": dataset, "model": model, "files": files, "bytes": size}


def _segmentations_row(dataset: str, datasets: Mapping, facts: tuple[tuple[int, int], int]) -> dict:
    """A dataset's segmentation shards."""
    spec = datasets[dataset]
    (ih, iw), n_labels = facts
    sh, sw = ih // 2, iw // 2  # Broden's segmentations: half the image size (112 for 224, 113 for 227)
    n_images = dataset_size(dataset, spec)
    shards = _shard_sizes(n_images, spec["shard_size"])
    layers = pixel_layers(dataset, spec, n_images, generated_spec(spec, datasets)) / n_images  # per image
    # rows, both offsets, image labels (about one) and layer categories: 8 bytes each
    per_image = 8 * 4 + 8 * layers + layers * sh * sw * 2
    size = sum(_file(round(n * per_image), 7, round(n * layers), 6) for n in shards)
    return _row("segmentations", dataset, "", len(shards), size + len(shards) * 8 * n_labels)


def _image_set_rows(
    config: Mapping,
    dataset_model: tuple[str, str],
    facts: tuple[tuple[int, int], int],
    layers: list[tuple[int, int, int]],
    modes: list[str],
) -> list[dict]:
    """One image set's images, activations, counts, thresholds, IoU tables and per-image records;
    `layers` the (units, h, w) of its model's dissected layers."""
    dataset, model = dataset_model
    spec = config["datasets"][dataset]
    (ih, iw), n_labels = facts
    shards = _shard_sizes(dataset_size(dataset, spec), spec["shard_size"])
    images = sum(_file(n * (3 * ih * iw + IMAGE_EXTRAS), 10, n, 9) for n in shards)
    rows = [_row("images", dataset, model, len(shards), images)]
    # One activations file per shard holds every layer (rows plus one chunked array a layer).
    per_image = 8 + sum(c * h * w * DTYPE_BYTES[config["dissection"]["activation_dtype"]] for c, h, w in layers)
    activations = sum(_file(n * per_image, 1 + len(layers), n * len(layers), 1) for n in shards)
    rows.append(_row("activations", dataset, model, len(shards), activations))
    # One counts file per shard holds every layer and threshold mode (6 arrays each).
    counts = {c: 8 * (c * n_labels + 2 * n_labels + c * (2 * len(CATEGORIES) + 1)) for c, _, _ in layers}
    per_shard = len(modes) * sum(counts[c] for c, _, _ in layers)
    groups = len(modes) * len(layers)
    rows.append(_row("counts", dataset, model, len(shards), len(shards) * _file(per_shard, 6 * groups, 0, 6 * groups)))
    for c, _, _ in layers:
        rows.append(_row("thresholds", dataset, model, 1, _file(8 * c, 1, 0, 1)))
        iou = counts[c] + 8 * c * n_labels + 16 * n_labels + 8 * len(CATEGORIES)  # + iou, label and category names
        rows.append(_row("iou", dataset, model, len(modes), len(modes) * _file(iou, 9, 0, 9)))
    if config["dissection"]["bootstrap"]["resamples"] > 0:
        units = sum(c for c, _, _ in layers)
        per_pair = RECORDED_PAIRS * (13 + LABELS_PER_MASK * 16)
        per_image = LABELS_PER_IMAGE * 12 + 1
        n = sum(shards)
        size = round(len(modes) * (n * units * per_pair + len(layers) * n * per_image))
        overhead = len(shards) * groups * RECORD_ARRAYS * (ARRAY_OVERHEAD + OTHER_CHUNKED)
        rows.append(_row("records", dataset, model, 0, size + overhead))
    return rows


# Where each kind lives under a workdir, as the plan lays it out.
PATTERNS = {
    kind: glob_pattern(kind) for kind in ("segmentations", "images", "activations", "thresholds", "counts", "iou")
}


def measured(workdir: str | Path) -> pd.DataFrame:
    """files and bytes per artifact kind that a run's workdir holds now (same shape as by_kind);
    the counts files' per-image records are counted as kind "records" (0 files of their own)."""
    rows = []
    for kind, pattern in PATTERNS.items():
        paths = list(Path(workdir).glob(pattern))
        rows.append({"kind": kind, "files": len(paths), "bytes": sum(p.stat().st_size for p in paths)})
    records = sum(_record_bytes(p) for p in Path(workdir).glob(PATTERNS["counts"]))
    rows[KINDS.index("counts")]["bytes"] -= records
    rows.insert(KINDS.index("records"), {"kind": "records", "files": 0, "bytes": records})
    table = pd.DataFrame(rows).set_index("kind")
    table.loc["total"] = table.sum()
    return table


def _record_bytes(path: Path) -> int:
    """Bytes stored for the per-image record arrays of a counts file."""
    import h5py

    sizes = []

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset) and "/per_image/" in f"/{name}/":
            sizes.append(obj.id.get_storage_size() + ARRAY_OVERHEAD + OTHER_CHUNKED)  # + its chunk index, groups

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return sum(sizes)


def by_kind(frame: pd.DataFrame) -> pd.DataFrame:
    """files and bytes per artifact kind, in chain order, with a total row."""
    table = frame.groupby("kind", sort=False)[["files", "bytes"]].sum().reindex(list(KINDS)).fillna(0).astype("int64")
    table.loc["total"] = table.sum()
    return table


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the disk a config's run keeps, per artifact kind.")
    parser.add_argument(
        "--configfile",
        nargs="+",
        default=["config/config.yaml"],
        help="config files, merged in order (default: config/config.yaml in the working directory, as the workflow)",
    )
    parser.add_argument("--by-model", action="store_true", help="one row per kind, dataset and model")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.configfile)
        frame = estimate(config)
    except (AdvDissectError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    table = frame if args.by_model else by_kind(frame).reset_index()
    table = table.assign(size=table["bytes"].map(human))
    print(table.to_string(index=False))
    temporary = config.get("storage", {}).get("temporary", [])
    if temporary:
        kept = frame[~frame["kind"].isin(temporary)]["bytes"].sum()
        print(f"\nkept after the run (storage.temporary: {', '.join(temporary)}): {human(kept)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
