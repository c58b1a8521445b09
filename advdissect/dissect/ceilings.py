"""Ideal units: the best IoU any unit of a layer could reach for each concept of a dataset.

An ideal unit for concept c fires exactly where c is: its activation map on an image is the
share of each feature-map cell that c covers (area average of the concept's mask at the
layer's resolution; an image-level concept covers every cell of its images). It is then
scored by the real pipeline: exact threshold at the top quantile q, bilinear upsampling to
the segmentation size, IoU counts with the chosen denominator. Its IoU is the ceiling that
the data and the layer's resolution put on a detector of c: it falls when c covers much
more than q of all pixels (IoU <= q / c), or when c is too small or thin for the cells.

Equal map values would tie at the threshold (every image of a scene is all ones), so each
map is scaled by 1 + 1e-3 * (a bump centred on the map): the threshold then keeps the
central cells of the most covered images, as a real unit's peaked response does.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .. import store
from ..data.broden import CATEGORIES, BrodenDataset
from ..data.segmentations import ShardSegmentations
from ..errors import ArtifactError, ConfigError
from .counts import DEFAULT_DENOMINATOR, LabelTable, count_shard, iou, merge_counts
from .thresholds import DEFAULT_QUANTILE, merge_top, threshold_from_top, top_count, top_values

TIE_BREAK = 1e-3

log = logging.getLogger(__name__)


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix averaging n_in cells into n_out equal intervals by overlap length."""
    edges_out = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    lo = np.maximum(edges_out[:-1, None], np.arange(n_in)[None, :])
    hi = np.minimum(edges_out[1:, None], np.arange(1, n_in + 1)[None, :])
    return np.clip(hi - lo, 0.0, None) / (n_in / n_out)


def _bump(size: tuple[int, int]) -> np.ndarray:
    h, w = size
    y = (np.arange(h) - (h - 1) / 2) / max(h, 1)
    x = (np.arange(w) - (w - 1) / 2) / max(w, 1)
    return 1.0 + TIE_BREAK * (1.0 - (y[:, None] ** 2 + x[None, :] ** 2))


def ideal_maps(
    segmentations: Sequence, concepts: np.ndarray, seg_size: tuple[int, int], map_size: tuple[int, int]
) -> np.ndarray:
    """(N, C, h, w) float32 activations of one ideal unit per concept number in `concepts`."""
    wh, ww = area_weights(seg_size[0], map_size[0]), area_weights(seg_size[1], map_size[1])
    bump = _bump(map_size)
    column = {int(c): j for j, c in enumerate(concepts)}
    out = np.zeros((len(segmentations), len(concepts), *map_size), np.float32)
    for i, seg in enumerate(segmentations):
        for number in np.unique(seg.pixel):
            j = column.get(int(number))
            if j is not None:
                mask = (seg.pixel == number).any(axis=0).astype(np.float64)
                out[i, j] = wh @ mask @ ww.T * bump
        for number in seg.image_labels:
            j = column.get(int(number))
            if j is not None:
                out[i, j] = bump
    return out


# Images whose ideal maps are held at once: the maps of every concept of 250 images at 14 x 14
# are about 0.25 GB at Broden's concepts; a pass holds about four times its maps, and the kept
# top values grow with the set.
CHUNK_IMAGES = 250

Chunks = Sequence[Callable[[], Sequence[Any]]]


def row_chunks(dataset: Any, rows: Sequence[int], size: int = CHUNK_IMAGES) -> Chunks:
    """Loaders of the rows' segmentations, `size` rows at a time, decoded by the dataset."""
    rows = [int(r) for r in rows]
    return [
        functools.partial(lambda part: [dataset.load_segmentation(r) for r in part], rows[i : i + size])
        for i in range(0, len(rows), size)
    ]


