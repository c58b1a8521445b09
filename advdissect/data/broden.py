"""Reader for datasets in the Broden format (Bau et al., 2017), real or synthetic.

Layout of a dataset directory `root`:

    index.csv      image,split,ih,iw,sh,sw,color,object,part,material,scene,texture
    label.csv      number,name,category,frequency,coverage,syns
    category.csv   name,first,last,count,frequency
    c_<cat>.csv    code,number,name,frequency,coverage   (one per category)
    images/        the images and mask PNGs; index.csv paths are relative to this folder

A category cell of index.csv is empty or holds `;`-joined items: a PNG path (a pixel-level
layer whose pixels hold label numbers as R + 256*G) or a decimal label number (image-level:
scene, texture). Scene `0` means "no scene" and is not a label. The index is parsed once,
vectorised; images and masks are read lazily, one row at a time.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ..errors import ConfigError, DatasetError
from ..specs import ShardPlan

CATEGORIES = ("color", "object", "part", "material", "scene", "texture")
PIXEL_CATEGORIES = ("color", "object", "part", "material")
IMAGE_CATEGORIES = ("scene", "texture")
INDEX_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw") + CATEGORIES
LABEL_COLUMNS = ("number", "name", "category", "frequency", "coverage", "syns")
CATEGORY_COLUMNS = ("name", "first", "last", "count", "frequency")
C_COLUMNS = ("code", "number", "name", "frequency", "coverage")
SPLITS = ("train", "val")

# An item escapes the images folder if it is absolute (POSIX, UNC or drive letter) or has a
# `..` component. Both patterns run over a whole column joined by newlines (re.M).
_ABSOLUTE = re.compile(r"(?:^|;)(?:[/\\]|[A-Za-z]:)", re.M)
_DOTDOT = re.compile(r"(?:^|[;/\\])\.\.(?:[/\\;]|$)", re.M)
_NOT_NUMBERS = re.compile(r"[^0-9;\n]")
_NUMBER = re.compile(r"^\d+$")


def decode_mask(rgb: np.ndarray) -> np.ndarray:
    """Label numbers of a Broden mask image: R + 256*G, as int32 (H, W)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 2:
        raise ValueError(f"a mask image must be (H, W, 3|4), got shape {rgb.shape}")
    return rgb[..., 0].astype(np.int32) + 256 * rgb[..., 1].astype(np.int32)


def encode_mask(labels: np.ndarray) -> np.ndarray:
    """Inverse of decode_mask: uint8 RGB (H, W, 3) with R = n % 256, G = n // 256, B = 0."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D (H, W), got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 0xFFFF):
        raise ValueError("label numbers must lie in 0..65535 to fit R + 256*G")
    labels = labels.astype(np.int64)
    out = np.zeros(labels.shape + (3,), dtype=np.uint8)
    out[..., 0] = labels % 256
    out[..., 1] = labels // 256
    return out


def _read_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path}: missing (a Broden dataset needs {path.name} in {path.parent})")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DatasetError(f"{path}: cannot be read as CSV ({exc})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; expected header {','.join(columns)}")
    return frame


def _where(path: Path, frame: pd.DataFrame, row: int) -> str:
    # Row positions are 0-based; the file line adds the header.
    image = frame["image"].iat[row] if "image" in frame.columns else ""
    name = f", image '{image}'" if image else ""
    return f"{path}: row {row} (line {row + 2}{name})"


def _strings(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A column as a stripped numpy unicode array (whole-column C loops, no per-cell Python)."""
    values = frame[column].to_numpy(dtype=str)
    return np.strings.strip(values) if len(values) else values


def _int_column(path: Path, frame: pd.DataFrame, column: str, *, minimum: int = 0) -> np.ndarray:
    text = _strings(frame, column)
    ok = np.strings.isdigit(text)  # False for ''
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise DatasetError(
            f"{_where(path, frame, row)}: column '{column}' must be a whole number >= {minimum}, "
            f"got {frame[column].iat[row]!r}"
        )
    values = text.astype(np.int64)
    if (values < minimum).any():
        row = int(np.flatnonzero(values < minimum)[0])
        raise DatasetError(f"{_where(path, frame, row)}: column '{column}' must be >= {minimum}, got {values[row]}")
    return values


