"""Figures of the summary tables: detectors per concept, the IoU-cut sweep, ablation and concept drift.

The figures' look (colours, style, saving) is in `style`; the unit pictures, the ε sweep and
the training figures have modules of their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .. import store
from ..dissect.ablation import ABLATION_COLUMNS
from ..dissect.drift import DRIFT_STATUSES
from ..dissect.tally import read_units
from ..errors import ArtifactError, ConfigError
from ..store import PathLike
from . import dissections, tables
from .dissections import THRESHOLD_MODES
from .style import (
    ABLATION_COLORS,
    STATUS_COLORS,
    category_color,
    category_legend,
    new_figure,
    save_figure,
    style_context,
    wrap,
)
from .tables import CATEGORY_ORDER

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

    with style_context(style) as s:
        width = max(7.0, 0.24 * len(concepts) * len(modes) + 2.5)
        height = 1.6 * len(attacks) + 2.6
        fig = new_figure(width, height)
        axes = fig.subplots(len(attacks), len(modes), sharex=True, sharey=True, squeeze=False)
        ymax = max(1, int(counts["detectors"].max()) if len(counts) else 1)
        for i, attack in enumerate(attacks):
            for j, mode in enumerate(modes):
                sel = counts.loc[(counts["attack"] == attack) & (counts["threshold_mode"] == mode)]
                total = int(sel["detectors"].sum())
                kind = "clean" if attack in clean_attacks else "attack"
                note = None
                if (attack, mode) not in dissected:
                    note = "not dissected with this threshold mode"
                elif not concepts or total == 0:
                    note = "no detectors"
                name = f"{attack} ({kind}), thresholds: {mode} — {total} detectors"
                _detector_panel(axes[i][j], sel, concepts, name, note, ymax)
                if j == 0:
                    axes[i][j].set_ylabel("detector units")
        for ax in axes[-1]:
            _concept_axis(ax, concepts)
        head = title or f"Detector units per concept — {dataset} / {model} / {layer}"
        if top_n is not None and n_all > top_n:
            head += f"\n(top {len(concepts)} of {n_all} concepts by total detectors)"
        fig.suptitle(head)
        category_legend(fig)
        save_figure(fig, png, svg, dpi=int(s["dpi"]))
    return counts


def _detector_panel(
    ax: Any, sel: pd.DataFrame, concepts: Sequence[tuple[str, str]], name: str, note: str | None, ymax: int
) -> None:
    """One panel: the detectors per concept of one image set and threshold mode, `note` across it."""
    index = {c: i for i, c in enumerate(concepts)}
    heights = np.zeros(len(concepts))
    for label, cat, n in zip(sel["label"], sel["category"], sel["detectors"]):
        if (label, cat) in index:
            heights[index[(label, cat)]] = n
    colors = [category_color(cat) for _, cat in concepts]
    if concepts:
        ax.bar(np.arange(len(concepts)), heights, color=colors, width=0.8)
    ax.set_title(name, fontsize="small", loc="left")
    if note is not None:
        ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set_ylim(0, ymax * 1.1)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.grid(axis="x", visible=False)


def _concept_axis(ax: Any, concepts: Sequence[tuple[str, str]]) -> None:
    """The shared x axis: concept names coloured by category."""
    ax.set_xticks(np.arange(len(concepts)))
    ax.set_xticklabels([wrap(c, 18) for c, _ in concepts], rotation=90, fontsize="small")
    for tick, (_, cat) in zip(ax.get_xticklabels(), concepts):
        tick.set_color(category_color(cat))
    if concepts:
        ax.set_xlim(-0.6, len(concepts) - 0.4)
    ax.set_xlabel("concept (grouped by category)")


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
                    ax.set_yticklabels([wrap(a, 22) for a in sel["attack"]], fontsize="small")
                    ax.invert_yaxis()
                    ax.set_title(wrap(f"{d} / {m} / {lay} — thresholds: {mode}", 60), fontsize="small", loc="left")
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
