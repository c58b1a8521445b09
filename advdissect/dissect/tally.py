"""Dissection's files: a shard's counts file (every layer and threshold mode), a layer's IoU
table and tally.csv, and its units table (each unit's best concept and whether it is a detector).

The counts themselves, and the IoU formula, are in advdissect.dissect.counts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from .. import store
from ..data.broden import CATEGORIES, BrodenDataset
from ..data.segmentations import ShardSegmentations
from ..errors import ArtifactError, ConfigError
from ..store import COUNT_KEYS
from .counts import (
    N_CAT,
    LabelTable,
    category_activation,
    check_denominator,
    count_shard,
    iou,
    merge_counts,
    record_dtype,
    record_keys,
)


def counts_group(mode: str, layer: str) -> str:
    """The group of one dissection (threshold mode, layer) in a counts file."""
    return f"{mode}/{layer}"


def read_counts(path: str | os.PathLike, expect: Mapping[str, Any], per_image: bool = False) -> dict[str, np.ndarray]:
    """The counts of dissection (`expect["mode"]`, `expect["layer"]`) in a counts file; the other
    keys of `expect` are checked against the file's identity. With `per_image`, also its
    per-image records (written when the count job was asked for them)."""
    want = dict(expect)
    group = counts_group(want.pop("mode"), want.pop("layer"))
    keys = list(store.COUNTS) + (record_keys() if per_image else [])
    with store.open_h5(path, "counts", expect=want) as f:
        if group not in f:
            raise ArtifactError(f"{path}: holds no counts of {group}; delete it and re-run")
        missing = [k for k in keys if k not in f[group]]
        if missing:
            raise ArtifactError(f"{path}: counts {group} without {', '.join(missing)}; delete it and re-run")
        out = {k: f[group][k][()] for k in keys}
        out["n_images"] = np.array(store.read_attrs(f).get("n_images", 0), np.int64)
    return out


def count_file(
    activations_path: str | os.PathLike,
    thresholds_path: str | os.PathLike,
    dataset: Any,
    *,
    expect_activations: Mapping[str, Any],
    expect_thresholds: Mapping[str, Any],
    per_image: bool = False,
    segmentations: Sequence[Any] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """count_shard of one layer of an activations file (`expect_activations["layer"]`) against its
    rows' segmentations; also the thresholds' attrs.

    `dataset` needs load_segmentation(row), label_category, n_labels and seg_size;
    `segmentations`, when given, are the rows' segmentations already decoded.
    """
    with store.open_h5(thresholds_path, "thresholds", expect=expect_thresholds) as f:
        thresholds = f["thresholds"][()].astype(np.float64)
        t_attrs = store.read_attrs(f)
    with store.open_layer(activations_path, expect_activations) as (f, acts):
        rows = f["rows"][()].astype(np.int64)
        if acts.shape[1] != thresholds.shape[0]:
            raise ArtifactError(
                f"{activations_path}: {acts.shape[1]} units, but {thresholds_path} holds "
                f"{thresholds.shape[0]} thresholds"
            )
        if segmentations is not None and len(segmentations) != len(rows):
            raise ArtifactError(f"{activations_path}: {len(rows)} rows, but {len(segmentations)} segmentations")
        segs = iter(segmentations) if segmentations is not None else (dataset.load_segmentation(int(r)) for r in rows)
        counts = count_shard(acts, thresholds, segs, LabelTable.of(dataset), progress=True, per_image=per_image)
    return counts, t_attrs


def write_shard_counts(
    out: str | os.PathLike,
    *,
    activations_path: str | os.PathLike,
    segmentations_path: str | os.PathLike | None,
    dissections: Sequence[Mapping[str, Any]],
    identity: Mapping[str, Any],
    dataset: Any = None,
    per_image: bool = False,
) -> None:
    """Count one activations shard against its rows' segmentations for every dissection of its
    image set; write kind "counts" with one group per dissection, and with `per_image` each
    dissection's per-image records too (what the bootstrap resamples).

    identity: dataset, model, attack, shard (the activations file's identity).
    dissections: one mapping per (mode, layer): mode, layer, thresholds (path) and
    threshold_identity (what the thresholds file must say it is).
    The segmentations come from the shard's segmentations file (advdissect.data.segmentations), or
    from `dataset` when given (anything with load_segmentation, label_category, n_labels, seg_size).
    """
    if not dissections:
        raise ArtifactError(f"{out}: no dissections to count")
    if dataset is None:
        dataset = ShardSegmentations(segmentations_path, {k: identity[k] for k in ("dataset", "shard")})
    with store.open_h5(activations_path, "activations", expect=identity) as f:
        rows = f["rows"][()].astype(np.int64)
    segs = [dataset.load_segmentation(int(r)) for r in tqdm(rows, desc="segmentations", unit="img", disable=None)]
    arrays: dict[str, np.ndarray] = {}
    quantiles: dict[str, Any] = {}
    n_images = 0
    for d in dissections:
        counts, t_attrs = count_file(
            activations_path,
            d["thresholds"],
            dataset,
            expect_activations=dict(identity, layer=d["layer"]),
            expect_thresholds=d["threshold_identity"],
            segmentations=segs,
            per_image=per_image,
        )
        group = counts_group(d["mode"], d["layer"])
        arrays.update({f"{group}/{k}": counts[k] for k in store.COUNTS})
        if per_image:
            arrays.update({f"{group}/{k}": counts[k].astype(record_dtype(k.rsplit("/", 1)[1])) for k in record_keys()})
        quantiles[group] = t_attrs.get("quantile")
        n_images = int(counts["n_images"])
    attrs = dict(
        identity,
        dissections=sorted(quantiles),
        n_images=n_images,
        n_labels=int(dataset.n_labels),
        seg_size=list(dataset.seg_size),
        quantile=quantiles,
    )
    store.write_h5(out, "counts", attrs, arrays, chunk_rows=False)


def _best_per_category(scores: np.ndarray, cat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best label (C, N_CAT) and its IoU per unit and category (label -1 where the best IoU is 0)."""
    n_units = scores.shape[0]
    best = np.full((n_units, N_CAT), -1, np.int64)
    score = np.zeros((n_units, N_CAT), np.float64)
    for ci in range(N_CAT):
        labels = np.flatnonzero(cat == ci)
        labels = labels[labels > 0]
        if labels.size == 0:
            continue
        sub = scores[:, labels]
        arg = sub.argmax(axis=1)  # ties: the lowest label number
        top = sub[np.arange(n_units), arg]
        best[:, ci] = np.where(top > 0, labels[arg], -1)
        score[:, ci] = top
    return best, score


def _best_overall(best: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label, category index, IoU) of each unit's best concept; label -1 and category -1 at IoU 0."""
    # Ties: the last category in CATEGORIES order, as NetDissect-Lite's reversed argsort picks.
    ci = N_CAT - 1 - score[:, ::-1].argmax(axis=1)
    rows = np.arange(score.shape[0])
    top = score[rows, ci]
    return np.where(top > 0, best[rows, ci], -1), np.where(top > 0, ci, -1), top


def best_concepts(scores: np.ndarray, label_category: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label, category index, IoU) of each unit's best concept from its IoU scores (C, L);
    label and category -1 where the best IoU is 0. Ties as in NetDissect-Lite."""
    best, score = _best_per_category(scores, np.asarray(label_category, np.int64))
    return _best_overall(best, score)


def tally_frame(
    counts: Mapping[str, np.ndarray], scores: np.ndarray, label_names: Sequence[str], denominator: str
) -> pd.DataFrame:
    """NetDissect-Lite's tally.csv table (rows by unit, units 1-based)."""
    act = category_activation(counts, denominator)
    cat = np.asarray(counts["label_category"], np.int64)
    inter = np.asarray(counts["intersection"], np.int64)
    area = np.asarray(counts["label_area"], np.int64)
    names = np.asarray(list(label_names) + [""], dtype=object)  # index -1 -> ""
    best, score = _best_per_category(scores, cat)
    label, ci, top = _best_overall(best, score)
    n_units = scores.shape[0]
    rows = np.arange(n_units)
    frame = {
        "unit": rows + 1,
        # A unit whose IoUs are all 0 has no concept; Lite still names a category, the last one.
        "category": np.asarray(CATEGORIES, dtype=object)[np.where(ci >= 0, ci, N_CAT - 1)],
        "label": names[label],
        "score": top,
    }
    for c, name in enumerate(CATEGORIES):
        lab = best[:, c]
        found = lab >= 0
        safe = np.maximum(lab, 0)
        frame[f"{name}-label"] = names[lab]
        frame[f"{name}-truth"] = np.where(found, area[safe], 0)
        frame[f"{name}-activation"] = act[:, c]
        frame[f"{name}-intersect"] = np.where(found, inter[rows, safe], 0)
        frame[f"{name}-iou"] = score[:, c]
    return pd.DataFrame(frame, columns=tally_columns())


def tally_columns() -> list[str]:
    cols = ["unit", "category", "label", "score"]
    for name in CATEGORIES:
        cols += [f"{name}-{x}" for x in ("label", "truth", "activation", "intersect", "iou")]
    return cols


def write_iou(
    out_iou_h5: str | os.PathLike,
    out_tally_csv: str | os.PathLike,
    *,
    count_paths: Sequence[str | os.PathLike],
    dataset_root: str | os.PathLike,
    denominator: str,
    identity: Mapping[str, Any],
    dataset: Any = None,
) -> None:
    """Sum the shard counts of a layer, compute IoU, write the "iou" HDF5 and tally.csv.

    `dataset` (default: BrodenDataset(dataset_root)) needs label_names.
    """
    check_denominator(denominator)
    if not count_paths:
        raise ArtifactError("no count shards given")
    counts = merge_counts((read_counts(p, identity) for p in count_paths), names=[str(p) for p in count_paths])
    if dataset is None:
        dataset = BrodenDataset(dataset_root)
    if len(dataset.label_names) != counts["intersection"].shape[1]:
        raise ArtifactError(
            f"counts hold {counts['intersection'].shape[1]} labels, the dataset at {dataset_root} "
            f"has {len(dataset.label_names)}"
        )
    scores = iou(counts, denominator)
    names = [str(x) for x in dataset.label_names]
    arrays = {k: counts[k] for k in COUNT_KEYS + ("label_category",)}
    arrays["iou"] = scores
    arrays["label_names"] = np.array([x.encode("utf-8") for x in names], dtype=bytes)
    arrays["categories"] = np.array([x.encode() for x in CATEGORIES], dtype=bytes)
    attrs = dict(identity, denominator=denominator, n_images=int(counts["n_images"]))
    store.write_h5(out_iou_h5, "iou", attrs, arrays, chunk_rows=False)
    store.write_csv(out_tally_csv, tally_frame(counts, scores, names, denominator))


def units_table(iou_h5_path: str | os.PathLike, iou_threshold: float) -> pd.DataFrame:
    """One row per unit: unit (1-based), label, category, iou of its best concept, detector (iou > cut)."""
    if not 0 < float(iou_threshold) < 1:
        raise ConfigError(f"dissection.iou_threshold: must lie in (0, 1), got {iou_threshold!r}")
    with store.open_h5(iou_h5_path, "iou") as f:
        scores = f["iou"][()]
        cat = f["label_category"][()]
        names = [x.decode("utf-8") for x in f["label_names"][()]]
    label, ci, top = best_concepts(scores, cat)
    names_arr = np.asarray(names + [""], dtype=object)
    return pd.DataFrame(
        {
            "unit": np.arange(scores.shape[0]) + 1,
            "label": names_arr[label],
            "category": np.asarray(list(CATEGORIES) + [""], dtype=object)[ci],
            "iou": top,
            "detector": top > float(iou_threshold),
        }
    )


def write_units_table(out: str | os.PathLike, iou_path: str | os.PathLike, iou_threshold: float) -> None:
    store.write_csv(out, units_table(iou_path, iou_threshold))


UNITS_COLUMNS = ["unit", "label", "category", "iou", "detector"]


def _parse_bool(value: Any, path: str | os.PathLike, unit: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "1.0", "yes"):
        return True
    if text in ("false", "0", "0.0", "no", ""):
        return False
    raise ArtifactError(f"{path}: unit {unit}: detector must be True or False, found {value!r}")


def read_units(path: str | os.PathLike) -> pd.DataFrame:
    """Read a tidy `units/{layer}.csv` (unit 1-based, label, category, iou, detector).

    Labels stay text exactly as written (no 'NA' → NaN); an empty label means no concept.
    """
    try:
        frame = pd.read_csv(
            path,
            dtype={"label": str, "category": str},
            keep_default_na=False,
            na_values={"iou": ["", "nan", "NaN"]},
        )
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ArtifactError(f"{path}: cannot be read as a units CSV ({exc})") from None
    missing = [c for c in UNITS_COLUMNS if c not in frame.columns]
    if missing:
        raise ArtifactError(f"{path}: units CSV lacks column(s) {missing}; expected {UNITS_COLUMNS}")
    frame = frame.copy()
    frame["unit"] = pd.to_numeric(frame["unit"], errors="raise").astype(np.int64)
    if frame["unit"].duplicated().any() or (frame["unit"] < 1).any():
        raise ArtifactError(f"{path}: unit numbers must be unique and 1-based")
    frame["iou"] = pd.to_numeric(frame["iou"], errors="coerce").astype(float)
    frame["label"] = frame["label"].fillna("").astype(str)
    frame["category"] = frame["category"].fillna("").astype(str).str.strip()
    frame["detector"] = [_parse_bool(v, path, u) for v, u in zip(frame["detector"], frame["unit"])]
    bad = frame.loc[frame["detector"] & ~frame["category"].isin(CATEGORIES)]
    if len(bad):
        row = bad.iloc[0]
        raise ArtifactError(
            f"{path}: unit {row['unit']} is a detector of category {row['category']!r}; "
            f"allowed categories: {', '.join(CATEGORIES)}"
        )
    return frame.sort_values("unit").reset_index(drop=True)