def _float_column(path: Path, frame: pd.DataFrame, column: str) -> np.ndarray:
    values = pd.to_numeric(frame[column].astype(str).str.strip(), errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            f"{path}: row {row} (line {row + 2}): column '{column}' must be a number, got {frame[column].iat[row]!r}"
        )
    return values


class _Column:
    """One `;`-list column: cells with stray blanks and empty items tidied, the cells joined
    by newlines, and each cell's offset in the joined text (to map a match to its row)."""

    def __init__(self, frame: pd.DataFrame, name: str):
        cells = _strings(frame, name)
        messy = (
            (np.strings.find(cells, ";;") >= 0)
            | np.strings.startswith(cells, ";")
            | np.strings.endswith(cells, ";")
            | (np.strings.find(cells, " ;") >= 0)
            | (np.strings.find(cells, "; ") >= 0)
        )
        if messy.any():
            cells = cells.astype(object)
            for row in np.flatnonzero(messy):
                cells[row] = ";".join(i.strip() for i in cells[row].split(";") if i.strip())
            cells = cells.astype(str)
        self.cells = cells
        self.counts = (np.strings.count(cells, ";") + (np.strings.str_len(cells) > 0)).astype(np.int64)
        self.text = "\n".join(cells.tolist())
        lengths = np.strings.str_len(cells).astype(np.int64) + 1
        self.offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(cells) else lengths

    def row_at(self, position: int) -> int:
        return int(np.searchsorted(self.offsets, position, side="right") - 1)

    def numbers(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, values) of the numeric items."""
        rows = list(np.flatnonzero(np.strings.isdigit(self.cells)))
        values = [self.cells[r] for r in rows]
        for row in np.flatnonzero(self.counts > 1):  # few: split those cells one by one
            for item in str(self.cells[row]).split(";"):
                if item.isdigit():
                    rows.append(row)
                    values.append(item)
        return np.array(rows, dtype=np.int64), np.array(values, dtype=str).astype(np.int64)

    def escaping(self) -> int | None:
        """Row of the first item that is an absolute path or has a `..` component."""
        text = self.text
        # Substring tests first: a regex scan of a long column is slow and rarely needed.
        absolute = ":" in text or text.startswith(("/", "\\")) or any(s in text for s in ("\n/", "\n\\", ";/", ";\\"))
        for pattern, needed in ((_ABSOLUTE, absolute), (_DOTDOT, ".." in text)):
            match = pattern.search(text) if needed else None
            if match:
                return self.row_at(match.start())
        return None


@dataclass(frozen=True)
class IndexTable:
    """index.csv, parsed: the raw strings plus what every reader needs as arrays.

    scene: int64 per row, -1 for an empty cell, 0 for `0` (no scene), else the label number.
    texture: row r's texture numbers are texture_values[texture_ptr[r]:texture_ptr[r+1]].
    n_layers: per pixel category, how many items (layers) each row has.
    pixel_numbers: per pixel category, (rows, values) of items that are label numbers
    (a whole-image label) instead of mask paths.
    """

    path: Path
    frame: pd.DataFrame
    split: np.ndarray
    scene: np.ndarray
    texture_ptr: np.ndarray
    texture_values: np.ndarray
    n_layers: dict
    pixel_numbers: dict
    image_size: tuple
    seg_size: tuple

    def __len__(self) -> int:
        return len(self.frame)

    def textures(self, row: int) -> np.ndarray:
        return self.texture_values[self.texture_ptr[row] : self.texture_ptr[row + 1]]

    def image_numbers(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, values) of every image-level label number used (scene > 0, texture)."""
        has_scene = np.flatnonzero(self.scene > 0)
        texture_rows = np.repeat(np.arange(len(self)), np.diff(self.texture_ptr))
        return (np.concatenate([has_scene, texture_rows]), np.concatenate([self.scene[has_scene], self.texture_values]))


