"""Bootstrap over the dissected images: the sampling spread of a layer's detector counts.

A resample draws N images with replacement from the N dissected ones (multinomial weights
w_i, seeded). Its counts are the exact weighted sums of per-image records (`tally.IMAGE_RECORDS`,
recounted here from the activation shards and checked against the stored counts):
intersection[u, l] = sum_i w_i·|M_u ∩ L_l|_i and so on, so every resample is scored by the
pipeline's own IoU, best-concept and detector rules, as if the resampled image list had been
dissected (thresholds stay those of the full set). The
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
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import store
from .errors import ArtifactError, ConfigError
from .segmentations import ShardSegmentations
from .tally import (
    CATEGORIES,
    COUNT_KEYS,
    IMAGE_RECORDS,
    N_CAT,
    _bits_to_matrix,
    best_concepts,
    count_file,
    iou,
    merge_counts,
    read_counts,
)

# One resample chunk holds at most this many (resample, record) products.
CHUNK_ELEMENTS = 1 << 24
DETECTOR_COLUMNS = (*CATEGORIES, "all")


def resample_weights(n_images: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_images) int64: how often each image is drawn in each resample."""
    if n_images < 1 or resamples < 1:
        raise ConfigError(f"dissection.bootstrap: need images and resamples, got {n_images} and {resamples}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(n_images)]))
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=resamples).astype(np.int64)