def ideal_unit_iou(
    dataset: Any,
    rows: Sequence[int],
    map_size: tuple[int, int],
    quantile: float = DEFAULT_QUANTILE,
    denominator: str = DEFAULT_DENOMINATOR,
    chunks: Chunks | None = None,
) -> pd.DataFrame:
    """One row per concept present in `rows`: label, name, category, iou of its ideal unit.

    Streams: the segmentations come one chunk at a time (`chunks`: loaders, each returning the
    next rows' segmentations in order; default `row_chunks(dataset, rows)`), in three passes
    (the concepts present, the exact top values for the thresholds, the IoU counts), so memory
    holds one chunk's ideal maps and the top values, never the whole dataset's maps.
    `dataset` gives label_category, n_labels, seg_size and label_names.
    """
    chunks = row_chunks(dataset, rows) if chunks is None else chunks
    n_labels, category = dataset.n_labels, np.asarray(dataset.label_category)
    present: set[int] = set()
    n_images = 0
    for load in chunks:
        segs = load()
        n_images += len(segs)
        for seg in segs:
            present.update(int(v) for v in np.unique(seg.pixel))
            present.update(int(v) for v in seg.image_labels)
    if n_images != len(rows):
        raise ArtifactError(f"ideal units: the segmentations hold {n_images} images, the rows {len(rows)}")
    known = np.array(sorted(present), np.int64)
    concepts = known[(known > 0) & (category[np.minimum(known, n_labels - 1)] >= 0)]
    n_total = n_images * map_size[0] * map_size[1]
    k = top_count(n_total, quantile)
    top = None
    for load in chunks:
        chunk_top = top_values(ideal_maps(load(), concepts, dataset.seg_size, map_size), k)
        top = chunk_top if top is None else merge_top(top, chunk_top, k)
    thresholds = threshold_from_top(top, n_total, quantile)
    parts = []
    for load in chunks:
        segs = load()
        maps = ideal_maps(segs, concepts, dataset.seg_size, map_size)
        parts.append(count_shard(maps, thresholds, segs, LabelTable(category, n_labels, dataset.seg_size)))
    scores = iou(merge_counts(parts), denominator)[np.arange(len(concepts)), concepts]
    return pd.DataFrame(
        {
            "label": concepts.astype(np.int64),
            "name": [dataset.label_names[c] for c in concepts],
            "category": [CATEGORIES[category[c]] for c in concepts],
            "iou": scores,
        }
    )


# --------------------------------------------------------------------------- ceilings.csv

CEILINGS_COLUMNS = ["dataset", "model", "layer", "height", "width", "label", "name", "category", "iou"]


def map_size(arch: str, num_classes: int, layer: str, image_size: int | Sequence[int]) -> tuple[int, int]:
    """(h, w) of `layer`'s feature map for an input of `image_size`.

    The network is built on the meta device: the shapes do not depend on the weights, so no
    weights file, memory or init cost is needed.
    """
    # torch only for this shape probe; the ideal units themselves are numpy.
    import torch

    from ..nets.architectures import NormalizedModel, build_network
    from ..nets.layers import feature_shapes

    with torch.device("meta"):
        model = NormalizedModel(build_network(arch, num_classes), arch, "none")
    model.eval()
    shape = feature_shapes(model, [layer], image_size)[layer]
    if len(shape) != 3:
        raise ConfigError(f"{arch} layer {layer!r} gives a {len(shape)}-d output {shape}, not (C, h, w)")
    return int(shape[1]), int(shape[2])


def ceilings_table(
    datasets: Mapping[str, Mapping[str, Any]],
    layers: Sequence[Mapping[str, Any]],
    quantile: float = DEFAULT_QUANTILE,
    denominator: str = DEFAULT_DENOMINATOR,
) -> pd.DataFrame:
    """Ideal-unit IoU of every concept at every dissected layer's map size.

    `datasets`: name -> {root, split, n_images, segmentations (optional)}; the dissected rows
    are `rows(split)[:n_images]`, read from their segmentations files (one per shard, in shard
    order) when given, else decoded from the dataset. `layers`: [{dataset, model, layer, arch, num_classes}].
    Each distinct (dataset, h, w) is scored once; iou is rounded to 6 decimals so the
    file is byte-stable.
    """
    loaded: dict[str, tuple[BrodenDataset, np.ndarray, Chunks | None]] = {}
    sizes: dict[tuple, tuple[int, int]] = {}
    scores: dict[tuple[str, int, int], pd.DataFrame] = {}
    frames = []
    for item in layers:
        name = item["dataset"]
        if name not in datasets:
            raise ConfigError(f"layer {dict(item)} names dataset {name!r}, which is not in {sorted(datasets)}")
        if name not in loaded:
            spec = datasets[name]
            ds = BrodenDataset(spec["root"])
            rows = ds.rows(spec.get("split", "all"))
            if spec.get("n_images") is not None:
                rows = rows[: int(spec["n_images"])]
            chunks = None
            if spec.get("segmentations"):
                chunks = [
                    load
                    for shard, path in enumerate(spec["segmentations"])
                    for load in shard_chunks(path, {"dataset": name, "shard": shard})
                ]
            loaded[name] = (ds, rows, chunks)
        ds, rows, chunks = loaded[name]
        size_key = (item["arch"], int(item["num_classes"]), item["layer"], tuple(ds.image_size))
        if size_key not in sizes:
            sizes[size_key] = map_size(item["arch"], int(item["num_classes"]), item["layer"], ds.image_size)
        h, w = sizes[size_key]
        if (name, h, w) not in scores:
            log.info("ideal units: dataset %s, %d images, map %dx%d", name, len(rows), h, w)
            scores[(name, h, w)] = ideal_unit_iou(ds, rows, (h, w), quantile, denominator, chunks=chunks)
        frame = scores[(name, h, w)].copy()
        frame.insert(0, "dataset", name)
        frame.insert(1, "model", item["model"])
        frame.insert(2, "layer", item["layer"])
        frame.insert(3, "height", h)
        frame.insert(4, "width", w)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=CEILINGS_COLUMNS)
    out = pd.concat(frames, ignore_index=True)[CEILINGS_COLUMNS]
    out["iou"] = out["iou"].astype(float).round(6)
    return out


