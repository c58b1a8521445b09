"""IoU counts of Network Dissection: one shard's counts, their merge and the IoU they give.

For an image x and unit u, the mask M_u is the unit's feature map upsampled to the segmentation
size and compared with its threshold (advdissect.dissect.masks).

Labels of an image: every pixel-level layer (color, object, each part layer, material) and the
image-level labels (scene, texture), which cover every pixel. L_l is the set of pixels that
carry label l in any layer: a label repeated on the same pixel in two layers counts once (set
semantics; NetDissect-Lite concatenates the layers and would count it twice). Label 0 is never
a concept (this includes scene 0). A label's category is its primary category
(`label_category[l]`) whichever layer it sits in; labels with category -1 are counted but get
IoU 0.

Counts (each a sum over images; merging shards is a plain sum):
    intersection[u, l]        |M_u ∩ L_l|
    label_area[l]             |L_l|
    activation_original[u, c] |M_u| where category c is annotated in the image (Bau et al. 2017)
    activation_lite[u, c]     |M_u| where a label of category c lies inside M_u (NetDissect-Lite)
    activation_total[u]       |M_u|
IoU[u, l] = intersection / (activation[u, cat(l)] + label_area[l] - intersection), 0 where
the denominator is 0 (NetDissect-Lite adds 1e-10 instead).

With `per_image=True` count_shard also returns the same counts image by image, as sparse
records (IMAGE_RECORDS), so that a resample of the images (advdissect.dissect.bootstrap) gets its
exact counts as weighted sums: intersection (image, unit, label, count), label area (image,
label, area), mask size (image, unit, size, the Lite category bits inside the mask) and each
image's annotated categories (bits).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..data.broden import CATEGORIES
from ..errors import ArtifactError, ConfigError, DatasetError
from ..specs import schema_defaults
from ..store import COUNT_KEYS
from .masks import UpsamplePlan, active_bands

N_CAT = len(CATEGORIES)
DENOMINATORS = ("lite", "original")
# `dissection.denominator` when none is given: the schema's default.
DEFAULT_DENOMINATOR: str = schema_defaults("dissection")["denominator"]
# Per-image records (advdissect.dissect.bootstrap): name -> columns, every column one 1-D array.
IMAGE_RECORDS = {
    "intersection": ("image", "unit", "label", "count"),
    "label_area": ("image", "label", "area"),
    "activation": ("image", "unit", "size", "inside"),
    "image_categories": ("image", "bits"),
}


def record_dtype(column: str) -> type:
    """Stored per-image record columns: category bits in a byte, the rest int32 (an image's
    pixel counts, unit and label numbers and a shard's image positions all fit)."""
    return np.uint8 if column in ("inside", "bits") else np.int32


def record_key(name: str, column: str) -> str:
    """Where column `column` of record `name` (IMAGE_RECORDS) sits in counts and their files."""
    return f"per_image/{name}/{column}"


def record_keys() -> list[str]:
    """The per-image record arrays of a dissection, as "per_image/<record>/<column>"."""
    return [record_key(name, col) for name, cols in IMAGE_RECORDS.items() for col in cols]


# ---------------------------------------------------------------- segmentations


def _unpack_segmentation(seg: Any) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(seg, "pixel"):
        return np.asarray(seg.pixel), np.asarray(seg.image_labels)
    pixel, image_labels = seg
    return np.asarray(pixel), np.asarray(image_labels)


def _renumber(keys: np.ndarray) -> np.ndarray:
    """Dense ids 0..k-1 of the distinct values of `keys` (hash based)."""
    return pd.factorize(keys)[0].astype(np.int64)


@dataclass(frozen=True, eq=False)
class LabelTable:
    """A dataset's labels as counting sees them: each label's category (index into CATEGORIES,
    -1 for none), the number of label numbers, and the segmentation size (sh, sw)."""

    category: np.ndarray
    n_labels: int
    seg_size: tuple[int, int]

    @classmethod
    def of(cls, dataset: Any) -> LabelTable:
        """The label table of anything with label_category, n_labels and seg_size (a dataset)."""
        return cls(dataset.label_category, dataset.n_labels, dataset.seg_size)


def _stack_labels(
    segs: Sequence[tuple[np.ndarray, np.ndarray]], labels: LabelTable, first_image: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The chunk's pixel labels as one (n, n_layers, sh·sw) array (missing layers 0) and each
    image's distinct nonzero image-level labels; DatasetError names a bad image."""
    n, n_labels = len(segs), labels.n_labels
    sh, sw = labels.seg_size
    p = sh * sw
    n_layers = 0
    image_labels = []
    for i, (pixel, image) in enumerate(segs):
        if pixel.ndim != 3 or pixel.shape[1:] != (sh, sw):
            raise DatasetError(
                f"segmentation of image {first_image + i} of the shard: pixel labels of "
                f"shape {pixel.shape}, expected (n_layers, {sh}, {sw})"
            )
        image = np.asarray(image, dtype=np.int64).ravel()
        if image.size > 1:
            image = np.unique(image)
        image_labels.append(image[image != 0])
        n_layers = max(n_layers, pixel.shape[0])
    lab = np.zeros((n, n_layers, p), dtype=np.int32)
    for i, (pixel, _) in enumerate(segs):
        lab[i, : pixel.shape[0]] = pixel.reshape(pixel.shape[0], p)
    for i, image in enumerate(image_labels):
        if image.size and (image.min() < 0 or image.max() >= n_labels):
            raise DatasetError(
                f"segmentation of image {first_image + i} of the shard: image-level label "
                f"numbers must lie in 1..{n_labels - 1}, found {image.tolist()}"
            )
    if lab.size and (lab.min() < 0 or lab.max() >= n_labels):
        bad = next(i for i in range(n) if lab[i].min() < 0 or lab[i].max() >= n_labels)
        raise DatasetError(
            f"segmentation of image {first_image + bad} of the shard: pixel label numbers "
            f"must lie in 0..{n_labels - 1}, found {lab[bad].min()}..{lab[bad].max()}"
        )
    return lab, image_labels


def _runs(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Runs of pixels (in row-major order, per image) whose labels agree in every layer:
    (start in the flat (n·p,) pixels, length, image, labels (runs, n_layers))."""
    n, n_layers, p = lab.shape
    change = np.zeros((n, p), dtype=bool)
    change[:, 0] = True
    for layer in range(n_layers):
        change[:, 1:] |= lab[:, layer, 1:] != lab[:, layer, :-1]
    starts = np.flatnonzero(change)
    lengths = np.diff(np.append(starts, n * p))
    run_image = starts // p
    at = starts + run_image * ((n_layers - 1) * p)  # position in lab of layer 0
    flat = lab.reshape(-1)
    run_labels = np.zeros((len(starts), n_layers), dtype=np.int64)
    for layer in range(n_layers):
        run_labels[:, layer] = flat[at + layer * p]
    return starts, lengths, run_image, run_labels


def _combo_of_run(run_image: np.ndarray, run_labels: np.ndarray, n: int, n_labels: int) -> np.ndarray:
    """Dense id of each run's combo: its distinct (image, labels of every layer)."""
    n_layers = run_labels.shape[1]
    # one int64 key while it fits
    code = run_image
    fits = 0
    while fits < n_layers and n * float(n_labels) ** (fits + 1) < 2.0**62:
        fits += 1
    for layer in range(n_layers):
        code = code * n_labels + run_labels[:, layer]
        if layer + 1 >= fits:
            code = _renumber(code)
    return _renumber(code)


class _Combos:
    """The distinct label sets of a chunk of images, pixel by pixel.

    Each pixel belongs to one combo: the set of its pixel-level labels (any layer) plus its
    image's image-level labels. Per-label bookkeeping then runs on the small combo table.
    Masks are piecewise constant, so combos are found on runs of equal pixels along rows.
    """

    def __init__(self, segs: Sequence[tuple[np.ndarray, np.ndarray]], labels: LabelTable, first_image: int):
        n = len(segs)
        lab, image_labels = _stack_labels(segs, labels, first_image)
        starts, lengths, run_image, run_labels = _runs(lab)
        combo_of_run = _combo_of_run(run_image, run_labels, n, labels.n_labels)
        n_ids = int(combo_of_run.max()) + 1
        first = np.full(n_ids, len(starts), dtype=np.int64)
        np.minimum.at(first, combo_of_run, np.arange(len(starts)))
        self.inverse = np.repeat(combo_of_run.astype(np.int32), lengths)  # (n·p,)
        self.n_combos = n_ids
        self.image = run_image[first]
        # combos come numbered image after image: runs are in image order and factorize
        # numbers values in order of first appearance
        if np.any(np.diff(self.image) < 0):
            raise RuntimeError("label-set ids are not grouped by image")
        per_image = np.bincount(self.image, minlength=n)
        self.image_start = np.cumsum(per_image) - per_image
        self.max_per_image = int(per_image.max())
        self.area = np.bincount(combo_of_run, weights=lengths.astype(np.float64), minlength=n_ids)
        self.area = np.rint(self.area).astype(np.int64)
        self._set_label_table(run_labels[first], image_labels, labels)

    def _set_label_table(self, layer_labels: np.ndarray, image_labels: list[np.ndarray], labels: LabelTable) -> None:
        """Each combo's labels as chunk-local ids (`table`, padded with len(self.labels)) and
        the category bits of each combo and each image."""
        n = len(image_labels)
        extra = max([len(x) for x in image_labels] + [0])
        img_lab = np.zeros((n, extra), dtype=np.int64)
        for i, image in enumerate(image_labels):
            img_lab[i, : len(image)] = image
        table = np.concatenate([layer_labels, img_lab[self.image]], axis=1)
        # Set semantics: sort each row, drop repeats and 0.
        table = np.sort(table, axis=1)
        if table.shape[1] > 1:
            table[:, 1:][table[:, 1:] == table[:, :-1]] = 0
        # Chunk-local label ids; the padding id is len(labels).
        self.labels = np.unique(table[table > 0])
        local = np.full(labels.n_labels, len(self.labels), dtype=np.int64)
        local[self.labels] = np.arange(len(self.labels))
        self.table = local[table]
        cat = np.asarray(labels.category, dtype=np.int64)[self.labels]
        bit = np.where(cat >= 0, np.left_shift(1, np.maximum(cat, 0)), 0).astype(np.uint8)
        if table.shape[1]:
            self.catbits = np.bitwise_or.reduce(np.append(bit, np.uint8(0))[self.table], axis=1)
        else:
            self.catbits = np.zeros(self.n_combos, np.uint8)
        self.image_catbits = np.zeros(n, np.uint8)
        np.bitwise_or.at(self.image_catbits, self.image, self.catbits)


def _bits_to_matrix(bits: np.ndarray) -> np.ndarray:
    return ((bits[:, None] >> np.arange(N_CAT, dtype=np.uint8)) & 1).astype(np.int64)


# ---------------------------------------------------------------- counting


def empty_counts(n_units: int, n_labels: int, label_category: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "intersection": np.zeros((n_units, n_labels), np.int64),
        "label_area": np.zeros(n_labels, np.int64),
        "activation_lite": np.zeros((n_units, N_CAT), np.int64),
        "activation_original": np.zeros((n_units, N_CAT), np.int64),
        "activation_total": np.zeros(n_units, np.int64),
        "n_images": np.array(0, np.int64),
        "label_category": np.asarray(label_category, np.int64).copy(),
    }


def _as_int(x: np.ndarray) -> np.ndarray:
    return np.rint(x).astype(np.int64)


def count_shard(
    activations: Any,
    thresholds: np.ndarray,
    segmentations: Iterable[Any],
    labels: LabelTable,
    *,
    chunk: int = 16,
    progress: bool = False,
    per_image: bool = False,
) -> dict[str, np.ndarray]:
    """IoU counts of one shard (see the module doc).

    activations: (N, C, h, w) array or h5py dataset (read `chunk` images at a time);
    thresholds: (C,) float64; segmentations: N items, each (pixel int (n_layers, sh, sw),
    image_labels int) or an object with `.pixel` and `.image_labels`; labels: the dataset's
    label table (`LabelTable.of(dataset)`). Returns the count arrays, `n_images` and
    `label_category`; with `per_image`, also "per_image/<record>/<column>" arrays
    (IMAGE_RECORDS; image = position in the shard).
    """
    shape = tuple(activations.shape)
    if len(shape) != 4:
        raise ArtifactError(f"activations must be (N, C, h, w), got shape {shape}")
    n_images, n_units, h, w = shape
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (n_units,):
        raise ArtifactError(f"{thresholds.shape[0] if thresholds.ndim else 0} thresholds for {n_units} units")
    labels = _checked_labels(labels)
    plan = UpsamplePlan((h, w), labels.seg_size)
    out = empty_counts(n_units, labels.n_labels, labels.category)
    records = _ImageRecords() if per_image else None
    segs = iter(segmentations)
    starts = range(0, n_images, chunk)
    if progress:
        starts = tqdm(starts, desc="IoU counts", unit="chunk", disable=None)
    for start in starts:
        stop = min(start + chunk, n_images)
        maps = np.asarray(activations[start:stop], dtype=np.float32)
        batch = [_unpack_segmentation(s) for s in islice(segs, stop - start)]
        if len(batch) != stop - start:
            raise DatasetError(f"{n_images} activation maps but only {start + len(batch)} segmentations")
        _count_chunk(out, maps, thresholds, batch, plan, labels, start, records)
    if next(segs, None) is not None:
        raise DatasetError(f"more segmentations than the {n_images} activation maps")
    out["n_images"] = np.array(n_images, np.int64)
    if records is not None:
        out.update(records.arrays())
    return out


def _checked_labels(labels: LabelTable) -> LabelTable:
    """`labels` with int64 categories and an (int, int) segmentation size; DatasetError when the
    categories do not cover the label numbers."""
    category = np.asarray(labels.category, dtype=np.int64)
    if category.shape != (labels.n_labels,):
        raise DatasetError(f"label_category has shape {category.shape}, expected ({labels.n_labels},)")
    return LabelTable(category, labels.n_labels, (int(labels.seg_size[0]), int(labels.seg_size[1])))


class _ImageRecords:
    """Per-image count records of a shard, gathered chunk by chunk (see IMAGE_RECORDS)."""

    def __init__(self):
        self.parts = {name: [] for name in IMAGE_RECORDS}

    def add(self, name: str, *columns: np.ndarray) -> None:
        self.parts[name].append([np.asarray(c, np.int64) for c in columns])

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for name, columns in IMAGE_RECORDS.items():
            parts = self.parts[name]
            for i, column in enumerate(columns):
                values = np.concatenate([p[i] for p in parts]) if parts else np.empty(0, np.int64)
                out[record_key(name, column)] = values
        return out


def _sum_by_key(key: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys (sorted) and the sum of `values` over each."""
    uniq, inverse = np.unique(key, return_inverse=True)
    return uniq, _as_int(np.bincount(inverse.ravel(), weights=values.astype(np.float64), minlength=len(uniq)))


def _dense_bins(n_bins: int, n_keys: int) -> bool:
    """Count with bincount (n_bins bins) unless the bins would far outnumber the keys."""
    return n_bins <= max(1 << 22, 4 * n_keys)


class _Hits(NamedTuple):
    """A chunk's active pixels summed by (image, unit, combo): `count` pixels of combo `combo`
    lie inside the mask of unit `unit` of image `image` (pair = image · n_units + unit)."""

    pair: np.ndarray
    image: np.ndarray
    unit: np.ndarray
    combo: np.ndarray
    count: np.ndarray


def _count_chunk(out, maps, thresholds, segs, plan, labels, first_image, records=None):
    n, c = maps.shape[:2]
    combos = _Combos(segs, labels, first_image)
    _count_label_area(out, combos, labels.n_labels, first_image, records)
    bands = list(active_bands(maps, thresholds, plan))
    if not bands:
        return
    hits = _active_hits(bands, combos, (n, c), labels.seg_size)
    _count_activation(out, combos, hits, (n, c), first_image, records)
    if combos.table.shape[1]:
        _count_intersection(out, combos, hits, labels.n_labels, first_image, records)


def _count_label_area(out, combos: _Combos, n_labels: int, first_image: int, records) -> None:
    n = len(combos.image_catbits)
    width = combos.table.shape[1]
    nl = len(combos.labels)
    if width:
        area = np.bincount(
            combos.table.ravel(), weights=np.repeat(combos.area, width).astype(np.float64), minlength=nl + 1
        )
        out["label_area"][combos.labels] += _as_int(area[:nl])
    if records is not None:
        records.add("image_categories", first_image + np.arange(n), combos.image_catbits)
        if width:
            present = combos.table < nl
            label = combos.labels[combos.table[present]]
            img = np.broadcast_to(combos.image[:, None], combos.table.shape)[present]
            key, area = _sum_by_key(
                img * n_labels + label, np.broadcast_to(combos.area[:, None], present.shape)[present]
            )
            records.add("label_area", first_image + key // n_labels, key % n_labels, area)


def _active_hits(bands: list, combos: _Combos, shape: tuple[int, int], seg_size: tuple[int, int]) -> _Hits:
    n, c = shape
    p = seg_size[0] * seg_size[1]
    # Per active pixel: key = (pair, combo) with pairs numbered densely among those with a
    # candidate column and combos numbered within their image, so the bins stay few.
    seen = np.zeros(n * c, dtype=bool)
    for pair, _, _, _ in bands:
        seen[pair] = True
    pairs = np.flatnonzero(seen)
    dense = np.cumsum(seen) - 1
    m = combos.max_per_image
    n_bins = len(pairs) * m
    key_type = np.int32 if n_bins < 2**31 else np.int64
    keys = []
    for pair, base, offset, mask in bands:
        img = pair // c
        key = combos.inverse[(base + img * p)[None, :] + offset[:, None]].astype(key_type, copy=False)
        key += (dense[pair] * m - combos.image_start[img]).astype(key_type)
        keys.append(key.ravel()[np.flatnonzero(mask)])
    key = np.concatenate(keys)
    if _dense_bins(n_bins, key.size):
        per = np.bincount(key, minlength=n_bins)
        hit = np.flatnonzero(per)
        cnt = per[hit]
    else:  # images with very many distinct label sets: sort rather than allocate the bins
        hit, cnt = np.unique(key, return_counts=True)
    d, local = np.divmod(hit, m)
    pair_key = pairs[d]
    img, u = np.divmod(pair_key, c)
    return _Hits(pair_key, img, u, combos.image_start[img] + local, cnt)


def _count_activation(out, combos: _Combos, hits: _Hits, shape: tuple[int, int], first_image: int, records) -> None:
    n, c = shape
    msize = np.bincount(hits.pair, weights=hits.count.astype(np.float64), minlength=n * c)
    msize = _as_int(msize).reshape(n, c)
    out["activation_total"] += msize.sum(axis=0)
    out["activation_original"] += msize.T @ _bits_to_matrix(combos.image_catbits)
    inside = np.zeros(n * c, np.uint8)
    np.bitwise_or.at(inside, hits.pair, combos.catbits[hits.combo])
    out["activation_lite"] += np.einsum("nu,nuc->uc", msize, _bits_to_matrix(inside).reshape(n, c, N_CAT))
    if records is not None:
        active = np.flatnonzero(msize)
        records.add("activation", first_image + active // c, active % c, msize.ravel()[active], inside[active])


def _count_intersection(out, combos: _Combos, hits: _Hits, n_labels: int, first_image: int, records) -> None:
    c = out["intersection"].shape[0]
    labels = np.append(combos.labels, -1)[combos.table[hits.combo]]  # (hits, width), -1 = none
    valid = labels >= 0
    at = (hits.unit[:, None] * n_labels + labels)[valid]
    hit_count = np.broadcast_to(hits.count[:, None], labels.shape)[valid]
    np.add.at(out["intersection"].reshape(-1), at, hit_count)
    if records is not None:
        image_of = np.broadcast_to(hits.image[:, None], labels.shape)[valid]
        key, count = _sum_by_key(image_of * (c * n_labels) + at, hit_count)
        image, cell = np.divmod(key, c * n_labels)
        records.add("intersection", first_image + image, cell // n_labels, cell % n_labels, count)


def merge_counts(
    counts: Iterable[Mapping[str, np.ndarray]], names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Sum of shard counts (label_category must agree); consumes `counts` one at a time.

    `names` (e.g. file paths) label the parts in error messages.
    """
    out = None
    for i, part in enumerate(counts):
        name = names[i] if names is not None else f"counts {i}"
        if out is None:
            out = {key: np.array(part[key], dtype=np.int64, copy=True) for key in COUNT_KEYS + ("n_images",)}
            out["label_category"] = np.asarray(part["label_category"], np.int64).copy()
            continue
        if not np.array_equal(part["label_category"], out["label_category"]):
            raise ArtifactError(f"{name}: made with another label table than the first (label categories differ)")
        for key in COUNT_KEYS + ("n_images",):
            value = np.asarray(part[key])
            if value.shape != out[key].shape:
                raise ArtifactError(f"{name}: {key} has shape {value.shape}, the first has {out[key].shape}")
            out[key] += value
    if out is None:
        raise ArtifactError("no counts to merge")
    return out


def check_denominator(denominator: str) -> None:
    if denominator not in DENOMINATORS:
        raise ConfigError(f"dissection.denominator: must be one of {', '.join(DENOMINATORS)}, got {denominator!r}")


def category_activation(counts: Mapping[str, np.ndarray], denominator: str) -> np.ndarray:
    check_denominator(denominator)
    return np.asarray(counts[f"activation_{denominator}"], np.int64)


def iou(counts: Mapping[str, np.ndarray], denominator: str = DEFAULT_DENOMINATOR) -> np.ndarray:
    """IoU (C, n_labels) float64 from counts; 0 where the union is empty or the label has no category."""
    act = category_activation(counts, denominator)
    cat = np.asarray(counts["label_category"], np.int64)
    inter = np.asarray(counts["intersection"], np.int64)
    area = np.asarray(counts["label_area"], np.int64)
    act_l = np.where(cat >= 0, act[:, np.maximum(cat, 0)], 0)
    union = act_l + area[None, :] - inter
    result = np.zeros(inter.shape, np.float64)
    ok = (union > 0) & (cat >= 0)[None, :]
    result[ok] = inter[ok] / union[ok]
    result[:, 0] = 0.0
    return result