class ImageCounts:
    """The per-image records of a layer's count shards, images numbered across the shards."""

    def __init__(self, records: Mapping[str, Mapping[str, np.ndarray]], totals: Mapping[str, np.ndarray]):
        self.records = records
        self.label_category = np.asarray(totals["label_category"], np.int64)
        self.n_images = int(totals["n_images"])
        self.n_units, self.n_labels = np.asarray(totals["intersection"]).shape

    @classmethod
    def from_shards(cls, parts: Sequence[Mapping[str, np.ndarray]]) -> ImageCounts:
        """`parts`: count_shard outputs with per-image records, in the shards' order."""
        if not parts:
            raise ArtifactError("no count shards given")
        records = {name: {col: [] for col in cols} for name, cols in IMAGE_RECORDS.items()}
        offset = 0
        for part in parts:
            for name, cols in IMAGE_RECORDS.items():
                for col in cols:
                    key = f"per_image/{name}/{col}"
                    if key not in part:
                        raise ArtifactError(
                            f"counts without per-image records ({key}); they are written when "
                            "dissection.bootstrap.resamples > 0"
                        )
                    value = np.asarray(part[key], np.int64)
                    records[name][col].append(value + offset if col == "image" else value)
            offset += int(part["n_images"])
        joined = {name: {col: np.concatenate(v) for col, v in cols.items()} for name, cols in records.items()}
        totals = merge_counts(parts)
        out = cls(joined, totals)
        out.check(totals)
        return out

    def check(self, totals: Mapping[str, np.ndarray]) -> None:
        """The records must add up to the shard totals (all weights 1)."""
        got = self.counts(np.ones((1, self.n_images), np.int64))[0]
        for key in COUNT_KEYS:
            if not np.array_equal(got[key], np.asarray(totals[key], np.int64)):
                raise ArtifactError(f"per-image records do not add up to the counts' {key}")

    def counts(self, weights: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Counts (tally's keys) of each row of weights (k, n_images)."""
        weights = np.asarray(weights, np.int64)
        if weights.ndim != 2 or weights.shape[1] != self.n_images:
            raise ArtifactError(f"weights of shape {weights.shape} for {self.n_images} images")
        u, nl = self.n_units, self.n_labels
        r = self.records
        inter = _weighted_sums(
            weights, r["intersection"]["image"], r["intersection"]["unit"] * nl + r["intersection"]["label"],
            r["intersection"]["count"], u * nl,
        )  # fmt: skip
        area = _weighted_sums(weights, r["label_area"]["image"], r["label_area"]["label"], r["label_area"]["area"], nl)
        act = r["activation"]
        size = _weighted_sums(weights, act["image"], act["unit"], act["size"], u)
        inside = _bits_to_matrix(act["inside"])  # (records, N_CAT)
        cells = (act["unit"][:, None] * N_CAT + np.arange(N_CAT)).ravel()
        lite = _weighted_sums(
            weights, np.repeat(act["image"], N_CAT), cells, (act["size"][:, None] * inside).ravel(), u * N_CAT
        )
        image_bits = np.zeros(self.n_images, np.int64)
        image_bits[r["image_categories"]["image"]] = r["image_categories"]["bits"]
        annotated = _bits_to_matrix(image_bits[act["image"]].astype(np.uint8))
        original = _weighted_sums(
            weights, np.repeat(act["image"], N_CAT), cells, (act["size"][:, None] * annotated).ravel(), u * N_CAT
        )
        return [
            {
                "intersection": inter[k].reshape(u, nl),
                "label_area": area[k],
                "activation_lite": lite[k].reshape(u, N_CAT),
                "activation_original": original[k].reshape(u, N_CAT),
                "activation_total": size[k],
                "label_category": self.label_category,
                "n_images": np.array(weights[k].sum(), np.int64),
            }
            for k in range(len(weights))
        ]


def _weighted_sums(weights: np.ndarray, image: np.ndarray, cell: np.ndarray, value: np.ndarray, n_cells: int):
    """(k, n_cells) int64: sum over records of weights[:, image]·value, per cell."""
    out = np.zeros((len(weights), n_cells), np.int64)
    if image.size == 0:
        return out
    order = np.argsort(cell, kind="stable")
    image, cell, value = image[order], cell[order], value[order]
    starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
    step = max(1, CHUNK_ELEMENTS // image.size)
    for lo in range(0, len(weights), step):
        products = weights[lo : lo + step, image] * value  # exact: int64
        out[lo : lo + step, cell[starts]] = np.add.reduceat(products, starts, axis=1)
    return out


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
    rows = []
    for first, counts in _chunks(image_counts, weights, progress):
        for k, c in enumerate(counts):
            rows.append(
                {"resample": first + k + 1, "units": image_counts.n_units, **detectors(c, denominator, iou_threshold)}
            )
    return pd.DataFrame(rows, columns=["resample", "units", *DETECTOR_COLUMNS])


def _chunks(image_counts: ImageCounts, weights: np.ndarray, progress: bool) -> Iterator[tuple[int, list]]:
    step = 16
    starts = range(0, len(weights), step)
    if progress:
        starts = tqdm(starts, desc="bootstrap", unit=f"×{step} resamples", disable=None)
    for lo in starts:
        yield lo, image_counts.counts(weights[lo : lo + step])


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
    activation_paths: Sequence[str | os.PathLike],
    thresholds_path: str | os.PathLike,
    count_paths: Sequence[str | os.PathLike],
    segmentation_paths: Sequence[str | os.PathLike] | None,
    identity: Mapping[str, Any],
    threshold_identity: Mapping[str, Any],
    resamples: int,
    seed: int,
    denominator: str,
    iou_threshold: float,
    dataset: Any = None,
) -> None:
    """Recount a layer's activation shards image by image and write the resamples' detector counts.

    `identity`: dataset/model/attack/mode/layer of the counts; the activation shards carry the
    same without mode, plus their shard number. The recount must equal the stored counts. The
    segmentations come from the shards' segmentations files, or from `dataset` when given.
    """
    if len(activation_paths) != len(count_paths) or not count_paths:
        raise ArtifactError(f"{len(activation_paths)} activation shards for {len(count_paths)} count shards")
    if dataset is None and len(segmentation_paths or ()) != len(count_paths):
        raise ArtifactError(f"{len(segmentation_paths or ())} segmentation shards for {len(count_paths)} count shards")
    expect = {k: v for k, v in identity.items() if k != "mode"}
    parts = []
    for shard, (acts_path, counts_path) in enumerate(zip(activation_paths, count_paths)):
        segs = dataset
        if segs is None:
            segs = ShardSegmentations(segmentation_paths[shard], {"dataset": identity["dataset"], "shard": shard})
        counts, _ = count_file(
            acts_path,
            thresholds_path,
            segs,
            expect_activations=dict(expect, shard=shard),
            expect_thresholds=threshold_identity,
            per_image=True,
        )
        stored = read_counts(counts_path, dict(identity, shard=shard))
        for key in COUNT_KEYS:
            if not np.array_equal(counts[key], stored[key]):
                raise ArtifactError(f"{counts_path}: {key} differs from a recount of {acts_path}; re-run its count job")
        parts.append(counts)
    image_counts = ImageCounts.from_shards(parts)
    frame = bootstrap_detectors(image_counts, resamples, seed, denominator, iou_threshold, progress=True)
    store.write_csv(out, frame)


def read_bootstrap(path: str | os.PathLike) -> pd.DataFrame:
    frame = pd.read_csv(path)
    missing = [c for c in ("resample", "units", *DETECTOR_COLUMNS) if c not in frame.columns]
    if missing:
        raise ArtifactError(f"{path}: not a bootstrap table (missing {', '.join(missing)})")
    return frame
