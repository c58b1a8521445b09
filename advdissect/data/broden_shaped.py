"""A generated dataset with broden1_224's shape, for rehearsing the workflow at Broden's size.

Everything the chain's cost depends on is as in the real broden1_224: 224 px JPEG images,
112 px segmentations, the real number of concepts per category (11 colours, 584 objects,
234 parts, 32 materials, 468 scenes, 47 textures: 1,376 label numbers, most above 255, so
their masks need the G channel), several mask files per image, and parts in up to three
layers (a part of a part of an object), with the real share of images per layer count.
Nothing here is meant to be interpreted: the images are flat-coloured blobs.

Each image is one of two kinds, as Broden mixes sources:
  texture   (DTD-like, 10 %) one image-level texture, a colour mask, nothing else
  scene     (ADE20K-like) a scene for most images; a floor-like object across the lower part
            and 2 to 6 elliptical objects, each with a colour; parts inside objects, in
            layers; a material mask on a quarter of the images
Concept frequencies follow Zipf laws, long-tailed as in the real data. Same arguments, same
bytes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from ..errors import ConfigError
from .broden import CATEGORIES, INDEX_COLUMNS, build_dataset_dir
from .download import BRODEN_IMAGE_SIZE
from .synthetic import LabelTally, Vocabulary, write_labels, zipf

log = logging.getLogger(__name__)

CONCEPTS = {"color": 11, "object": 584, "part": 234, "material": 32, "scene": 468, "texture": 47}
IMAGE_SIZE = BRODEN_IMAGE_SIZE["broden1_224"]
SEGMENTATION_SIZE = IMAGE_SIZE // 2
P_TEXTURE_IMAGE, P_SCENE, P_MATERIAL = 0.10, 0.85, 0.25
# Share of scene images with 0, 1, 2, 3 part layers (real broden1_224's ADE20K rows).
PART_LAYERS_P = np.array([10_650, 7_307, 4_079, 174], dtype=np.float64)
PART_LAYERS_P /= PART_LAYERS_P.sum()
OBJECT_ZIPF, PART_ZIPF, OTHER_ZIPF = 1.1, 1.1, 1.2
# One colour per colour label, spread over the RGB cube.
_COLOR_RGB = np.array(
    [
        (20, 20, 20),
        (235, 235, 235),
        (128, 128, 128),
        (200, 30, 35),
        (240, 130, 20),
        (235, 215, 40),
        (40, 150, 50),
        (40, 80, 205),
        (125, 45, 175),
        (225, 110, 180),
        (125, 75, 35),
    ],
    dtype=np.float32,
)


def vocabulary() -> Vocabulary:
    """Label numbers in one block per category, in Broden's category order."""
    blocks, start = {}, 1
    for cat in CATEGORIES:
        blocks[cat] = {f"{cat}_{i + 1:03d}": start + i for i in range(CONCEPTS[cat])}
        start += CONCEPTS[cat]
    return Vocabulary(**blocks)


def n_labels() -> int:
    return 1 + sum(CONCEPTS.values())


