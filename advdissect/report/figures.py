"""Figures: detectors per concept, unit pictures, ε sweep, concept drift, training comparison.

Figures are built on `matplotlib.figure.Figure` objects (no pyplot state, so nothing leaks
between figures or into a user's session) and saved atomically as PNG and SVG. Every figure
colours concept categories from the one `CATEGORY_COLORS` dict, so a category looks the same
everywhere.
"""

from __future__ import annotations

import contextlib
import logging
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .. import store
from ..dissect.ablation import ABLATION_COLUMNS
from ..dissect.drift import DRIFT_STATUSES
from ..dissect.masks import upsample
from ..dissect.tally import read_units
from ..errors import ArtifactError, ConfigError
from ..store import PathLike
from . import dissections, tables
from .dissections import THRESHOLD_MODES
from .tables import CATEGORY_ORDER, TRAINING_METHODS

log = logging.getLogger(__name__)

# seaborn "colorblind" colours, fixed per category (never cycled by position).
CATEGORY_COLORS = {
    "color": "#CC78BC",
    "texture": "#CA9161",
    "material": "#029E73",
    "scene": "#D55E00",
    "part": "#DE8F05",
    "object": "#0173B2",
}
NO_CATEGORY_COLOR = "#7F7F7F"
STATUS_COLORS = {
    "kept": "#029E73",
    "changed": "#DE8F05",
    "lost": "#D55E00",
    "gained": "#0173B2",
    "none": "#D9D9D9",
}
METHOD_COLORS = {
    "fgsm": "#0173B2",
    "bim": "#DE8F05",
    "pgd": "#029E73",
    "noise": "#7F7F7F",
    "apgd": "#CC78BC",
    "deepfool": "#CA9161",
    "cw": "#FBAFE4",
    "clean": "#000000",
}
MODE_LINESTYLES = {"self": "-", "clean": "--"}

DEFAULT_STYLE = {"style": "whitegrid", "context": "paper", "font_scale": 1.0, "dpi": 150}


def category_color(category: str) -> str:
    return CATEGORY_COLORS.get(category, NO_CATEGORY_COLOR)


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    """Known attack families keep fixed colours; others take free colours in sorted order."""
    spare = [mpl.colors.to_hex(c) for c in sns.color_palette("colorblind", 10)]
    spare = [c for c in spare if c.upper() not in {v.upper() for v in METHOD_COLORS.values()}]
    out, i = {}, 0
    for m in sorted(methods):
        if m in METHOD_COLORS:
            out[m] = METHOD_COLORS[m]
        else:
            out[m] = spare[i % len(spare)]
            i += 1
    return out


# --------------------------------------------------------------------------- style and saving


def resolve_style(style: Mapping[str, Any] | None) -> dict[str, Any]:
    style = dict(style or {})
    unknown = sorted(set(style) - set(DEFAULT_STYLE))
    if unknown:
        raise ConfigError(f"config: figures.style: unknown key(s) {unknown}; allowed: {sorted(DEFAULT_STYLE)}")
    return {**DEFAULT_STYLE, **style}


