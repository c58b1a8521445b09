"""Bootstrap over the dissected images: the sampling spread of a layer's detector counts.

A resample draws N images with replacement from the N dissected ones (multinomial weights
w_i, seeded). Its counts are the exact weighted sums of per-image records (`counts.IMAGE_RECORDS`,
written by the count jobs beside their counts and checked against them):
intersection[u, l] = sum_i w_i·|M_u ∩ L_l|_i and so on, so every resample is scored by the
pipeline's own IoU, best-concept and detector rules, as if the resampled image list had been
dissected (thresholds stay those of the full set); nothing is recounted. The
weights depend only on (N, seed, resample), so every model, attack and layer of a dataset
sees the same resamples: a clean-vs-attack difference is paired resample by resample.

Intervals are basic (reverse-percentile) bootstrap intervals: [2·t − q_hi, 2·t − q_lo] for the
full-set value t and the resampled quantiles q. Counting detectors takes, per unit, the best of
many noisy IoUs and compares it with a cut, so resampling (which adds that noise once more)
shifts the count, not only spreads it: for a random network nearly every resample has more
detectors than the full set, and a percentile interval [q_lo, q_hi] would then miss t itself.
The basic interval reads the resamples' shift as the full set's own shift from the population
value and moves the interval against it; ratios are clipped to [0, 100] %.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse
from tqdm import tqdm

from .. import store
from ..data.broden import CATEGORIES
from ..errors import ArtifactError, ConfigError
from ..store import COUNT_KEYS
from .counts import IMAGE_RECORDS, N_CAT, _bits_to_matrix, check_denominator, iou, merge_counts, record_key
from .tally import best_concepts, read_counts

# One chunk of resamples holds at most this many (resample, cell) values per array.
CHUNK_ELEMENTS = 1 << 24
DETECTOR_COLUMNS = (*CATEGORIES, "all")


def resample_weights(n_images: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_images) int64: how often each image is drawn in each resample."""
    if n_images < 1 or resamples < 1:
        raise ConfigError(f"dissection.bootstrap: need images and resamples, got {n_images} and {resamples}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(n_images)]))
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=resamples).astype(np.int64)


