"""Concept drift of one layer: per unit, its clean and adversarial best concept and what
happened to it (kept, changed, lost, gained or none)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import ArtifactError

DRIFT_STATUSES = ("kept", "changed", "lost", "gained", "none")
DRIFT_COLUMNS = [
    "unit",
    "clean_label",
    "clean_category",
    "clean_iou",
    "adv_label",
    "adv_category",
    "adv_iou",
    "clean_detector",
    "adv_detector",
    "status",
]


def _drift_status(clean_det: bool, adv_det: bool, clean_label: str, adv_label: str) -> str:
    if clean_det and adv_det:
        return "kept" if clean_label == adv_label else "changed"
    if clean_det:
        return "lost"
    if adv_det:
        return "gained"
    return "none"


def concept_drift(clean_units_df: pd.DataFrame, adv_units_df: pd.DataFrame) -> pd.DataFrame:
    """Per unit: its clean and adversarial best concept and what happened to it (status)."""
    clean_units = set(clean_units_df["unit"])
    adv_units = set(adv_units_df["unit"])
    if clean_units != adv_units:
        raise ArtifactError(
            f"clean and adversarial units files cover different units "
            f"({len(clean_units)} vs {len(adv_units)} units): they must come from the same layer"
        )
    cols = ["unit", "label", "category", "iou", "detector"]
    merged = clean_units_df[cols].merge(adv_units_df[cols], on="unit", suffixes=("_c", "_a"))
    out = pd.DataFrame(
        {
            "unit": merged["unit"].astype(np.int64),
            "clean_label": merged["label_c"],
            "clean_category": merged["category_c"],
            "clean_iou": merged["iou_c"],
            "adv_label": merged["label_a"],
            "adv_category": merged["category_a"],
            "adv_iou": merged["iou_a"],
            "clean_detector": merged["detector_c"].astype(bool),
            "adv_detector": merged["detector_a"].astype(bool),
        }
    )
    out["status"] = [
        _drift_status(c, a, cl, al)
        for c, a, cl, al in zip(out["clean_detector"], out["adv_detector"], out["clean_label"], out["adv_label"])
    ]
    return out[DRIFT_COLUMNS].sort_values("unit").reset_index(drop=True)


def drift_summary(drift: pd.DataFrame) -> dict[str, int]:
    counts = drift["status"].value_counts()
    summary = {s: int(counts.get(s, 0)) for s in DRIFT_STATUSES}
    summary["units"] = int(len(drift))
    return summary