@contextlib.contextmanager
def style_context(style: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Apply a seaborn style/context for the figures built inside, then restore the rc."""
    s = resolve_style(style)
    try:
        rc = dict(sns.axes_style(s["style"]))
        rc.update(sns.plotting_context(s["context"], font_scale=float(s["font_scale"])))
    except ValueError as exc:
        raise ConfigError(f"config: figures.style: {exc}") from None
    # A fixed salt keeps SVG element ids identical between runs of the same figure.
    rc["svg.hashsalt"] = "advdissect"
    with mpl.rc_context(rc):
        yield s


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(max(width, 2.0), max(height, 1.5)), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, png: PathLike | None = None, svg: PathLike | None = None, dpi: int = 150) -> None:
    """Write the figure as PNG and/or SVG, each atomically."""
    if png is not None:
        with store.atomic_path(png) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    if svg is not None:
        with store.atomic_path(svg) as tmp:
            fig.savefig(tmp, format="svg", metadata={"Date": None})


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(str(text), width=max(width, 10))) or str(text)


def _category_legend(fig: Figure, categories: Sequence[str] = CATEGORY_ORDER) -> None:
    handles = [Patch(facecolor=category_color(c), label=c) for c in categories]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, title="concept category")


# --------------------------------------------------------------------------- detector figure


def detector_counts(entries: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Detector units per concept for every (attack, mode) of the entries (clean in both modes)."""
    entries = dissections.with_clean_in_both_modes(dissections.check_entries(entries))
    rows = []
    cache: dict[str, pd.DataFrame] = {}
    for e in entries:
        if e["path"] not in cache:
            cache[e["path"]] = read_units(e["path"])
        units = cache[e["path"]]
        det = units.loc[units["detector"]]
        for (label, category), group in det.groupby(["label", "category"], sort=False):
            rows.append(
                {
                    **dissections.entry_key(e),
                    "clean": dissections.is_clean_entry(e),
                    "label": label,
                    "category": category,
                    "detectors": int(len(group)),
                    "units": int(len(units)),
                }
            )
    cols = ["dataset", "model", "layer", "attack", "threshold_mode", "clean", "label", "category", "detectors", "units"]
    return pd.DataFrame(rows, columns=cols)


def _concept_order(counts: pd.DataFrame, top_n: int | None) -> tuple[list[tuple[str, str]], int]:
    """Concepts grouped by category (Table-2 order), most detectors first within a category."""
    if counts.empty:
        return [], 0
    totals = counts.groupby(["label", "category"], sort=False)["detectors"].sum().reset_index()
    n_all = len(totals)
    if top_n is not None and n_all > top_n:
        totals = totals.sort_values(["detectors", "label"], ascending=[False, True]).head(top_n)
    rank = {c: i for i, c in enumerate(CATEGORY_ORDER)}
    totals = totals.assign(_cat=totals["category"].map(lambda c: rank.get(c, len(rank))))
    totals = totals.sort_values(["_cat", "detectors", "label"], ascending=[True, False, True])
    return list(zip(totals["label"], totals["category"])), n_all


def detector_figure(
    entries: Sequence[Mapping[str, Any]],
    png: PathLike,
    svg: PathLike,
    style: Mapping[str, Any] | None = None,
    top_n: int | None = 40,
    title: str | None = None,
) -> pd.DataFrame:
    """The study's Fig. 5-7 for one dataset/model/layer: detector units per concept.

    One row of panels per image set (clean first, then each attack), one column per threshold
    mode; the x axis (concepts, grouped by category) is shared so bars line up. Only the
    `top_n` concepts with most detectors over all panels are drawn (said in the title).
    Returns the counts drawn.
    """
    counts = detector_counts(entries)
    keys = {(e["dataset"], e["model"], e["layer"]) for e in entries}
    if len(keys) != 1:
        raise ConfigError(f"a detector figure shows one dataset/model/layer; entries cover {sorted(keys)}")
    dataset, model, layer = next(iter(keys))
    concepts, n_all = _concept_order(counts, top_n)
    clean_attacks = [e["attack"] for e in entries if dissections.is_clean_entry(e)]
    attacks = list(dict.fromkeys(clean_attacks + [e["attack"] for e in entries]))
    modes = [m for m in THRESHOLD_MODES if any(e["mode"] == m for e in entries)]
    dissected = {(e["attack"], e["mode"]) for e in dissections.with_clean_in_both_modes(entries)}
    index = {c: i for i, c in enumerate(concepts)}

    with style_context(style) as s:
        width = max(7.0, 0.24 * len(concepts) * len(modes) + 2.5)
        height = 1.6 * len(attacks) + 2.6
        fig = new_figure(width, height)
        axes = fig.subplots(len(attacks), len(modes), sharex=True, sharey=True, squeeze=False)
        ymax = max(1, int(counts["detectors"].max()) if len(counts) else 1)
        for i, attack in enumerate(attacks):
            for j, mode in enumerate(modes):
                ax = axes[i][j]
                sel = counts.loc[(counts["attack"] == attack) & (counts["threshold_mode"] == mode)]
                heights = np.zeros(len(concepts))
                for label, cat, n in zip(sel["label"], sel["category"], sel["detectors"]):
                    if (label, cat) in index:
                        heights[index[(label, cat)]] = n
                colors = [category_color(cat) for _, cat in concepts]
                if concepts:
                    ax.bar(np.arange(len(concepts)), heights, color=colors, width=0.8)
                ran = (attack, mode) in dissected
                total = int(sel["detectors"].sum())
                kind = "clean" if attack in clean_attacks else "attack"
                ax.set_title(f"{attack} ({kind}), thresholds: {mode} — {total} detectors", fontsize="small", loc="left")
                if not ran:
                    ax.text(
                        0.5,
                        0.5,
                        "not dissected with this threshold mode",
                        transform=ax.transAxes,
                        ha="center",
                        va="center",
                        color="0.4",
                    )
                elif not concepts or total == 0:
                    ax.text(0.5, 0.5, "no detectors", transform=ax.transAxes, ha="center", va="center", color="0.4")
                ax.set_ylim(0, ymax * 1.1)
                ax.yaxis.get_major_locator().set_params(integer=True)
                if j == 0:
                    ax.set_ylabel("detector units")
                ax.grid(axis="x", visible=False)
        for ax in axes[-1]:
            ax.set_xticks(np.arange(len(concepts)))
            ax.set_xticklabels([_wrap(c, 18) for c, _ in concepts], rotation=90, fontsize="small")
            for tick, (_, cat) in zip(ax.get_xticklabels(), concepts):
                tick.set_color(category_color(cat))
            if concepts:
                ax.set_xlim(-0.6, len(concepts) - 0.4)
            ax.set_xlabel("concept (grouped by category)")
        head = title or f"Detector units per concept — {dataset} / {model} / {layer}"
        if top_n is not None and n_all > top_n:
            head += f"\n(top {len(concepts)} of {n_all} concepts by total detectors)"
        fig.suptitle(head)
        _category_legend(fig)
        save_figure(fig, png, svg, dpi=int(s["dpi"]))
    return counts


# --------------------------------------------------------------------------- unit pictures


def unit_mask(activation: np.ndarray, threshold: float, size: tuple[int, int]) -> np.ndarray:
    """The unit's binary mask at image size: the mask the IoU counts used (masks.upsample > threshold)."""
    # float64: against a Python float, NumPy would compare the float32 values in float32.
    return upsample(activation, size) > np.float64(threshold)


class _ShardSet:
    """Look up per-image rows across a list of HDF5 shards without loading whole shards."""

    def __init__(self, paths: Sequence[PathLike], kind: str, expect: Mapping[str, Any], dataset: str):
        self.paths = [str(p) for p in paths]
        self.kind, self.expect, self.dataset = kind, dict(expect), dataset
        self.where: dict[int, tuple[str, int]] = {}
        for p in self.paths:
            with store.open_h5(p, kind, self.expect) as f:
                if "rows" not in f or dataset not in f:
                    raise ArtifactError(f"{p}: a '{kind}' shard needs datasets 'rows' and '{dataset}'")
                for pos, row in enumerate(f["rows"][:]):
                    self.where[int(row)] = (p, pos)

    def get(self, row: int, *index: Any) -> np.ndarray:
        if row not in self.where:
            raise ArtifactError(f"image row {row} is in none of the '{self.kind}' shards given")
        path, pos = self.where[row]
        with store.open_h5(path, self.kind, self.expect) as f:
            return np.asarray(f[self.dataset][(pos,) + index])


TOP_CHUNK = 256  # images read at once when looking for each unit's top images


def top_activating(
    activation_paths: Sequence[PathLike], units: Sequence[int], n: int, expect: Mapping[str, Any]
) -> dict[int, list[tuple[int, float]]]:
    """For each unit (1-based): the n image rows with the largest max activation, best first."""
    channels = sorted({u - 1 for u in units})
    rows_all, maxima = [], []
    for p in activation_paths:
        with store.open_layer(p, expect) as (f, acts):
            if acts.ndim != 4:
                raise ArtifactError(f"{p}: activations must be (N, C, h, w), found shape {acts.shape}")
            if channels and channels[-1] >= acts.shape[1]:
                raise ConfigError(f"unit {channels[-1] + 1} does not exist: {p} has {acts.shape[1]} units")
            rows_all.append(np.asarray(f["rows"][:], dtype=np.int64))
            # A few images at a time, each image's maximum per unit kept (exact in float32).
            shard_max = np.zeros((acts.shape[0], len(channels)), np.float32)
            for lo in range(0, acts.shape[0] if channels else 0, TOP_CHUNK):
                block = np.asarray(acts[lo : lo + TOP_CHUNK], dtype=np.float32)[:, channels]
                shard_max[lo : lo + TOP_CHUNK] = block.max(axis=(2, 3))
            maxima.append(shard_max)
    rows = np.concatenate(rows_all) if rows_all else np.zeros(0, np.int64)
    peak = np.concatenate(maxima) if maxima else np.zeros((0, len(channels)))
    out = {}
    for k, ch in enumerate(channels):
        # Stable order: ties go to the smaller row number.
        order = np.lexsort((rows, -peak[:, k]))[:n]
        out[ch + 1] = [(int(rows[i]), float(peak[i, k])) for i in order]
    return out


def read_thresholds(path: PathLike, expect: Mapping[str, Any]) -> np.ndarray:
    with store.open_h5(path, "thresholds", expect) as f:
        return np.asarray(f["thresholds"][:], dtype=np.float64)


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


def unit_pictures(
    *,
    clean_images: Sequence[PathLike],
    adv_images: Sequence[PathLike],
    clean_activations: Sequence[PathLike],
    adv_activations: Sequence[PathLike],
    clean_thresholds: PathLike,
    adv_thresholds: PathLike,
    clean_units: PathLike,
    adv_units: PathLike,
    png: PathLike,
    dataset: str,
    model: str,
    layer: str,
    attack: str,
    clean_attack: str,
    threshold_mode: str = "self",
    units: Sequence[int] = (),
    k: int = 4,
    n_images: int = 4,
    style: Mapping[str, Any] | None = None,
) -> list[int]:
    """The study's Fig. 8: per unit, top-activating images with the unit's mask, clean | attack.

    Masks are the layer's activation upsampled bilinearly (align_corners=False) to the image
    size and cut at the unit's threshold: the clean side at the clean thresholds, the attacked
    side at the attack's own thresholds (mode 'self') or the clean ones (mode 'clean').
    Returns the units drawn.
    """
    if threshold_mode not in THRESHOLD_MODES:
        raise ConfigError(f"threshold_mode {threshold_mode!r} unknown; allowed: {', '.join(THRESHOLD_MODES)}")
    if k < 0 or n_images < 1:
        raise ConfigError(f"unit pictures: k must be >= 0 and n_images >= 1 (got k={k}, n_images={n_images})")
    clean_id = {"dataset": dataset, "model": model, "attack": clean_attack}
    adv_id = {"dataset": dataset, "model": model, "attack": attack}
    cu, au = read_units(clean_units), read_units(adv_units)
    chosen = pick_units(cu, au, k, units)
    t_clean = read_thresholds(clean_thresholds, clean_id)
    t_adv = t_clean if threshold_mode == "clean" else read_thresholds(adv_thresholds, adv_id)
    sides = [
        ("clean", clean_images, clean_activations, clean_id, t_clean, cu),
        (f"{attack} (thresholds: {threshold_mode})", adv_images, adv_activations, adv_id, t_adv, au),
    ]
    with style_context(style) as s:
        cell = 1.7
        fig = new_figure(2 * n_images * cell + 0.6, max(1, len(chosen)) * (cell + 0.55) + 0.6)
        if not chosen:
            fig.text(0.5, 0.5, "no units to show", ha="center", va="center")
        else:
            rows_fig = fig.subfigures(len(chosen), 1, squeeze=False)[:, 0]
            prepared = []
            for side, img_paths, act_paths, ident, thr, udf in sides:
                imgs = _ShardSet(img_paths, "images", ident, "images")
                acts = _ShardSet(act_paths, "activations", ident, store.layer_key(layer))
                top = top_activating(act_paths, chosen, n_images, dict(ident, layer=layer))
                prepared.append((side, imgs, acts, top, thr, udf))
            for unit, sub in zip(chosen, rows_fig):
                halves = sub.subfigures(1, 2, wspace=0.04)
                for half, (side, imgs, acts, top, thr, udf) in zip(halves, prepared):
                    if unit - 1 >= len(thr):
                        raise ConfigError(f"unit {unit} has no threshold: the thresholds file has {len(thr)} units")
                    caption, color = _unit_caption(side, udf, unit)
                    half.suptitle(_wrap(caption, int(n_images * cell * 9)), fontsize="small")
                    axes = half.subplots(1, n_images, squeeze=False)[0]
                    for ax, item in zip(axes, top[unit] + [None] * n_images):
                        if item is None:
                            ax.axis("off")
                            continue
                        row, peak = item
                        image = imgs.get(row)
                        amap = acts.get(row, unit - 1)
                        mask = unit_mask(amap, float(thr[unit - 1]), image.shape[-2:])
                        _overlay(ax, image, mask, color)
                        ax.set_title(f"row {row}, max {peak:.2f}", fontsize="x-small")
        fig.suptitle(f"Top-activating images — {dataset} / {model} / {layer}: clean vs {attack}")
        save_figure(fig, png, None, dpi=int(s["dpi"]))
    return chosen


# --------------------------------------------------------------------------- ε sweep


def eps_sweep_data(
    table2_df: pd.DataFrame, attacks_df: pd.DataFrame, dataset: str, model: str, layer: str
) -> pd.DataFrame:
    """Rows per (family, attack, mode): eps, all-category detector ratio, agreement, accuracy.

    The clean set is ε = 0 of every attack family. Attacks without an ε (DeepFool, C&W: eps is
    empty in the attacks table) are left out.
    """
    t2 = table2_df.loc[
        (table2_df["dataset"] == dataset)
        & (table2_df["model"] == model)
        & (table2_df["layer"] == layer)
        & (table2_df["category"] == "all")
    ]
    at = attacks_df.loc[(attacks_df["dataset"] == dataset) & (attacks_df["model"] == model)]
    if t2.empty:
        raise ArtifactError(f"table2 has no rows for dataset={dataset} model={model} layer={layer}")
    missing = sorted(set(t2["attack"]) - set(at["attack"]))
    if missing:
        raise ArtifactError(f"attacks table has no row for attack(s) {missing} of {dataset}/{model}")
    merged = t2.merge(
        at[["attack", "method", "eps", "agreement", "clean_accuracy", "adversarial_accuracy"]], on="attack"
    )
    merged = merged.loc[(merged["method"] == "clean") | pd.to_numeric(merged["eps"], errors="coerce").notna()]
    families = sorted(set(merged["method"]) - {"clean"})
    parts = []
    clean = merged.loc[merged["method"] == "clean"]
    for fam in families:
        parts.append(merged.loc[merged["method"] == fam].assign(family=fam))
        parts.append(clean.assign(family=fam, eps=0.0))
    if not families:
        parts.append(clean.assign(family="clean", eps=0.0))
    out = pd.concat(parts, ignore_index=True)
    out["eps_255"] = out["eps"].astype(float) * 255.0
    return out.sort_values(["family", "threshold_mode", "eps", "attack"]).reset_index(drop=True)


def eps_sweep_figure(
    table2_df: pd.DataFrame,
    attacks_df: pd.DataFrame,
    dataset: str,
    model: str,
    layer: str,
    png: PathLike,
    svg: PathLike,
    style: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Detector ratio (both modes) and agreement/accuracy against ε, one line per attack family."""
    data = eps_sweep_data(table2_df, attacks_df, dataset, model, layer)
    colors = method_colors(list(data["family"].unique()))
    with style_context(style) as s:
        fig = new_figure(10.0, 4.2)
        ax_ratio, ax_agree = fig.subplots(1, 2)
        for fam, fam_df in data.groupby("family", sort=True):
            c = colors[fam]
            for mode, mdf in fam_df.groupby("threshold_mode"):
                mean = mdf.groupby("eps_255")["ratio_percent"].mean()
                ax_ratio.plot(mean.index, mean.values, MODE_LINESTYLES.get(mode, ":"), color=c, marker="o")
                ax_ratio.scatter(mdf["eps_255"], mdf["ratio_percent"], color=c, s=12, zorder=3)
                ci = mdf.dropna(subset=["ci_low_percent", "ci_high_percent"]) if "ci_low_percent" in mdf else mdf[:0]
                if len(ci):
                    ax_ratio.vlines(ci["eps_255"], ci["ci_low_percent"], ci["ci_high_percent"], color=c, lw=1.2)
            one = fam_df.drop_duplicates("attack")
            agree = one.groupby("eps_255")["agreement"].mean() * 100
            ax_agree.plot(agree.index, agree.values, "-", color=c, marker="o")
            acc = one.groupby("eps_255")["adversarial_accuracy"].mean() * 100
            if acc.notna().any():
                ax_agree.plot(acc.index, acc.values, ":", color=c, marker="s")
        ax_ratio.set_xlabel("ε (× 1/255)")
        ax_ratio.set_ylabel("detector units, all categories (% of units)")
        has_ci = "ci_low_percent" in data and data["ci_low_percent"].notna().any()
        ax_ratio.set_title("Interpretable units" + (" (bars: bootstrap interval)" if has_ci else ""), loc="left")
        ax_agree.set_xlabel("ε (× 1/255)")
        ax_agree.set_ylabel("%")
        ax_agree.set_ylim(-2, 102)
        ax_agree.set_title("Prediction agreement with clean / accuracy", loc="left")
        ticks = sorted(set(np.round(data["eps_255"].astype(float), 6)))
        for ax in (ax_ratio, ax_agree):
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax_ratio.legend(
            handles=[
                Line2D([], [], color="0.3", ls=MODE_LINESTYLES[m], label=f"thresholds: {m}") for m in THRESHOLD_MODES
            ],
            frameon=False,
            fontsize="small",
        )
        ax_agree.legend(
            handles=[
                Line2D([], [], color="0.3", ls="-", marker="o", label="agreement with clean"),
                Line2D([], [], color="0.3", ls=":", marker="s", label="accuracy"),
            ],
            frameon=False,
            fontsize="small",
        )
        handles = [Line2D([], [], color=colors[f], marker="o", label=f) for f in sorted(colors)]
        fig.legend(handles=handles, loc="outside right center", frameon=False, title="attack family")
        fig.suptitle(f"ε sweep — {dataset} / {model} / {layer} (ε = 0: clean images)")
        save_figure(fig, png, svg, dpi=int(s["dpi"]))
    return data


# --------------------------------------------------------------------------- IoU-cut sweep


def iou_sweep_figure(
    sweep: pd.DataFrame,
    png: PathLike,
    svg: PathLike,
    iou_threshold: float,
    style: Mapping[str, Any] | None = None,
) -> None:
    """Detector share (any category) against the IoU cut, a line per attack, a panel per threshold mode."""
    if sweep.empty:
        raise ArtifactError("no IoU-sweep rows to draw")
    modes = [m for m in THRESHOLD_MODES if m in set(sweep["threshold_mode"])]
    attacks = list(dict.fromkeys(sweep["attack"]))
    palette = dict(zip(attacks, [mpl.colors.to_hex(c) for c in sns.color_palette("colorblind", len(attacks))]))
    dataset, model, layer = (str(sweep[c].iloc[0]) for c in ("dataset", "model", "layer"))
    with style_context(style) as s:
        fig = new_figure(4.2 * len(modes) + 1.6, 3.8)
        axes = np.atleast_1d(fig.subplots(1, len(modes), sharey=True))
        for ax, mode in zip(axes, modes):
            for attack, frame in sweep.loc[sweep["threshold_mode"] == mode].groupby("attack", sort=False):
                ax.plot(frame["cut"], frame["ratio_percent"], "-", color=palette[attack], marker=".", label=attack)
            ax.axvline(float(iou_threshold), color="0.5", ls=":", lw=1)
            ax.set_xlabel("IoU cut")
            ax.set_title(f"thresholds: {mode}", loc="left")
        axes[0].set_ylabel("detector units, all categories (% of units)")
        handles = [Line2D([], [], color=palette[a], marker=".", label=a) for a in attacks]
        handles.append(Line2D([], [], color="0.5", ls=":", label=f"cut in use ({float(iou_threshold):g})"))
        fig.legend(handles=handles, loc="outside right center", frameon=False, title="image set")
        fig.suptitle(f"IoU-cut sweep — {dataset} / {model} / {layer}")
        save_figure(fig, png, svg, dpi=int(s["dpi"]))


def write_iou_sweep(
    entries: Sequence[Mapping[str, Any]],
    csv: PathLike,
    png: PathLike,
    svg: PathLike,
    iou_threshold: float,
    style: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    sweep = tables.iou_sweep(entries)
    store.write_csv(csv, sweep)
    iou_sweep_figure(sweep, png, svg, iou_threshold, style)
    return sweep


# --------------------------------------------------------------------------- ablation


ABLATION_COLORS = {"drifted": "#d55e00", "random": "#999999"}


def ablation_figure(table: pd.DataFrame, png: PathLike, svg: PathLike, style: Mapping[str, Any] | None = None) -> None:
    """Restored share of flipped predictions: drifted units against random sets (mean, min-max), a panel per mode."""
    if table.empty:
        raise ArtifactError("no ablation rows to draw")
    modes = [m for m in THRESHOLD_MODES if m in set(table["threshold_mode"])]
    groups = list(dict.fromkeys(zip(table["dataset"], table["model"], table["layer"], table["attack"])))
    multi = len({g[0] for g in groups}) > 1
    names = [f"{'/'.join(g[:1]) + '/' if multi else ''}{g[1]} {g[2]}\n{g[3]}" for g in groups]
    with style_context(style) as s:
        fig = new_figure(max(5.0, 0.55 * len(groups) * len(modes) + 2.0), 4.4)
        axes = np.atleast_1d(fig.subplots(1, len(modes), sharey=True))
        x = np.arange(len(groups))
        for ax, mode in zip(axes, modes):
            sel = table.loc[table["threshold_mode"] == mode]
            for offset, units_set in ((-0.2, "drifted"), (0.2, "random")):
                part = sel.loc[sel["units_set"] == units_set]
                by = part.groupby(["dataset", "model", "layer", "attack"], sort=False)["restored_percent"]
                mean, low, high = by.mean(), by.min(), by.max()
                keys = [g for g in groups if g in mean.index]
                pos = x[[groups.index(g) for g in keys]] + offset
                ax.bar(pos, [mean[g] for g in keys], width=0.4, color=ABLATION_COLORS[units_set], label=units_set)
                if units_set == "random":
                    ax.vlines(pos, [low[g] for g in keys], [high[g] for g in keys], color="0.2", lw=1.2)
            ax.set_xticks(x)
            ax.set_xticklabels(names, rotation=90, fontsize="x-small")
            ax.set_title(f"units from thresholds: {mode}", loc="left")
        axes[0].set_ylabel("flipped predictions restored (%)")
        handles = [Patch(facecolor=ABLATION_COLORS[k], label=f"{k} units") for k in ABLATION_COLORS]
        fig.legend(handles=handles, loc="outside right center", frameon=False)
        fig.suptitle("Mean ablation on attacked images: drifted units vs random units of the same number")
        save_figure(fig, png, svg, dpi=int(s["dpi"]))


def write_ablation_summary(
    paths: Sequence[PathLike], csv: PathLike, png: PathLike, svg: PathLike, style: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    if not paths:
        raise ArtifactError("no ablation tables given")
    table = pd.concat([tables.read_summary_csv(p) for p in paths], ignore_index=True)
    missing = [c for c in ABLATION_COLUMNS if c not in table.columns]
    if missing:
        raise ArtifactError(f"ablation tables lack column(s) {missing}")
    table = table[ABLATION_COLUMNS].astype({"seed": "Int64"})
    store.write_csv(csv, table)
    ablation_figure(table, png, svg, style)
    return table


# --------------------------------------------------------------------------- concept drift


def drift_figure(summary: pd.DataFrame, png: PathLike, svg: PathLike, style: Mapping[str, Any] | None = None) -> None:
    """Stacked bars of unit fates (kept/changed/lost/gained) per attack, a panel per
    dataset/model/layer and threshold mode. Units that are detectors in neither are left out."""
    shown = [s for s in DRIFT_STATUSES if s != "none"]
    groups = list(dict.fromkeys(zip(summary["dataset"], summary["model"], summary["layer"])))
    modes = [m for m in THRESHOLD_MODES if m in set(summary["threshold_mode"])] or ["self"]
    n_att = max(
        [1]
        + [
            summary.loc[
                (summary["dataset"] == d) & (summary["model"] == m) & (summary["layer"] == lay), "attack"
            ].nunique()
            for d, m, lay in groups
        ]
    )
    with style_context(style) as s:
        fig = new_figure(4.8 * len(modes) + 1.5, max(1, len(groups)) * (0.32 * n_att + 1.1) + 1.0)
        if not groups:
            fig.text(0.5, 0.5, "no adversarial dissections", ha="center", va="center")
        else:
            axes = fig.subplots(len(groups), len(modes), squeeze=False, sharex=True)
            for i, (d, m, lay) in enumerate(groups):
                for j, mode in enumerate(modes):
                    ax = axes[i][j]
                    sel = summary.loc[
                        (summary["dataset"] == d)
                        & (summary["model"] == m)
                        & (summary["layer"] == lay)
                        & (summary["threshold_mode"] == mode)
                    ]
                    y = np.arange(len(sel))
                    left = np.zeros(len(sel))
                    for status in shown:
                        vals = sel[status].to_numpy(dtype=float)
                        ax.barh(y, vals, left=left, color=STATUS_COLORS[status], label=status, height=0.7)
                        left += vals
                    ax.set_yticks(y)
                    ax.set_yticklabels([_wrap(a, 22) for a in sel["attack"]], fontsize="small")
                    ax.invert_yaxis()
                    ax.set_title(_wrap(f"{d} / {m} / {lay} — thresholds: {mode}", 60), fontsize="small", loc="left")
                    if sel.empty:
                        ax.text(0.5, 0.5, "not dissected", transform=ax.transAxes, ha="center", va="center")
                    ax.grid(axis="y", visible=False)
            for ax in axes[-1]:
                ax.set_xlabel("units (detector in clean and/or attacked dissection)")
        handles = [Patch(facecolor=STATUS_COLORS[st], label=st) for st in shown]
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
        fig.suptitle("Concept drift: what happens to each unit's concept under attack")
        save_figure(fig, png, svg, dpi=int(s["dpi"]))


def write_concept_drift(
    entries: Sequence[Mapping[str, Any]],
    units_csv: PathLike,
    summary_csv: PathLike,
    png: PathLike | None = None,
    svg: PathLike | None = None,
    style: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    units, summary = tables.concept_drift_tables(entries)
    store.write_csv(units_csv, units)
    store.write_csv(summary_csv, summary)
    if png is not None or svg is not None:
        drift_figure(summary, png, svg, style)
    return summary


# --------------------------------------------------------------------------- training


def _method_order(methods: Sequence[str]) -> list[str]:
    known = [m for m in TRAINING_METHODS if m in set(methods)]
    return known + sorted(set(methods) - set(known))


def training_figure(
    training_df: pd.DataFrame, png: PathLike, svg: PathLike, style: Mapping[str, Any] | None = None
) -> None:
    """Per architecture: accuracy (clean and under each attack) and detector ratio per method."""
    archs = list(dict.fromkeys(training_df["arch"])) or [""]
    attacks = list(dict.fromkeys(training_df["attack"]))
    conditions = ["clean"] + attacks
    palette = dict(
        zip(
            conditions,
            ["#000000"] + [mpl.colors.to_hex(c) for c in sns.color_palette("colorblind", max(1, len(attacks)))],
        )
    )
    with style_context(style) as s:
        n_methods = max(1, training_df["method"].nunique())
        width = max(9.0, 2 * (0.45 * n_methods * len(conditions) + 1.5))
        fig = new_figure(width, 3.4 * len(archs) + 1.0)
        axes = fig.subplots(len(archs), 2, squeeze=False)
        for i, arch in enumerate(archs):
            sub = training_df.loc[training_df["arch"] == arch]
            order = _method_order(list(sub["method"]))
            acc = _long(sub, "clean_accuracy", "adversarial_accuracy", 100.0)
            ratio = _long(sub, "clean_detector_ratio", "adversarial_detector_ratio", 1.0)
            for ax, data, ylabel in (
                (axes[i][0], acc, "accuracy (%)"),
                (axes[i][1], ratio, "detector units, all categories (%)"),
            ):
                if data["value"].notna().any():
                    sns.barplot(
                        data=data,
                        x="method",
                        y="value",
                        hue="condition",
                        order=order,
                        hue_order=conditions,
                        palette=palette,
                        ax=ax,
                        errorbar=None,
                        legend=False,
                        saturation=1.0,
                    )
                else:
                    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
                ax.set_ylabel(ylabel)
                ax.set_xlabel("training method")
                ax.set_title(f"{arch}", loc="left")
            axes[i][0].set_ylim(0, 100)
        handles = [Patch(facecolor=palette[c], label=c) for c in conditions]
        fig.legend(
            handles=handles, loc="outside lower center", ncols=min(len(handles), 6), frameon=False, title="images"
        )
        fig.suptitle("Training methods: accuracy and interpretable units, clean vs attacked")
        save_figure(fig, png, svg, dpi=int(s["dpi"]))


def _long(frame: pd.DataFrame, clean_col: str, adv_col: str, scale: float) -> pd.DataFrame:
    rows = []
    for (model, method), g in frame.groupby(["model", "method"], sort=False):
        rows.append(
            {"model": model, "method": method, "condition": "clean", "value": float(g[clean_col].iloc[0]) * scale}
        )
        for _, r in g.iterrows():
            rows.append(
                {"model": model, "method": method, "condition": r["attack"], "value": float(r[adv_col]) * scale}
            )
    return pd.DataFrame(rows, columns=["model", "method", "condition", "value"])


LOSS_ORDER = ("loss", "ce_clean", "ce_adv", "coral", "mmd", "consistency")
ACCURACY_ORDER = ("train_accuracy", "val_accuracy")


def learning_curves_figure(
    histories: Mapping[str, pd.DataFrame], png: PathLike, svg: PathLike, style: Mapping[str, Any] | None = None
) -> None:
    """Loss terms and accuracies per epoch, a panel per quantity, one line per model."""
    columns: list[str] = []
    for h in histories.values():
        columns += [c for c in h.columns if c not in ("epoch", "seconds") and pd.api.types.is_numeric_dtype(h[c])]
    present = list(dict.fromkeys(columns))
    ordered = [c for c in LOSS_ORDER if c in present]
    ordered += [c for c in present if c not in LOSS_ORDER and c not in ACCURACY_ORDER]
    ordered += [c for c in ACCURACY_ORDER if c in present]
    names = list(histories)
    colors = dict(zip(names, [mpl.colors.to_hex(c) for c in sns.color_palette("colorblind", max(1, len(names)))]))
    # Distinct markers keep overlapping curves of different models apart.
    markers = {n: "osD^vP*X"[i % 8] for i, n in enumerate(names)}
    ncols = min(4, max(1, len(ordered)))
    nrows = max(1, -(-len(ordered) // ncols))
    with style_context(style) as s:
        fig = new_figure(3.3 * ncols + 1.8, 2.7 * nrows + 0.9)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        if not ordered:
            axes[0].text(0.5, 0.5, "no history", transform=axes[0].transAxes, ha="center", va="center")
        for ax, col in zip(axes, ordered):
            for name, h in histories.items():
                if col in h and h[col].notna().any():
                    ax.plot(h["epoch"], h[col], marker=markers[name], ms=4, color=colors[name], label=name)
            ax.set_title(col.replace("_", " "), loc="left")
            ax.set_xlabel("epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
            if col.endswith("accuracy"):
                ax.set_ylim(-0.02, 1.02)
        for ax in axes[max(1, len(ordered)) :]:
            ax.axis("off")
        handles = [Line2D([], [], color=colors[n], marker=markers[n], label=n) for n in names]
        if handles:
            fig.legend(handles=handles, loc="outside right center", frameon=False, title="model")
        fig.suptitle("Learning curves")
        save_figure(fig, png, svg, dpi=int(s["dpi"]))


def write_training_summary(
    *,
    models_csv: PathLike,
    attacks_csv: PathLike,
    table2_csv: PathLike,
    training_models: Mapping[str, Mapping[str, Any]],
    histories: Sequence[PathLike],
    table: PathLike,
    png: PathLike,
    svg: PathLike,
    curves_png: PathLike,
    curves_svg: PathLike,
    style: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """training.csv, the method comparison figure and the learning curves.

    `histories` are the history.csv files in the order of `training_models`.
    """
    names = list(training_models)
    if len(histories) != len(names):
        raise ConfigError(
            f"{len(histories)} history files for {len(names)} training models: input.histories must "
            "follow the order of params.training_models"
        )
    models_df = tables.read_summary_csv(models_csv)
    attacks_df = tables.read_summary_csv(attacks_csv)
    table2_df = tables.read_summary_csv(table2_csv)
    frame = tables.training_table(models_df, attacks_df, table2_df, training_models)
    store.write_csv(table, frame)
    training_figure(frame, png, svg, style)
    learning_curves_figure({n: tables.read_history(p) for n, p in zip(names, histories)}, curves_png, curves_svg, style)
    return frame


def write_eps_sweeps(
    table2_csv: PathLike,
    attacks_csv: PathLike,
    layers: Sequence[tuple[str, str, str]],
    pngs: Sequence[PathLike],
    svgs: Sequence[PathLike],
    style: Mapping[str, Any] | None = None,
) -> list[pd.DataFrame]:
    """The ε sweep of every (dataset, model, layer) in `layers`, the tables read once."""
    if not len(layers) == len(pngs) == len(svgs):
        raise ValueError(f"{len(layers)} layers need as many figures, got {len(pngs)} png and {len(svgs)} svg")
    table2_df = tables.read_summary_csv(table2_csv)
    attacks_df = tables.read_summary_csv(attacks_csv)
    return [
        eps_sweep_figure(table2_df, attacks_df, str(d), str(m), str(layer), png, svg, style)
        for (d, m, layer), png, svg in zip(layers, pngs, svgs)
    ]