class ImageCounts:
    """The per-image records of a dissection's count shards, images numbered across the shards."""

    def __init__(self, records: Mapping[str, Mapping[str, np.ndarray]], totals: Mapping[str, np.ndarray]):
        self.records = records
        self.label_category = np.asarray(totals["label_category"], np.int64)
        self.n_images = int(totals["n_images"])
        self.n_units, self.n_labels = np.asarray(totals["intersection"]).shape
        self._scorers: dict[str, _Scorer] = {}

    @classmethod
    def from_shards(cls, parts: Sequence[Mapping[str, np.ndarray]]) -> ImageCounts:
        """`parts`: counts with per-image records (count_shard's or read_counts'), in the shards' order."""
        if not parts:
            raise ArtifactError("no count shards given")
        records = {name: {col: [] for col in cols} for name, cols in IMAGE_RECORDS.items()}
        if sum(int(part["n_images"]) for part in parts) >= 2**31:
            raise ArtifactError("more than 2**31 images to resample")
        offset = 0
        for part in parts:
            for name, cols in IMAGE_RECORDS.items():
                for col in cols:
                    key = record_key(name, col)
                    if key not in part:
                        raise ArtifactError(
                            f"counts without per-image records ({key}); they are written when "
                            "dissection.bootstrap.resamples > 0"
                        )
                    value = np.asarray(part[key])  # kept as stored (int32, uint8): a layer's records are many
                    if col == "image":
                        value = (value.astype(np.int64) + offset).astype(np.int32)
                    records[name][col].append(value)
            offset += int(part["n_images"])
        joined = {name: {col: np.concatenate(v) for col, v in cols.items()} for name, cols in records.items()}
        totals = merge_counts(parts)
        out = cls(joined, totals)
        out.check(totals)
        return out

    def check(self, totals: Mapping[str, np.ndarray]) -> None:
        """The records must add up to the shard totals (all weights 1)."""
        for key in COUNT_KEYS:
            _, cell, value, n_cells = self._entries(key)
            got = np.zeros(n_cells, np.int64)
            np.add.at(got, np.asarray(cell, np.int64), np.asarray(value, np.int64))
            if not np.array_equal(got, np.asarray(totals[key], np.int64).ravel()):
                raise ArtifactError(f"per-image records do not add up to the counts' {key}")

    def counts(self, weights: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Counts (tally's keys) of each row of weights (k, n_images)."""
        weights = self._check_weights(weights)
        summed = {key: self.weighted_sums(key)(weights) for key in COUNT_KEYS}
        shapes = {
            "intersection": (self.n_units, self.n_labels),
            "activation_lite": (self.n_units, N_CAT),
            "activation_original": (self.n_units, N_CAT),
        }
        return [
            {
                **{key: sums[k].reshape(shapes.get(key, (-1,))) for key, sums in summed.items()},
                "label_category": self.label_category,
                "n_images": np.array(weights[k].sum(), np.int64),
            }
            for k in range(len(weights))
        ]

    def detectors(self, weights: np.ndarray, denominator: str, iou_threshold: float) -> np.ndarray:
        """(k, N_CAT + 1) int64: `detectors` of each row of weights, columns DETECTOR_COLUMNS.

        The same numbers as `detectors(counts)[...]` of `counts(weights)`, computed only on the
        (unit, label) cells that some image's records intersect: elsewhere the IoU is 0, which
        never raises a unit's best IoU above 0.
        """
        weights = self._check_weights(weights)
        if denominator not in self._scorers:
            self._scorers[denominator] = _Scorer(self, denominator)
        scorer = self._scorers[denominator]
        out = np.empty((len(weights), N_CAT + 1), np.int64)
        step = max(1, CHUNK_ELEMENTS // max(1, scorer.n_cells))
        for lo in range(0, len(weights), step):
            out[lo : lo + step] = scorer(weights[lo : lo + step], float(iou_threshold))
        return out

    def _check_weights(self, weights: np.ndarray) -> np.ndarray:
        weights = np.asarray(weights, np.int64)
        if weights.ndim != 2 or weights.shape[1] != self.n_images:
            raise ArtifactError(f"weights of shape {weights.shape} for {self.n_images} images")
        return weights

    def weighted_sums(self, key: str) -> _WeightedSums:
        """The count `key` (one of COUNT_KEYS) of any image weights."""
        image, cell, value, n_cells = self._entries(key)
        return _WeightedSums(image, cell, value, n_cells, self.n_images)

    def _entries(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(image, cell, value, number of cells) of the records that make count `key`, the cells
        numbered as the count's array ravelled; grouped by image like the records."""
        r, u, nl = self.records, self.n_units, self.n_labels
        if key == "intersection":
            inter = r["intersection"]
            return inter["image"], inter["unit"].astype(np.int64) * nl + inter["label"], inter["count"], u * nl
        if key == "label_area":
            return r["label_area"]["image"], r["label_area"]["label"], r["label_area"]["area"], nl
        act = r["activation"]
        if key == "activation_total":
            return act["image"], act["unit"], act["size"], u
        # Mask sizes per (unit, category): where a label of the category lies inside the mask
        # (lite) or where the category is annotated in the image (original).
        if key == "activation_lite":
            bits = act["inside"]
        else:
            image_bits = np.zeros(self.n_images, np.uint8)
            image_bits[r["image_categories"]["image"]] = r["image_categories"]["bits"]
            bits = image_bits[act["image"]]
        # One entry per (record, category) whose bit is set: row-major, so still grouped by image.
        record, category = np.nonzero(_bits_to_matrix(np.asarray(bits).astype(np.uint8)))
        cells = act["unit"][record].astype(np.int32) * N_CAT + category.astype(np.int32)
        return act["image"][record], cells, act["size"][record], u * N_CAT


class _WeightedSums:
    """sum over records of weights[:, image]·value per cell, for any weights (k, n_images): a
    sparse (cells with records × images) int64 matrix times the weights, exact in integers.

    The records come grouped by image (count jobs write them image by image, shards in order),
    so the matrix is built by columns and converted by counting, without sorting int64 keys:
    at Broden's size a layer has tens of millions of records."""

    def __init__(self, image: np.ndarray, cell: np.ndarray, value: np.ndarray, n_cells: int, n_images: int):
        image = np.asarray(image)
        cell, value = np.asarray(cell), np.asarray(value)
        if image.size and np.any(image[1:] < image[:-1]):
            order = np.argsort(image, kind="stable")
            image, cell, value = image[order], cell[order], value[order]
        index = np.int32 if n_cells < 2**31 else np.int64
        indptr = np.searchsorted(image, np.arange(n_images + 1))
        by_image = scipy.sparse.csc_matrix(
            (value.astype(np.int64), cell.astype(index), indptr), shape=(n_cells, n_images)
        )
        full = by_image.tocsr()
        del by_image
        self.cells = np.flatnonzero(np.diff(full.indptr))  # the cells with records, ascending
        self.matrix = full[self.cells]
        self.n_cells = n_cells

    def compact(self, weights: np.ndarray) -> np.ndarray:
        """(k, len(self.cells)): the sums of the cells that have records."""
        return np.asarray(self.matrix @ weights.T).T

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        """(k, n_cells): every cell, 0 where no record falls."""
        out = np.zeros((len(weights), self.n_cells), np.int64)
        out[:, self.cells] = self.compact(weights)
        return out


class _Scorer:
    """Detectors per category of resampled counts, from the IoU of the intersected cells only."""

    def __init__(self, image_counts: ImageCounts, denominator: str):
        check_denominator(denominator)
        nl = image_counts.n_labels
        cat = image_counts.label_category
        r = image_counts.records["intersection"]
        label = np.asarray(r["label"])
        scored = (label > 0) & (cat[label] >= 0)  # label 0 and labels without a category score 0
        cell = np.asarray(r["unit"])[scored].astype(np.int64) * nl + label[scored]
        n_images = image_counts.n_images
        self.inter = _WeightedSums(r["image"][scored], cell, r["count"][scored], image_counts.n_units * nl, n_images)
        unit, self.label = np.divmod(self.inter.cells, nl)
        group = unit * N_CAT + cat[self.label]
        # The cells reordered so that each (unit, category) group is contiguous.
        self.order = np.argsort(group, kind="stable")
        self.label, self.group = self.label[self.order], group[self.order]
        new_group = np.r_[True, self.group[1:] != self.group[:-1]] if self.group.size else np.zeros(0, bool)
        self.group_starts = np.flatnonzero(new_group)
        self.groups = self.group[self.group_starts]
        self.area = image_counts.weighted_sums("label_area")
        self.activation = image_counts.weighted_sums(f"activation_{denominator}")
        self.n_units = image_counts.n_units
        # per resample: the intersected cells' sums and IoUs, and every (unit, category) cell
        self.n_cells = 2 * len(self.group) + 2 * self.n_units * N_CAT + image_counts.n_labels

    def __call__(self, weights: np.ndarray, iou_threshold: float) -> np.ndarray:
        k = len(weights)
        score = np.zeros((k, self.n_units * N_CAT), np.float64)
        if self.label.size:
            inter = self.inter.compact(weights)[:, self.order]
            union = self.activation(weights)[:, self.group] + self.area(weights)[:, self.label] - inter
            # inter > 0 implies union >= inter > 0; where inter == 0 the IoU is 0.
            iou_cells = np.divide(inter, union, out=np.zeros(inter.shape, np.float64), where=inter > 0)
            score[:, self.groups] = np.maximum.reduceat(iou_cells, self.group_starts, axis=1)
        score = score.reshape(k, self.n_units, N_CAT)
        # The best category of a unit, ties to the last category (tally._best_overall).
        ci = N_CAT - 1 - score[:, :, ::-1].argmax(axis=2)
        top = np.take_along_axis(score, ci[:, :, None], axis=2)[:, :, 0]
        is_det = top > iou_threshold
        per_cat = np.stack([np.sum(is_det & (ci == c), axis=1) for c in range(N_CAT)], axis=1)
        return np.concatenate([per_cat, is_det.sum(axis=1)[:, None]], axis=1).astype(np.int64)


def detectors(counts: Mapping[str, np.ndarray], denominator: str, iou_threshold: float) -> dict[str, int]:
    """Detectors per category and in all, by the rules of the units table."""
    scores = iou(counts, denominator)
    _, ci, top = best_concepts(scores, counts["label_category"])
    is_det = top > float(iou_threshold)
    out = {name: int(np.sum(is_det & (ci == c))) for c, name in enumerate(CATEGORIES)}
    out["all"] = int(is_det.sum())
    return out


def bootstrap_detectors(
    image_counts: ImageCounts,
    resamples: int,
    seed: int,
    denominator: str,
    iou_threshold: float,
    progress: bool = False,
) -> pd.DataFrame:
    """One row per resample: resample (1-based), units, and the detectors of each category and in all."""
    weights = resample_weights(image_counts.n_images, resamples, seed)
    step = 100
    starts = range(0, len(weights), step)
    if progress:
        starts = tqdm(starts, desc="bootstrap", unit=f"×{step} resamples", disable=None)
    parts = [image_counts.detectors(weights[lo : lo + step], denominator, iou_threshold) for lo in starts]
    frame = pd.DataFrame(np.concatenate(parts), columns=list(DETECTOR_COLUMNS))
    frame.insert(0, "units", image_counts.n_units)
    frame.insert(0, "resample", np.arange(1, len(weights) + 1))
    return frame


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` percentile interval (linear interpolation between order statistics)."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    tail = round(50.0 * (1.0 - float(level)), 9)  # 0.95 -> 2.5 exactly
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def basic_interval(
    point: float, values: np.ndarray, level: float, bounds: tuple[float, float] = (-np.inf, np.inf)
) -> tuple[float, float]:
    """The basic bootstrap interval [2·point − q_hi, 2·point − q_lo], clipped to `bounds`."""
    q_lo, q_hi = percentile_interval(values, level)
    lo = min(max(2.0 * float(point) - q_hi, bounds[0]), bounds[1])
    hi = min(max(2.0 * float(point) - q_lo, bounds[0]), bounds[1])
    return lo + 0.0, hi + 0.0  # + 0.0 turns -0.0 into 0.0


# ---------------------------------------------------------------- files


def write_bootstrap(
    out: str | os.PathLike,
    *,
    count_paths: Sequence[str | os.PathLike],
    identity: Mapping[str, Any],
    dissections: Sequence[Mapping[str, str]],
    resamples: int,
    seed: int,
    denominator: str,
    iou_threshold: float,
) -> None:
    """Resample every dissection of an image set from its count shards' per-image records; write
    one table with a row per (mode, layer, resample).

    `identity`: dataset, model and attack of the count shards (numbered 0, 1, ... in order);
    `dissections`: {mode, layer} of each dissection. The records must add up to each shard's
    stored counts (`ImageCounts.check`).
    """
    if not count_paths:
        raise ArtifactError(f"{out}: no count shards")
    if not dissections:
        raise ArtifactError(f"{out}: no dissections to resample")
    frames = []
    for d in dissections:
        parts = [
            read_counts(p, dict(identity, mode=d["mode"], layer=d["layer"], shard=shard), per_image=True)
            for shard, p in enumerate(count_paths)
        ]
        image_counts = ImageCounts.from_shards(parts)
        frame = bootstrap_detectors(image_counts, resamples, seed, denominator, iou_threshold, progress=True)
        frame.insert(0, "layer", d["layer"])
        frame.insert(0, "mode", d["mode"])
        frames.append(frame)
    store.write_csv(out, pd.concat(frames, ignore_index=True))


def read_bootstrap(path: str | os.PathLike, mode: str | None = None, layer: str | None = None) -> pd.DataFrame:
    """A bootstrap table, or its rows of one dissection (mode and layer) in resample order."""
    frame = pd.read_csv(path)
    missing = [c for c in ("mode", "layer", "resample", "units", *DETECTOR_COLUMNS) if c not in frame.columns]
    if missing:
        raise ArtifactError(f"{path}: not a bootstrap table (missing {', '.join(missing)})")
    if mode is None and layer is None:
        return frame
    rows = frame[(frame["mode"] == mode) & (frame["layer"] == layer)].reset_index(drop=True)
    if rows.empty:
        raise ArtifactError(f"{path}: holds no resamples of {mode}/{layer}; delete it and re-run")
    return rows
