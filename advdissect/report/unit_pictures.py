"""Unit pictures (the study's Fig. 8): per unit, its top-activating images with its mask, the
clean set beside an attacked one; one picture per attack of a layer."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd

from ..dissect.tally import read_units
from ..errors import ConfigError
from ..store import PathLike
from .dissections import THRESHOLD_MODES
from .style import NO_CATEGORY_COLOR, category_color, new_figure, save_figure, style_context, wrap
from .top_images import ImageSet, TopImages, read_top_images, set_thresholds

CELL = 1.7  # inches per image


@dataclasses.dataclass(frozen=True)
class PictureSpec:
    """What the pictures show: the attacked side's thresholds (its own, 'self', or the clean
    ones, 'clean'), the named `units` first, then the `k` units whose best IoU changed most,
    each with its `n_images` top images."""

    threshold_mode: str = "self"
    units: tuple[int, ...] = ()
    k: int = 4
    n_images: int = 4
    style: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class PictureInputs:
    """The layer's clean image set, its attacked ones (a picture each), and the units table of
    each set by attack name: the clean set's with its own thresholds, each attack's at the
    spec's threshold mode."""

    clean: ImageSet
    attacked: tuple[ImageSet, ...]
    units: Mapping[str, PathLike]


@dataclasses.dataclass(frozen=True)
class _Side:
    """One half of a picture: an image set's top images, thresholds and units table."""

    title: str
    found: TopImages | None  # None when no unit is drawn
    thresholds: np.ndarray
    units: pd.DataFrame


def pick_units(clean_units: pd.DataFrame, adv_units: pd.DataFrame, k: int, named: Sequence[int] = ()) -> list[int]:
    """Named units first (config order), then the k units whose best-concept IoU changed most."""
    n_units = int(clean_units["unit"].max()) if len(clean_units) else 0
    for u in named:
        if not isinstance(u, (int, np.integer)) or not 1 <= int(u) <= n_units:
            raise ConfigError(f"unit pictures: unit {u!r} not in 1..{n_units} (units are 1-based)")
    merged = clean_units[["unit", "iou"]].merge(adv_units[["unit", "iou"]], on="unit", suffixes=("_c", "_a"))
    change = (merged["iou_a"].fillna(0) - merged["iou_c"].fillna(0)).abs()
    merged = merged.assign(change=change).sort_values(["change", "unit"], ascending=[False, True])
    chosen = list(dict.fromkeys(int(u) for u in named))
    for u in merged["unit"]:
        if len(chosen) >= len(set(named)) + k:
            break
        if int(u) not in chosen:
            chosen.append(int(u))
    return chosen


def _overlay(ax, image_chw: np.ndarray, mask: np.ndarray, color: str) -> None:
    image = np.transpose(image_chw, (1, 2, 0))
    ax.imshow(image, interpolation="nearest")
    rgba = np.zeros(mask.shape + (4,))
    rgba[..., :3] = mpl.colors.to_rgb(color)
    rgba[..., 3] = mask * 0.45
    ax.imshow(rgba, interpolation="nearest")
    if mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _unit_caption(side: str, units: pd.DataFrame, unit: int) -> tuple[str, str]:
    row = units.loc[units["unit"] == unit]
    if row.empty:
        return f"{side}: unit {unit} (not in units file)", NO_CATEGORY_COLOR
    r = row.iloc[0]
    label = r["label"] or "no concept"
    iou = "n/a" if pd.isna(r["iou"]) else f"{float(r['iou']):.3f}"
    det = "" if r["detector"] else ", not a detector"
    cat = f" ({r['category']})" if r["category"] else ""
    return f"{side}: unit {unit} — {label}{cat}, IoU {iou}{det}", category_color(r["category"])