def generate(root: str | os.PathLike, *, n_train: int, n_val: int, seed: int = 0) -> None:
    """Write the dataset to `root` (built beside it, then renamed into place)."""
    for key, value, lo in (("n_train", n_train, 0), ("n_val", n_val, 0), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ConfigError(f"synthetic.{key} must be a whole number >= {lo}, got {value!r}")
    if n_train + n_val < 1:
        raise ConfigError("synthetic: n_train + n_val must be at least 1")
    build_dataset_dir(root, lambda build: _write(build, n_train, n_val, seed))
    log.info("Broden-shaped dataset written to %s", root)


def _ellipse(rng: np.random.Generator, within: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """A random axis-aligned ellipse centred inside `within` (a boolean mask), clipped to it."""
    ys, xs = np.nonzero(within)
    if ys.size == 0:
        return within
    k = rng.integers(ys.size)
    cy, cx = ys[k], xs[k]
    extent = max(np.ptp(ys), np.ptp(xs)) + 1
    ry, rx = (rng.uniform(*scale, size=2) * extent).clip(1.5)
    size = within.shape[0]
    y0, y1 = max(int(cy - ry), 0), min(int(cy + ry) + 1, size)
    x0, x1 = max(int(cx - rx), 0), min(int(cx + rx) + 1, size)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    out = np.zeros_like(within)
    out[y0:y1, x0:x1] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return out & within


class _Draw:
    """Label and colour maps of one image at the segmentation's size."""

    def __init__(self, rng: np.random.Generator, vocab: Vocabulary):
        self.rng, self.size = rng, SEGMENTATION_SIZE
        self.p = {cat: zipf(CONCEPTS[cat], OTHER_ZIPF) for cat in CATEGORIES}
        self.p["object"] = zipf(CONCEPTS["object"], OBJECT_ZIPF)
        self.p["part"] = zipf(CONCEPTS["part"], PART_ZIPF)
        self.numbers = {cat: np.array(sorted(getattr(vocab, cat).values())) for cat in CATEGORIES}

    def pick(self, cat: str, size: int | None = None):
        return self.numbers[cat][self.rng.choice(CONCEPTS[cat], size=size, p=self.p[cat])]

    def colour(self) -> int:
        return int(self.rng.integers(CONCEPTS["color"]))

    def image(self) -> tuple[dict[str, np.ndarray], dict[str, list[int]], np.ndarray]:
        """(pixel layers by mask name, image-level labels, colour index map)."""
        rng, size = self.rng, self.size
        colour = np.full((size, size), self.colour(), np.int64)
        layers: dict[str, np.ndarray] = {}
        if rng.random() < P_TEXTURE_IMAGE:
            texture = [int(self.pick("texture"))]
            return {"color": self.numbers["color"][colour]}, {"scene": [], "texture": texture}, colour
        obj = np.zeros((size, size), np.int64)
        floor = np.zeros((size, size), bool)
        floor[int(size * rng.uniform(0.5, 0.8)) :] = True
        obj[floor], colour[floor] = self.pick("object"), self.colour()
        regions = [floor]
        for _ in range(rng.integers(2, 7)):
            region = _ellipse(rng, np.ones((size, size), bool), (0.08, 0.3))
            obj[region], colour[region] = self.pick("object"), self.colour()
            regions.append(region)
        layers["object"] = obj
        n_part_layers = rng.choice(len(PART_LAYERS_P), p=PART_LAYERS_P)
        parents = [r & (obj > 0) for r in regions[1:]]
        for depth in range(1, n_part_layers + 1):
            part = np.zeros((size, size), np.int64)
            children = []
            for parent in parents:
                if parent.sum() < 8 or rng.random() < 0.3:
                    continue
                region = _ellipse(rng, parent, (0.15, 0.35))
                part[region], colour[region] = self.pick("part"), self.colour()
                children.append(region)
            if not part.any():
                break
            layers[f"part_{depth}"] = part
            parents = children
        if rng.random() < P_MATERIAL:
            material = np.zeros((size, size), np.int64)
            for region in regions:
                material[region] = self.pick("material")
            layers["material"] = material
        layers["color"] = self.numbers["color"][colour]
        scene = [int(self.pick("scene"))] if rng.random() < P_SCENE else []
        return layers, {"scene": scene, "texture": []}, colour

    def pixels(self, colour: np.ndarray) -> np.ndarray:
        """The 224 px image: each segmentation cell's colour over 2 x 2 pixels, plus noise."""
        rgb = _COLOR_RGB[colour].repeat(2, axis=0).repeat(2, axis=1)
        rgb += self.rng.normal(0.0, 8.0, size=rgb.shape).astype(np.float32)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _write(build: Path, n_train: int, n_val: int, seed: int) -> None:
    vocab = vocabulary()
    tally = LabelTally(n_labels(), SEGMENTATION_SIZE**2)
    (build / "images" / "generated").mkdir(parents=True)
    records = []
    with tqdm(total=n_train + n_val, desc="Broden-shaped images", unit="img", disable=None) as bar:
        for split, count, code in (("train", n_train, 1), ("val", n_val, 2)):
            for i in range(count):
                draw = _Draw(np.random.default_rng([seed, code, i]), vocab)
                layers, image_labels, colour = draw.image()
                stem = f"generated/{split}_{i:06d}"
                rec = {"image": f"{stem}.jpg", "split": split, "ih": IMAGE_SIZE, "iw": IMAGE_SIZE}
                rec.update({"sh": SEGMENTATION_SIZE, "sw": SEGMENTATION_SIZE}, **{cat: "" for cat in CATEGORIES})
                tally.add_image(build, rec, stem, image_labels, layers)
                Image.fromarray(draw.pixels(colour)).save(build / "images" / rec["image"], quality=90)
                records.append(rec)
                bar.update(1)
    columns = list(INDEX_COLUMNS)
    pd.DataFrame(records, columns=columns).to_csv(build / "index.csv", index=False)
    write_labels(build, vocab, tally.freq, tally.cover, tally.category_images)
