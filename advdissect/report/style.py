"""The figures' look: colours, the seaborn style, and building and saving a figure.

Figures are built on `matplotlib.figure.Figure` objects (no pyplot state, so nothing leaks
between figures or into a user's session) and saved atomically as PNG and SVG. Every figure
colours concept categories from the one `CATEGORY_COLORS` dict, so a category looks the same
everywhere.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import matplotlib as mpl
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .. import store
from ..errors import ConfigError
from ..specs import schema_defaults
from ..store import PathLike
from .tables import CATEGORY_ORDER

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
ABLATION_COLORS = {"drifted": "#d55e00", "random": "#999999"}

# The config's `figures.style` defaults, and a font scale for direct library calls.
DEFAULT_STYLE = {**schema_defaults("figures.style"), "font_scale": 1.0}


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


def wrap(text: str, width: int) -> str:
    """`text` broken into lines of at most `width` characters (never fewer than 10)."""
    return "\n".join(textwrap.wrap(str(text), width=max(width, 10))) or str(text)


def category_legend(fig: Figure, categories: Sequence[str] = CATEGORY_ORDER) -> None:
    """A legend of the category colours below the figure."""
    handles = [Patch(facecolor=category_color(c), label=c) for c in categories]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, title="concept category")