def shard_chunks(path: str | os.PathLike, expect: Mapping[str, Any], size: int = CHUNK_IMAGES) -> Chunks:
    """Loaders of a segmentations file's rows, `size` rows at a time: a 4,000-image shard's
    ideal maps at once would be about 4 GB at Broden's concepts, and their top values and
    counts take twice that again."""
    n = len(_open_shard(str(path), tuple(sorted(expect.items()))).rows)
    return [functools.partial(_shard_rows, str(path), expect, i, min(i + size, n)) for i in range(0, n, size)]


def _shard_rows(path: str, expect: Mapping[str, Any], start: int, stop: int) -> list:
    shard = _open_shard(path, tuple(sorted(expect.items())))
    return [shard.load_segmentation(int(r)) for r in shard.rows[start:stop]]


@functools.lru_cache(maxsize=1)  # the passes read the shards in order: one open file at a time
def _open_shard(path: str, expect: tuple) -> ShardSegmentations:
    return ShardSegmentations(path, dict(expect))


def write_ceilings(
    out: str | os.PathLike,
    datasets: Mapping[str, Mapping[str, Any]],
    layers: Sequence[Mapping[str, Any]],
    quantile: float = DEFAULT_QUANTILE,
    denominator: str = DEFAULT_DENOMINATOR,
) -> pd.DataFrame:
    """Write `ceilings_table(...)` as CSV (atomically) and return it."""
    frame = ceilings_table(datasets, layers, quantile, denominator)
    store.write_csv(out, frame)
    log.info("ceilings: %d rows for %d layers", len(frame), len(layers))
    return frame


def merge_ceilings(
    out: str | os.PathLike, paths: Sequence[str | os.PathLike], layers: Sequence[Mapping[str, Any]]
) -> pd.DataFrame:
    """Write the ceilings of several files (one per dataset) as one CSV, each (dataset, model,
    layer) of `layers` in that order, as `write_ceilings` over all datasets at once writes it."""
    frames = [read_ceilings(p) for p in paths]
    merged = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CEILINGS_COLUMNS)
    by_layer = {key: part for key, part in merged.groupby(["dataset", "model", "layer"], sort=False)}
    missing = [
        (i["dataset"], i["model"], i["layer"]) for i in layers if (i["dataset"], i["model"], i["layer"]) not in by_layer
    ]
    if missing:
        raise ArtifactError(f"ceilings files {[str(p) for p in paths]} lack the layer(s) {missing}")
    ordered = [by_layer[(i["dataset"], i["model"], i["layer"])] for i in layers]
    frame = pd.concat(ordered, ignore_index=True)[CEILINGS_COLUMNS] if ordered else merged
    store.write_csv(out, frame)
    log.info("ceilings: %d rows for %d layers from %d files", len(frame), len(layers), len(paths))
    return frame


def read_ceilings(path: str | os.PathLike) -> pd.DataFrame:
    """Read ceilings.csv with names kept as text (a concept may be called 'NA')."""
    text = {c: str for c in ("dataset", "model", "layer", "name", "category")}
    try:
        frame = pd.read_csv(
            path,
            dtype=text,
            keep_default_na=False,
            na_values={c: ["", "nan", "NaN"] for c in ("height", "width", "label", "iou")},
        )
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ArtifactError(f"{path}: cannot be read as ceilings CSV ({exc})") from None
    missing = [c for c in CEILINGS_COLUMNS if c not in frame.columns]
    if missing:
        raise ArtifactError(f"{path}: ceilings CSV lacks column(s) {missing}; expected {CEILINGS_COLUMNS}")
    return frame