def parse_index(path: str | os.PathLike) -> IndexTable:
    """Read and check an index.csv without touching any image or mask file."""
    path = Path(path)
    frame = _read_csv(path, INDEX_COLUMNS)
    if len(frame) == 0:
        raise DatasetError(f"{path}: the index has no rows (a dataset needs at least one image)")
    split = _index_split(path, frame)
    image_size, seg_size = _index_sizes(path, frame)
    columns = {c: _Column(frame, c) for c in ("image",) + CATEGORIES}
    _check_paths(path, frame, columns)
    n_layers = {c: columns[c].counts for c in PIXEL_CATEGORIES}
    pixel_numbers = {c: columns[c].numbers() for c in PIXEL_CATEGORIES}
    for cat in IMAGE_CATEGORIES:
        col = columns[cat]
        match = _NOT_NUMBERS.search(col.text)
        if match:
            row = col.row_at(match.start())
            raise DatasetError(
                f"{_where(path, frame, row)}: {cat} items must be label numbers, got {str(col.cells[row])!r}"
            )
    scene = _index_scenes(path, frame, columns["scene"])
    texture_ptr, texture_values = _index_textures(columns["texture"])
    return IndexTable(
        path,
        frame,
        split.astype(object),
        scene,
        texture_ptr,
        texture_values,
        n_layers,
        pixel_numbers,
        image_size,
        seg_size,
    )


def _index_split(path: Path, frame: pd.DataFrame) -> np.ndarray:
    split = _strings(frame, "split")
    bad = ~np.isin(split, SPLITS)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            f"{_where(path, frame, row)}: split must be one of {', '.join(SPLITS)}, got {str(split[row])!r}"
        )
    return split


def _index_sizes(path: Path, frame: pd.DataFrame) -> tuple[tuple[int, int], tuple[int, int]]:
    """(image size, segmentation size): every row must give the same."""
    sizes = {c: _int_column(path, frame, c, minimum=1) for c in ("ih", "iw", "sh", "sw")}
    for a, b in (("ih", "iw"), ("sh", "sw")):
        pair = np.stack([sizes[a], sizes[b]], axis=1)
        differ = (pair != pair[0]).any(axis=1)
        if differ.any():
            row = int(np.flatnonzero(differ)[0])
            raise DatasetError(
                f"{_where(path, frame, row)}: ({a}, {b}) = {tuple(pair[row].tolist())} differs from row 0's "
                f"{tuple(pair[0].tolist())}; every row of a dataset must share one image and one segmentation size"
            )
    return (int(sizes["ih"][0]), int(sizes["iw"][0])), (int(sizes["sh"][0]), int(sizes["sw"][0]))


def _check_paths(path: Path, frame: pd.DataFrame, columns: dict[str, _Column]) -> None:
    """Every row names an image, and paths stay inside <root>/images."""
    empty = columns["image"].counts == 0
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise DatasetError(f"{path}: row {row} (line {row + 2}): the image cell is empty")
    for name in ("image",) + PIXEL_CATEGORIES:
        col = columns[name]
        row = col.escaping()
        if row is not None:
            raise DatasetError(
                f"{_where(path, frame, row)}: path {str(col.cells[row])!r} in column '{name}' leaves the "
                "dataset's images/ folder (absolute paths and '..' are not allowed)"
            )


def _index_scenes(path: Path, frame: pd.DataFrame, scene_col: _Column) -> np.ndarray:
    """Scene number per row: -1 for an empty cell."""
    if (scene_col.counts > 1).any():
        row = int(np.flatnonzero(scene_col.counts > 1)[0])
        raise DatasetError(
            f"{_where(path, frame, row)}: a scene cell holds at most one number, got {frame['scene'].iat[row]!r}"
        )
    return np.where(scene_col.counts > 0, scene_col.cells, "-1").astype(np.int64)


def _index_textures(texture_col: _Column) -> tuple[np.ndarray, np.ndarray]:
    """(texture_ptr, texture_values) of IndexTable, textures `0` left out."""
    n = len(texture_col.cells)
    filled = texture_col.cells[texture_col.counts > 0]
    values = np.array(";".join(filled.tolist()).split(";")).astype(np.int64) if len(filled) else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(n), texture_col.counts)
    keep = values > 0  # a texture `0` is no label either
    texture_ptr = np.zeros(n + 1, dtype=np.int64)
    texture_ptr[1:] = np.cumsum(np.bincount(rows[keep], minlength=n))
    return texture_ptr, values[keep]


