"""The ε sweep: per layer, detector ratio and prediction agreement against the attack strength ε,
one line per attack family, from the Table 2 and attacks tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from ..errors import ArtifactError
from ..store import PathLike
from . import tables
from .dissections import THRESHOLD_MODES
from .style import MODE_LINESTYLES, method_colors, new_figure, save_figure, style_context


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
            _plot_family(ax_ratio, ax_agree, fam_df, colors[fam])
        _label_axes(ax_ratio, ax_agree, data)
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


def _plot_family(ax_ratio: Any, ax_agree: Any, fam_df: pd.DataFrame, c: str) -> None:
    """One attack family's lines: detector ratio per threshold mode, agreement and accuracy."""
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


def _label_axes(ax_ratio: Any, ax_agree: Any, data: pd.DataFrame) -> None:
    """Axis labels and titles of the two panels."""
    ax_ratio.set_xlabel("ε (× 1/255)")
    ax_ratio.set_ylabel("detector units, all categories (% of units)")
    has_ci = "ci_low_percent" in data and data["ci_low_percent"].notna().any()
    ax_ratio.set_title("Interpretable units" + (" (bars: bootstrap interval)" if has_ci else ""), loc="left")
    ax_agree.set_xlabel("ε (× 1/255)")
    ax_agree.set_ylabel("%")
    ax_agree.set_ylim(-2, 102)
    ax_agree.set_title("Prediction agreement with clean / accuracy", loc="left")


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
