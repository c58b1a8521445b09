"""Training comparison: training.csv, accuracy and detector ratio per training method, and the
learning curves of the compared models."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib as mpl
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .. import store
from ..errors import ArtifactError, ConfigError
from ..store import PathLike
from . import tables
from .style import new_figure, save_figure, style_context
from .tables import TRAINING_METHODS


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


@dataclasses.dataclass(frozen=True)
class TrainingInputs:
    """The summary tables the comparison is read from, and the compared models' history.csv
    files in the order of the training models."""

    models_csv: PathLike
    attacks_csv: PathLike
    table2_csv: PathLike
    histories: tuple[PathLike, ...]


@dataclasses.dataclass(frozen=True)
class TrainingOutputs:
    """training.csv, the method comparison figure and the learning curves."""

    table: PathLike
    png: PathLike
    svg: PathLike
    curves_png: PathLike
    curves_svg: PathLike


def write_training_summary(
    inputs: TrainingInputs,
    training_models: Mapping[str, Mapping[str, Any]],
    outputs: TrainingOutputs,
    style: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Write training.csv, the method comparison figure and the learning curves; return the table."""
    names = list(training_models)
    if len(inputs.histories) != len(names):
        raise ConfigError(
            f"{len(inputs.histories)} history files for {len(names)} training models: input.histories must "
            "follow the order of params.training_models"
        )
    models_df = tables.read_summary_csv(inputs.models_csv)
    attacks_df = tables.read_summary_csv(inputs.attacks_csv)
    table2_df = tables.read_summary_csv(inputs.table2_csv)
    frame = tables.training_table(models_df, attacks_df, table2_df, training_models)
    store.write_csv(outputs.table, frame)
    training_figure(frame, outputs.png, outputs.svg, style)
    histories = {n: read_history(p) for n, p in zip(names, inputs.histories)}
    learning_curves_figure(histories, outputs.curves_png, outputs.curves_svg, style)
    return frame


def read_history(path: PathLike) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ArtifactError(f"{path}: cannot be read as a training history CSV ({exc})") from None
    if "epoch" not in frame.columns:
        raise ArtifactError(f"{path}: training history needs an 'epoch' column")
    return frame