def _primary_categories(
    root: Path,
    n_labels: int,
    known: np.ndarray,
    label_frame: pd.DataFrame,
    label_numbers: np.ndarray,
    categories: list[str],
) -> np.ndarray:
    """Index into CATEGORIES of each label's primary category: the c_<cat>.csv that lists it
    with the largest coverage (ties go to the later category, as in NetDissect)."""
    best_cov = np.full(n_labels, -np.inf)
    best_cat = np.full(n_labels, -1, dtype=np.int64)
    for cat in CATEGORIES:
        if cat not in categories:
            continue
        path = root / f"c_{cat}.csv"
        frame = _read_csv(path, C_COLUMNS)
        numbers = _int_column(path, frame, "number")
        coverage = _float_column(path, frame, "coverage")
        unknown = (numbers >= n_labels) | ~known[np.minimum(numbers, n_labels - 1)]
        if unknown.any():
            row = int(np.flatnonzero(unknown)[0])
            raise DatasetError(
                f"{path}: row {row} (line {row + 2}): label number {numbers[row]} is not in {root / 'label.csv'}"
            )
        better = coverage >= best_cov[numbers]
        best_cov[numbers[better]] = coverage[better]
        best_cat[numbers[better]] = CATEGORIES.index(cat)
    # A label no c_ file lists falls back to the largest count in label.csv's category cell,
    # e.g. `object(15553);part(29)`.
    for number, cell in zip(label_numbers, label_frame["category"].astype(str)):
        if number == 0 or best_cat[number] >= 0 or not cell.strip():
            continue
        found = re.findall(r"([A-Za-z_]+)\((\d+)\)", cell) or [(cell.strip(), "0")]
        name = max(found, key=lambda kv: int(kv[1]))[0]
        if name in CATEGORIES:
            best_cat[number] = CATEGORIES.index(name)
    best_cat[0] = -1
    return best_cat


@dataclass(frozen=True)
class Segmentation:
    """One row's labels. pixel: int32 (n_layers, sh, sw) label numbers (0 = none), layers in
    the order color, object, every part layer, material; layer_category: index into CATEGORIES
    per layer; image_labels: int64 image-level numbers (scene without 0, then texture)."""

    pixel: np.ndarray
    layer_category: np.ndarray
    image_labels: np.ndarray