def unit_pictures(spec: PictureSpec, inputs: PictureInputs, out_dir: PathLike) -> dict[str, list[int]]:
    """Write out_dir/<attack>.png for every attacked set; return {attack: the units drawn}.

    Masks are the layer's activation upsampled bilinearly (align_corners=False) to the image
    size and cut at the unit's threshold: the clean side at the clean thresholds, the attacked
    side at the attack's own thresholds (mode 'self') or the clean ones (mode 'clean'). The
    clean side's images and maps are read once for all attacks.
    """
    if spec.threshold_mode not in THRESHOLD_MODES:
        raise ConfigError(f"threshold_mode {spec.threshold_mode!r} unknown; allowed: {', '.join(THRESHOLD_MODES)}")
    if spec.k < 0 or spec.n_images < 1:
        raise ConfigError(f"unit pictures: k must be >= 0 and n_images >= 1 (got k={spec.k}, n_images={spec.n_images})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not inputs.attacked:
        return {}
    clean_units = read_units(inputs.units[inputs.clean.attack])
    attacked_units = {s.attack: read_units(inputs.units[s.attack]) for s in inputs.attacked}
    chosen = {a: pick_units(clean_units, units, spec.k, spec.units) for a, units in attacked_units.items()}
    wanted = sorted(set().union(*chosen.values()))
    clean = _side("clean", inputs.clean, wanted, set_thresholds(inputs.clean), clean_units, spec.n_images)
    for image_set in inputs.attacked:
        attack, units = image_set.attack, attacked_units[image_set.attack]
        thresholds = clean.thresholds if spec.threshold_mode == "clean" else set_thresholds(image_set)
        title = f"{attack} (thresholds: {spec.threshold_mode})"
        side = _side(title, image_set, chosen[attack], thresholds, units, spec.n_images)
        where = f"{image_set.dataset} / {image_set.model} / {image_set.layer}"
        heading = f"Top-activating images — {where}: clean vs {attack}"
        _picture(out / f"{attack}.png", heading, chosen[attack], (clean, side), spec)
    return chosen


def _side(
    title: str, image_set: ImageSet, drawn: Sequence[int], thresholds: np.ndarray, units: pd.DataFrame, n: int
) -> _Side:
    """One half of the pictures: the n top images of the `drawn` units in `image_set`."""
    found = read_top_images(image_set, drawn, n) if drawn else None
    return _Side(title, found, thresholds, units)


def _picture(png: PathLike, heading: str, chosen: Sequence[int], sides: Sequence[_Side], spec: PictureSpec) -> None:
    """One picture: a row per unit, each side's top images with the unit's mask."""
    with style_context(spec.style) as s:
        fig = new_figure(2 * spec.n_images * CELL + 0.6, max(1, len(chosen)) * (CELL + 0.55) + 0.6)
        if not chosen:
            fig.text(0.5, 0.5, "no units to show", ha="center", va="center")
        else:
            rows_fig = fig.subfigures(len(chosen), 1, squeeze=False)[:, 0]
            for unit, sub in zip(chosen, rows_fig):
                halves = sub.subfigures(1, 2, wspace=0.04)
                for half, side in zip(halves, sides):
                    _draw_side(half, side, unit, spec.n_images)
        fig.suptitle(heading)
        save_figure(fig, png, None, dpi=int(s["dpi"]))


def _draw_side(half: Any, side: _Side, unit: int, n_images: int) -> None:
    """The unit's caption and its top images, masked, in one half of its row."""
    thr = side.thresholds
    if unit - 1 >= len(thr):
        raise ConfigError(f"unit {unit} has no threshold: the thresholds file has {len(thr)} units")
    caption, color = _unit_caption(side.title, side.units, unit)
    half.suptitle(wrap(caption, int(n_images * CELL * 9)), fontsize="small")
    axes = half.subplots(1, n_images, squeeze=False)[0]
    for ax, item in zip(axes, side.found.top[unit] + [None] * n_images):
        if item is None:
            ax.axis("off")
            continue
        row, peak = item
        mask = side.found.mask(unit, row, float(thr[unit - 1]))
        _overlay(ax, side.found.images[row], mask, color)
        ax.set_title(f"row {row}, max {peak:.2f}", fontsize="x-small")
