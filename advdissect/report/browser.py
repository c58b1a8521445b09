"""Unit browser: one HTML page per model and layer, every unit on the clean images next to each attack.

The page holds a sortable table (click a header; `#sort=<column>` in the address sorts on load,
largest first) with each unit's best concept and IoU on the clean images and, per attack and
threshold mode, its concept, IoU and what happened to it (kept, changed, lost, gained, none),
and a picture per unit: its top-activating images with its mask, the clean set first, then
each attack. Masks are the ones the IoU counts used (top_images.unit_mask), each set at its own
thresholds. Pictures are JPEG files beside the page, loaded as they scroll into view.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .. import store
from ..dissect.drift import concept_drift
from ..dissect.tally import read_units
from ..errors import ArtifactError
from ..store import PathLike
from .top_images import ImageSet, read_top_images, set_thresholds

MASK_COLOR = np.array([230, 25, 75], np.float64)
GAP = 6  # pixels between the image sets of a picture


def thumbnail(image_chw: np.ndarray, mask: np.ndarray, size: int) -> Image.Image:
    """The image with its mask tinted and outlined, resized to size × size."""
    image = np.transpose(np.asarray(image_chw, np.float64), (1, 2, 0))
    tinted = np.where(mask[..., None], 0.55 * image + 0.45 * MASK_COLOR, image)
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    tinted[mask & ~inner] = MASK_COLOR
    picture = Image.fromarray(np.clip(np.rint(tinted), 0, 255).astype(np.uint8))
    return picture.resize((size, size), Image.Resampling.BILINEAR)


def unit_strip(thumbs: Sequence[Sequence[Image.Image | None]], size: int) -> Image.Image:
    """Thumbnails of each image set side by side, sets separated by a gap; None leaves a blank."""
    n = max((len(t) for t in thumbs), default=0)
    width = len(thumbs) * n * size + max(0, len(thumbs) - 1) * GAP
    strip = Image.new("RGB", (max(width, 1), size), "white")
    for s, row in enumerate(thumbs):
        for i, thumb in enumerate(row):
            if thumb is not None:
                strip.paste(thumb, (s * (n * size + GAP) + i * size, 0))
    return strip


def browser_table(units: Mapping[tuple[str, str], pd.DataFrame], clean_attack: str) -> pd.DataFrame:
    """One row per unit: the clean set's label, category, IoU, detector; per (attack, mode): label, IoU, status.

    units: {(attack, mode): units table}, the clean set under (clean_attack, 'self').
    """
    clean = units[(clean_attack, "self")]
    frame = pd.DataFrame(
        {
            "unit": clean["unit"].astype(int),
            "clean label": clean["label"].fillna("").astype(str),
            "clean category": clean["category"].fillna("").astype(str),
            "clean IoU": clean["iou"].astype(float),
            "clean detector": clean["detector"].astype(bool),
        }
    )
    for (attack, mode), table in units.items():
        if attack == clean_attack:
            continue
        drift = concept_drift(clean, table).set_index("unit").loc[frame["unit"]]
        frame[f"{attack} {mode} label"] = drift["adv_label"].fillna("").astype(str).to_numpy()
        frame[f"{attack} {mode} IoU"] = drift["adv_iou"].astype(float).to_numpy()
        frame[f"{attack} {mode} status"] = drift["status"].to_numpy()
    return frame


_SCRIPT = """
function sortBy(column, descending) {
  const table = document.getElementById("units");
  const heads = Array.from(table.tHead.rows[0].cells);
  const index = heads.findIndex(h => h.dataset.column === column);
  if (index < 0) return;
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const numeric = heads[index].dataset.type === "number";
  const key = r => {
    const text = r.cells[index].dataset.value ?? r.cells[index].textContent;
    return numeric ? (text === "" ? -Infinity : parseFloat(text)) : text;
  };
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    const c = numeric ? x - y : String(x).localeCompare(String(y));
    return descending ? -c : c;
  });
  rows.forEach(r => body.appendChild(r));
  heads.forEach(h => h.removeAttribute("aria-sort"));
  heads[index].setAttribute("aria-sort", descending ? "descending" : "ascending");
}
document.querySelectorAll("#units thead th").forEach(th => th.addEventListener("click", () => {
  sortBy(th.dataset.column, th.getAttribute("aria-sort") !== "descending");
}));
document.getElementById("filter").addEventListener("input", e => {
  const needle = e.target.value.toLowerCase();
  for (const r of document.getElementById("units").tBodies[0].rows) {
    r.hidden = needle !== "" && !r.textContent.toLowerCase().includes(needle);
  }
});
const wanted = decodeURIComponent(location.hash.replace(/^#sort=/, ""));
if (location.hash.startsWith("#sort=")) sortBy(wanted, true);
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 2px 6px; text-align: left; white-space: nowrap; }
th { cursor: pointer; background: #f4f4f4; position: sticky; top: 0; }
th[aria-sort="ascending"]::after { content: " ▲"; }
th[aria-sort="descending"]::after { content: " ▼"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.changed, .lost { color: #b00; } .gained { color: #070; }
"""


def page_html(frame: pd.DataFrame, title: str, set_names: Sequence[str], pictures: Mapping[int, str]) -> str:
    """The page: a filter box, the sortable table, a picture per unit (file names relative to the page)."""
    numeric = {c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]) and frame[c].dtype != bool}
    # the picture follows the clean columns, so it is in view beside what the unit detects
    split = 1 + sum(1 for c in frame.columns if c.startswith("clean "))
    head = []
    for c in frame.columns:
        kind = "number" if c in numeric else "text"
        head.append(f'<th data-column="{html.escape(c)}" data-type="{kind}">{html.escape(c)}</th>')
    head.insert(
        split, '<th data-column="picture" data-type="text">top images: ' + html.escape(" | ".join(set_names)) + "</th>"
    )
    body = []
    for _, row in frame.iterrows():
        cells = []
        for c in frame.columns:
            value = row[c]
            if c in numeric:
                text = "" if pd.isna(value) else (f"{value:.4f}" if isinstance(value, float) else str(value))
                cells.append(f'<td class="num" data-value="{text}">{text}</td>')
            else:
                text = html.escape("yes" if value is True else "" if value is False else str(value))
                cells.append(f'<td class="{text}">{text}</td>')
        unit = int(row["unit"])
        src = html.escape(pictures[unit])
        cells.insert(split, f'<td><img loading="lazy" src="{src}" alt="unit {unit}"></td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(head)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        "<p>Click a column to sort; type to filter. Pictures: each set's top-activating images with the "
        "unit's mask at that set's own thresholds.</p>\n"
        '<input id="filter" type="search" placeholder="filter (label, status, ...)">\n'
        f'<table id="units">\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body) + "\n</tbody>\n</table>\n"
        f"<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def _set_thumbnails(
    image_set: ImageSet, unit_ids: Sequence[int], n: int, size: int
) -> dict[int, list[Image.Image | None]]:
    """{unit: the thumbnails of its n top images in one image set (None where it has fewer)}."""
    found = read_top_images(image_set, unit_ids, n)
    thresholds = set_thresholds(image_set)
    out = {}
    for unit in unit_ids:
        thumbs: list[Image.Image | None] = []
        for row, _ in found.top[unit]:
            mask = found.mask(unit, row, float(thresholds[unit - 1]))
            thumbs.append(thumbnail(found.images[row], mask, size))
        out[unit] = thumbs + [None] * (n - len(thumbs))
    return out


def write_browser(
    out_dir: PathLike,
    sets: Sequence[ImageSet],
    units: Mapping[tuple[str, str], PathLike],
    clean_attack: str,
    n_images: int = 3,
    thumb: int = 64,
) -> pd.DataFrame:
    """Write out_dir/index.html and out_dir/units/<unit>.jpg for the layer of `sets`.

    sets: the layer's image sets, the clean set first. units: {(attack, mode): units csv}.
    """
    if not sets or sets[0].attack != clean_attack:
        raise ArtifactError(f"the unit browser needs the clean set '{clean_attack}' first")
    frame = browser_table({k: read_units(p) for k, p in units.items()}, clean_attack)
    unit_ids = [int(u) for u in frame["unit"]]
    # One image set at a time: only its thumbnails are kept, not its images and maps.
    per_set = [_set_thumbnails(s, unit_ids, n_images, thumb) for s in sets]
    out = Path(out_dir)
    pictures = {}
    with store.atomic_dir(out) as tmp:
        (tmp / "units").mkdir()
        for unit in unit_ids:
            name = f"units/{unit:04d}.jpg"
            unit_strip([thumbs[unit] for thumbs in per_set], thumb).save(tmp / name, format="JPEG", quality=85)
            pictures[unit] = name
        title = f"Unit browser — {sets[0].dataset} / {sets[0].model} / {sets[0].layer}"
        page = page_html(frame, title, [s.attack for s in sets], pictures)
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return frame