class BrodenDataset:
    """A Broden-format dataset directory; see the module docstring for the layout."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: not a directory (expected a Broden dataset folder)")
        table = parse_index(self.root / "index.csv")
        self._table = table
        self.index = table.frame
        self.image_size = table.image_size
        self.seg_size = table.seg_size
        self._images_dir = self.root / "images"

        label_path = self.root / "label.csv"
        labels = _read_csv(label_path, LABEL_COLUMNS)
        numbers = _int_column(label_path, labels, "number")
        dup = pd.Series(numbers).duplicated().to_numpy()
        if dup.any():
            row = int(np.flatnonzero(dup)[0])
            raise DatasetError(f"{label_path}: row {row} (line {row + 2}): label number {numbers[row]} is listed twice")
        self.n_labels = int(numbers.max()) + 1 if len(numbers) else 1
        known = np.zeros(self.n_labels, dtype=bool)
        known[numbers] = True
        known[0] = True  # 0 means unlabelled wherever it appears
        self._known = np.append(known, False)  # index n_labels catches out-of-range numbers
        names = [""] * self.n_labels
        for number, name in zip(numbers, labels["name"].astype(str)):
            names[number] = name
        self.label_names = names

        cat_path = self.root / "category.csv"
        cats = _read_csv(cat_path, CATEGORY_COLUMNS)
        cat_names = [c.strip() for c in cats["name"].astype(str)]
        for row, name in enumerate(cat_names):
            if name not in CATEGORIES:
                raise DatasetError(
                    f"{cat_path}: row {row} (line {row + 2}): unknown category {name!r}; "
                    f"allowed: {', '.join(CATEGORIES)}"
                )
        self.label_category = _primary_categories(self.root, self.n_labels, known, labels, numbers, cat_names)

        checks = [table.image_numbers()] + [table.pixel_numbers[c] for c in PIXEL_CATEGORIES]
        for rows, values in checks:
            bad = ~self._known[np.minimum(values, self.n_labels)]
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DatasetError(
                    f"{_where(table.path, table.frame, int(rows[i]))}: label number {values[i]} is not in {label_path}"
                )

        label_of_row = self._class_labels(table)
        self._classes = np.unique(label_of_row[label_of_row > 0])
        self._class_of_row = np.full(len(table), -1, dtype=np.int64)
        has = label_of_row > 0
        self._class_of_row[has] = np.searchsorted(self._classes, label_of_row[has])

    def _class_labels(self, table: IndexTable) -> np.ndarray:
        """Each row's class label number (0 for none): the optional `class` column, else the scene."""
        if "class" not in table.frame.columns:
            return np.maximum(table.scene, 0)
        path = table.path
        cells = table.frame["class"].str.strip().replace("", "0").to_frame()
        labels = _int_column(path, cells, "class")
        bad = ~self._known[np.minimum(labels, self.n_labels)]
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DatasetError(
                f"{_where(path, table.frame, row)}: class {labels[row]} is not in {self.root / 'label.csv'}"
            )
        return labels

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"BrodenDataset({str(self.root)!r}, {len(self)} images, {self.n_labels} labels)"

    @property
    def table(self) -> IndexTable:
        return self._table

    def rows(self, split: str = "all") -> np.ndarray:
        """Row positions of a split ('all', 'train' or 'val'), in index order."""
        if split == "all":
            return np.arange(len(self), dtype=np.int64)
        if split not in SPLITS:
            raise ConfigError(f"split must be one of all, train, val; got {split!r}")
        return np.flatnonzero(self._table.split == split).astype(np.int64)

    def classes(self) -> np.ndarray:
        """Sorted class label numbers present in the index; a class index is a position here.

        A row's class is its `class` column where the index has one (the synthetic sets: the
        main object's label), else its scene (the real Broden has no ImageNet labels)."""
        return self._classes.copy()

    def class_index(self, row: int) -> int:
        """Class index of the row, -1 when the row has none (no class, or a scene empty or `0`)."""
        return int(self._class_of_row[self._check_row(row)])

    def class_indices(self, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """class_index for many rows at once (all rows when None)."""
        if rows is None:
            return self._class_of_row.copy()
        return self._class_of_row[np.asarray(rows, dtype=np.int64)]

    def _check_row(self, row: int) -> int:
        row = int(row)
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} is outside 0..{len(self) - 1}")
        return row

    def _file(self, row: int, item: str) -> Path:
        path = self._images_dir / item
        if not path.is_file():
            raise DatasetError(f"{_where(self._table.path, self.index, row)}: file {path} is missing")
        return path

    def load_image(self, row: int) -> np.ndarray:
        """The row's image as uint8 (ih, iw, 3), bilinearly resized if the file differs."""
        row = self._check_row(row)
        path = self._file(row, self.index["image"].iat[row].strip())
        where = _where(self._table.path, self.index, row)
        im = _decode(path, f"{where}: image", lambda im: im.convert("RGB"))
        ih, iw = self.image_size
        if im.size != (iw, ih):
            im = im.resize((iw, ih), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)

    def _load_mask(self, row: int, item: str) -> np.ndarray:
        path = self._file(row, item)
        where = _where(self._table.path, self.index, row)

        def labels_of(im: Image.Image) -> np.ndarray:
            if im.mode in ("P", "LA", "PA", "RGBA", "RGB"):
                return decode_mask(np.asarray(im.convert("RGB")))
            if im.mode in ("L", "I", "I;16", "I;16B", "I;16L"):
                return np.asarray(im).astype(np.int32)
            raise DatasetError(f"{where}: mask {path} has image mode {im.mode}; expected RGB (R + 256*G) or grayscale")

        labels = _decode(path, f"{where}: mask", labels_of)
        sh, sw = self.seg_size
        if labels.shape != (sh, sw):
            if labels.shape != self.image_size:
                raise DatasetError(
                    f"{where}: mask {path} is {labels.shape[1]}x{labels.shape[0]} (w x h); "
                    f"expected the segmentation size {sw}x{sh} or the image size "
                    f"{self.image_size[1]}x{self.image_size[0]}"
                )
            labels = _nearest(labels, (sh, sw))
        bad = ~self._known[np.minimum(labels, self.n_labels)]
        if bad.any():
            raise DatasetError(
                f"{where}: mask {path} holds label number {int(labels[bad][0])}, "
                f"which is not in {self.root / 'label.csv'}"
            )
        return labels

    def load_segmentation(self, row: int) -> Segmentation:
        """The row's pixel-level layers and image-level labels (see Segmentation)."""
        row = self._check_row(row)
        sh, sw = self.seg_size
        layers, layer_cats = [], []
        for cat in PIXEL_CATEGORIES:
            cell = self.index[cat].iat[row]
            for item in cell.split(";"):
                item = item.strip()
                if not item:
                    continue
                if _NUMBER.match(item):
                    # A number in a pixel category labels the whole image.
                    layers.append(np.full((sh, sw), int(item), dtype=np.int32))
                else:
                    layers.append(self._load_mask(row, item))
                layer_cats.append(CATEGORIES.index(cat))
        pixel = np.stack(layers) if layers else np.zeros((0, sh, sw), dtype=np.int32)
        scene = self._table.scene[row]
        image_labels = np.concatenate(
            [
                np.array([scene] if scene > 0 else [], dtype=np.int64),
                self._table.textures(row),
            ]
        )
        return Segmentation(pixel.astype(np.int32, copy=False), np.array(layer_cats, dtype=np.int64), image_labels)


def _decode(path: Path, what: str, convert: Callable[[Image.Image], Any]) -> Any:
    """`convert` of the image file, decoded in full; a file damaged in a way the decoder can
    tell raises DatasetError naming `what` (the row and the kind of file) and `path`.

    PIL makes up what a damaged file lacks, silently or with a warning: a warning here is an
    error, and a JPEG must end with its end-of-image marker (a JPEG has no checksum: damage
    that keeps its structure goes unseen).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with Image.open(path) as im:
                im.load()
                if im.format == "JPEG":
                    _check_jpeg_end(path)
                return convert(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Warning) as exc:
        raise DatasetError(f"{what} {path} cannot be read ({exc}); the file is damaged or not an image") from None


def _check_jpeg_end(path: Path) -> None:
    # Entropy-coded data never holds the bytes FF D9 (0xFF is stuffed there), so the last scan
    # (FF DA) of a whole JPEG is followed by its end-of-image marker: missing, the data after
    # the break was decoded from whatever bytes were there.
    data = path.read_bytes()
    if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise ValueError("its JPEG data breaks off before the end-of-image marker")


def _nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map, sampling at output pixel centres."""
    h, w = labels.shape
    ys = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return labels[ys[:, None], xs[None, :]]


def shard_rows(dataset: BrodenDataset, plan: ShardPlan, shard: int) -> np.ndarray:
    """Rows of shard `shard` (0-based) of the plan's first `n_images` rows of its split."""
    rows = dataset.rows(plan.split)
    if len(rows) < plan.n_images:
        raise ConfigError(
            f"dataset {dataset.root}: split {plan.split!r} has {len(rows)} images, "
            f"fewer than its n_images={plan.n_images}"
        )
    if not 0 <= int(shard) < plan.n_shards:
        raise ConfigError(
            f"shard {shard} does not exist: split {plan.split!r} with n_images={plan.n_images} "
            f"and shard_size={plan.shard_size} has shards 0..{plan.n_shards - 1}"
        )
    start = int(shard) * plan.shard_size
    return rows[start : min(start + plan.shard_size, plan.n_images)].copy()


_DATASET_ENTRIES = re.compile(r"^(index|label|category|c_[a-z_]+)\.csv$|^images$|^readme.*$", re.I)


def check_dataset_dest(dest: str | os.PathLike) -> None:
    """Raise DatasetError unless `dest` is absent or holds nothing but Broden files, so a
    mistyped path never deletes someone's data."""
    dest = Path(dest)
    if not dest.exists():
        return
    if not dest.is_dir():
        raise DatasetError(f"{dest}: exists and is not a directory; cannot put a dataset there")
    foreign = sorted(p.name for p in dest.iterdir() if not _DATASET_ENTRIES.match(p.name))
    if foreign:
        raise DatasetError(
            f"{dest}: exists and holds files that are not part of a Broden dataset "
            f"({', '.join(foreign[:5])}); remove them or choose another dataset directory"
        )


def build_dataset_dir(dest: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Run `write(build)` on an empty directory beside `dest`, then move it into place
    (install_dataset_dir), so an interrupted run leaves no partial dataset at `dest`."""
    dest = Path(dest)
    check_dataset_dest(dest)  # fail before the work, not after it
    dest.parent.mkdir(parents=True, exist_ok=True)
    build = dest.parent / f".{dest.name}.building-{uuid.uuid4().hex[:8]}"
    build.mkdir()
    try:
        write(build)
        install_dataset_dir(build, dest)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise


def install_dataset_dir(built: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move a complete dataset directory `built` to `dest` (same file system), replacing a
    previous dataset there (see check_dataset_dest)."""
    built, dest = Path(built), Path(dest)
    check_dataset_dest(dest)
    if dest.exists():
        trash = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, trash)
        os.replace(built, dest)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(built, dest)
