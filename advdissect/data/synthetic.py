"""A synthetic dataset in the Broden format whose task is object recognition, as ImageNet's is.

Every image shows one main object, whose identity is the image's class, in a scene that
correlates with the class without defining it, with one or two small context objects:

  class     16 object classes (the `class` column of index.csv holds the class's object
            label). A class is a shape filled with a material and carrying its own parts;
            every shape signs two classes that differ in material (and parts), so telling
            objects apart needs the material as well as the shape. The colour is drawn from
            the class's palette of three: informative, never decisive.
  scene     the background: wall and floor tints and the horizon height. Half of the images
            show the class's home scene, the rest a scene drawn from a long-tailed law.
  texture   half of the backgrounds carry a faint periodic pattern (a quarter of those two),
            drawn from a long-tailed law independent of the class.

Every image is one the classifier is trained on; there are no out-of-distribution rows.
Concept labels (Broden categories):
  color     the colour of an object's body (never the background)
  object    the main object's class and the context objects (bar, arrow, tee, knob);
            `knob` (a small dark disc) is both a context object and a part
  part      layer 1: rim (light outline), knob (dark centre disc);
            layer 2: cap (lighter top), base (darker bottom)
  material  the fill pattern of an object's body
  scene     image-level, one per image
  texture   image-level, none, one or two per image

Frequencies are uneven in every category, as in the real Broden. That keeps every
category reachable: a unit's mask covers about q = 0.5 % of the pixels, so IoU against a
concept covering a share c of all pixels is at most q / c, and each category has concepts
with c near q. `ideal_unit` tests measure that ceiling for every concept.

Label numbers come in fixed blocks, so materials sit above 255 and their masks need the
G channel (R + 256*G), as labels >= 256 do in the real Broden:
  color 1-10, object 21-40, part 41-43 (+ knob), scene 101-112, texture 201-210,
  material 301-306.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from ..errors import ConfigError
from .broden import CATEGORIES, INDEX_COLUMNS, PIXEL_CATEGORIES, build_dataset_dir, encode_mask

log = logging.getLogger(__name__)

COLORS = {
    "red": (205, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 35),
    "lime": (150, 225, 45),
    "green": (30, 130, 50),
    "cyan": (40, 200, 215),
    "blue": (35, 70, 205),
    "purple": (120, 45, 175),
    "magenta": (225, 50, 190),
    "brown": (125, 70, 30),
}
MATERIALS = ("wood", "brick", "fabric", "metal", "stone", "plastic")
PARTS = ("rim", "cap", "base")  # plus knob, shared with the object category
DISTRACTOR_SHAPES = ("bar", "arrow", "tee", "knob")
DISTRACTOR_WEIGHTS = np.array([1.0, 1.0, 1.0, 0.5])
DISTRACTOR_MATERIALS = ("wood", "metal", "plastic")
DISTRACTOR_COLORS = ("red", "blue", "green", "yellow")
TEXTURES = (
    "striped",
    "banded",
    "chequered",
    "dotted",
    "grid",
    "zigzagged",
    "wavy",
    "crosshatched",
    "spiralled",
    "lined",
)


@dataclass(frozen=True)
class ObjectClass:
    name: str
    shape: str
    material: str
    parts: tuple[str, ...]
    colors: tuple[str, str, str]  # drawn with COLOR_WEIGHTS


@dataclass(frozen=True)
class Scene:
    name: str
    wall: tuple[int, int, int]
    floor: tuple[int, int, int]
    horizon: float  # share of the image height above the floor


# Two classes per shape, told apart by material; material and part frequencies are uneven.
CLASSES = (
    ObjectClass("plate", "circle", "plastic", ("rim",), ("red", "blue", "yellow")),
    ObjectClass("wheel", "circle", "metal", ("rim", "knob"), ("blue", "cyan", "brown")),
    ObjectClass("crate", "square", "wood", ("knob",), ("brown", "orange", "green")),
    ObjectClass("vault", "square", "stone", ("cap",), ("green", "blue", "purple")),
    ObjectClass("tent", "triangle", "fabric", ("base",), ("green", "orange", "cyan")),
    ObjectClass("sign", "triangle", "metal", ("rim",), ("yellow", "red", "lime")),
    ObjectClass("badge", "star", "metal", ("knob",), ("yellow", "orange", "purple")),
    ObjectClass("starfish", "star", "stone", (), ("orange", "purple", "red")),
    ObjectClass("medkit", "cross", "plastic", ("rim",), ("red", "green", "lime")),
    ObjectClass("signpost", "cross", "wood", ("cap",), ("brown", "yellow", "blue")),
    ObjectClass("bangle", "ring", "metal", (), ("yellow", "cyan", "purple")),
    ObjectClass("hoop", "ring", "plastic", ("rim",), ("lime", "blue", "red")),
    ObjectClass("kite", "diamond", "fabric", ("knob",), ("purple", "magenta", "green")),
    ObjectClass("tile", "diamond", "brick", ("rim", "cap"), ("magenta", "orange", "cyan")),
    ObjectClass("sickle", "crescent", "metal", (), ("lime", "blue", "brown")),
    ObjectClass("boomerang", "crescent", "wood", (), ("orange", "brown", "yellow")),
)
COLOR_WEIGHTS = np.array([0.6, 0.3, 0.1])

SCENES = (
    Scene("street", (150, 150, 160), (95, 95, 100), 0.55),
    Scene("beach", (170, 190, 205), (205, 190, 150), 0.45),
    Scene("kitchen", (200, 195, 180), (140, 120, 100), 0.6),
    Scene("forest", (120, 140, 115), (95, 85, 65), 0.5),
    Scene("office", (185, 185, 175), (115, 120, 135), 0.65),
    Scene("desert", (200, 195, 185), (190, 165, 125), 0.35),
    Scene("harbour", (160, 175, 190), (85, 105, 125), 0.5),
    Scene("garden", (175, 195, 175), (110, 135, 95), 0.4),
    Scene("attic", (150, 130, 115), (120, 100, 85), 0.7),
    Scene("cave", (95, 90, 90), (70, 65, 60), 0.5),
    Scene("stadium", (165, 175, 185), (100, 140, 100), 0.3),
    Scene("library", (145, 120, 100), (170, 150, 125), 0.6),
)
HOME_SCENES = 8  # class i's home scene is SCENES[i % HOME_SCENES]
P_HOME = 0.5
SCENE_ZIPF, TEXTURE_ZIPF = 1.5, 1.3
P_TEXTURED, P_TWO_TEXTURES = 0.5, 0.25
TEXTURE_AMPLITUDE = 22.0  # grey levels either side of the background

COLOR_START, OBJECT_START, PART_START = 1, 21, 41
SCENE_START, TEXTURE_START, MATERIAL_START = 101, 201, 301
MAX_CLASSES = len(CLASSES)
MAIN_RADIUS, CONTEXT_RADIUS, KNOB_CONTEXT_RADIUS = 24.0, 9.0, 5.0  # pixels at 112 px

CAP_EDGE = -0.15  # cap: the object above 0.15 radius below its centre; base: below 0.15 above it
RIM_RGB = np.array([238, 238, 232], dtype=np.float32)
KNOB_RGB = np.array([22, 22, 22], dtype=np.float32)


def zipf(n: int, exponent: float) -> np.ndarray:
    """Probabilities proportional to 1 / rank**exponent over n ranks."""
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    return w / w.sum()


@dataclass(frozen=True)
class Vocabulary:
    """Label numbers of the synthetic dataset, name -> number per category."""

    color: dict
    object: dict
    part: dict
    material: dict
    scene: dict
    texture: dict

    @property
    def n_labels(self) -> int:
        return MATERIAL_START + len(MATERIALS)


def vocabulary(n_classes: int) -> Vocabulary:
    objects = [c.name for c in CLASSES[:n_classes]] + list(DISTRACTOR_SHAPES)
    obj = {name: OBJECT_START + i for i, name in enumerate(objects)}
    part = {name: PART_START + i for i, name in enumerate(PARTS)}
    part["knob"] = obj["knob"]
    return Vocabulary(
        color={name: COLOR_START + i for i, name in enumerate(COLORS)},
        object=obj,
        part=part,
        material={name: MATERIAL_START + i for i, name in enumerate(MATERIALS)},
        scene={s.name: SCENE_START + i for i, s in enumerate(SCENES)},
        texture={name: TEXTURE_START + i for i, name in enumerate(TEXTURES)},
    )


# Shapes: inside-tests in object coordinates (u, v), radius 1, v pointing down.
# Radius of each shape's bounding circle, in units of its radius.
EXTENT = {
    "circle": 0.95,
    "knob": 0.95,
    "square": 1.14,
    "triangle": 1.2,
    "star": 1.15,
    "cross": 1.05,
    "ring": 1.0,
    "diamond": 1.15,
    "crescent": 1.0,
    "bar": 1.18,
    "arrow": 1.12,
    "tee": 1.35,
}


def _shape(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    if name in ("circle", "knob"):
        return r2 <= 0.95**2
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if name == "triangle":  # pointing up, circumradius 1.2
        inside = v <= 0.6
        for angle in (math.radians(-30), math.radians(210)):
            inside &= u * math.cos(angle) + v * math.sin(angle) <= 0.6
        return inside
    if name == "star":
        theta = np.arctan2(v, u) + math.pi / 2  # a point straight up
        t = theta * 5 / (2 * math.pi)
        tri = 2 * np.abs(t - np.round(t))
        return np.sqrt(r2) <= 1.15 - 0.7 * tri
    if name == "cross":
        a, b = np.abs(u), np.abs(v)
        return ((a <= 0.3) & (b <= 1.0)) | ((b <= 0.3) & (a <= 1.0))
    if name == "ring":
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if name == "diamond":
        return np.abs(u) / 0.72 + np.abs(v) / 1.15 <= 1.0
    if name == "crescent":
        return (r2 <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.8**2)
    if name == "bar":
        return (np.abs(u) <= 1.15) & (np.abs(v) <= 0.22)
    if name == "arrow":
        shaft = (u >= -1.1) & (u <= 0.25) & (np.abs(v) <= 0.18)
        head = (u >= 0.25) & (u <= 1.1) & (np.abs(v) <= (1.1 - u) * 0.8)
        return shaft | head
    if name == "tee":
        return ((np.abs(u) <= 0.95) & (v >= -0.95) & (v <= -0.55)) | ((np.abs(u) <= 0.22) & (v >= -0.55) & (v <= 0.95))
    raise ValueError(f"unknown shape {name!r}")


def _hash01(ix: np.ndarray, iy: np.ndarray, salt: float) -> np.ndarray:
    """Deterministic pseudo-random values in [0, 1) per integer lattice point."""
    x = np.sin(ix * 12.9898 + iy * 78.233 + salt * 37.719) * 43758.5453
    return x - np.floor(x)


# Materials: brightness patterns in [0, 1] over the object's body, in pixels (x, y) of the
# object's own frame; `k` scales periods with the image size.
def _material(name: str, x: np.ndarray, y: np.ndarray, k: float, salt: float) -> np.ndarray:
    if name == "wood":
        return 0.5 + 0.5 * np.sin(2 * math.pi * (y + 1.2 * k * np.sin(x / (3.0 * k))) / (3.5 * k))
    if name == "brick":
        h, w = 4.0 * k, 7.0 * k
        row = np.floor(y / h)
        mortar = (np.mod(y, h) < 1.0 * k) | (np.mod(x + (row % 2) * w / 2, w) < 1.0 * k)
        return np.where(mortar, 0.0, 1.0)
    if name == "fabric":
        c = 1.5 * k
        return ((np.floor(x / c) + np.floor(y / c)) % 2).astype(np.float32)
    if name == "metal":
        band = np.abs(np.mod(x + y, 12.0 * k) - 6.0 * k) / (6.0 * k)
        return np.clip(1.2 - 1.4 * band, 0.0, 1.0) ** 2
    if name == "stone":
        c = 2.0 * k
        return _hash01(np.floor(x / c), np.floor(y / c), salt)
    if name == "plastic":
        return np.ones_like(x)
    raise ValueError(f"unknown material {name!r}")


def _texture(name: str, x: np.ndarray, y: np.ndarray, period: float, angle: float, cx: float, cy: float) -> np.ndarray:
    """A whole-image periodic pattern in [0, 1]."""
    p = period
    ca, sa = math.cos(angle), math.sin(angle)
    if name == "striped":
        return (np.mod(x * ca + y * sa, p) < p / 2).astype(np.float32)
    if name == "banded":
        return 0.5 + 0.5 * np.sin(2 * math.pi * y / (2.2 * p))
    if name == "chequered":
        return ((np.floor(x / p) + np.floor(y / p)) % 2).astype(np.float32)
    if name == "dotted":
        dx, dy = np.mod(x, p) - p / 2, np.mod(y, p) - p / 2
        return (dx * dx + dy * dy <= (0.25 * p) ** 2).astype(np.float32)
    if name == "grid":
        return ((np.mod(x, p) < 1.6) | (np.mod(y, p) < 1.6)).astype(np.float32)
    if name == "zigzagged":
        t = np.mod(x / p, 1.0)
        tri = 2 * np.abs(t - 0.5)
        return (np.mod(y + tri * p, p) < p / 2).astype(np.float32)
    if name == "wavy":
        return (np.mod(y + 0.3 * p * np.sin(2 * math.pi * x / (1.5 * p)), p) < p / 2).astype(np.float32)
    if name == "crosshatched":
        a, b = np.mod(x + y, p), np.mod(x - y, p)
        return ((a < 1.5) | (b < 1.5)).astype(np.float32)
    if name == "spiralled":
        r = np.hypot(x - cx, y - cy)
        theta = np.arctan2(y - cy, x - cx)
        return 0.5 + 0.5 * np.sin(2 * math.pi * r / p - 3 * theta)
    if name == "lined":
        return (np.mod(x * ca - y * sa, p) < 1.3).astype(np.float32)
    raise ValueError(f"unknown texture {name!r}")


@dataclass
class _Object:
    shape: str
    label: str  # object label name
    cx: float
    cy: float
    radius: float
    angle: float
    color: str | None
    material: str | None
    parts: tuple[str, ...]
    salt: float


def _object_regions(obj: _Object, xs: np.ndarray, ys: np.ndarray, rim_px: float) -> dict:
    """Boolean regions of an object on a grid (xs, ys: pixel-centre coordinates in image
    pixels), so that the image and the half-size masks come from one continuous drawing."""
    dx = xs[None, :] - obj.cx
    dy = ys[:, None] - obj.cy
    c, s = math.cos(obj.angle), math.sin(obj.angle)
    u = (c * dx + s * dy) / obj.radius
    v = (-s * dx + c * dy) / obj.radius
    inside = _shape(obj.shape, u, v)
    out = {"inside": inside, "u": u * obj.radius, "v": v * obj.radius}
    rim = np.zeros_like(inside)
    if "rim" in obj.parts:
        w = rim_px / obj.radius
        eroded = inside.copy()
        for a in range(8):
            eroded &= _shape(obj.shape, u + w * math.cos(a * math.pi / 4), v + w * math.sin(a * math.pi / 4))
        rim = inside & ~eroded
    knob = np.zeros_like(inside)
    if "knob" in obj.parts:
        knob = inside & (u * u + v * v <= 0.3**2) & ~rim
    out["rim"], out["knob"] = rim, knob
    out["body"] = inside & ~rim & ~knob
    none = np.zeros_like(inside)
    out["cap"] = inside & (dy < -CAP_EDGE * obj.radius) if "cap" in obj.parts else none
    out["base"] = inside & (dy > CAP_EDGE * obj.radius) if "base" in obj.parts else none
    return out


def _span(centre: float, reach: float, coords: np.ndarray) -> slice:
    return slice(int(np.searchsorted(coords, centre - reach)), int(np.searchsorted(coords, centre + reach)))


class _Painter:
    """Draws one image and its pixel-level label layers."""

    def __init__(self, image_size: int, vocab: Vocabulary):
        self.size = image_size
        self.seg = image_size // 2
        self.k = image_size / 112.0  # shapes scale with the image
        self.pattern_k = max(self.k, 1.0)  # patterns keep their pixel periods in small images
        self.vocab = vocab
        self.img_coords = np.arange(image_size, dtype=np.float32) + 0.5
        self.seg_coords = (np.arange(self.seg, dtype=np.float32) + 0.5) * (image_size / self.seg)
        self.rim_px = max(1.0, 2.0 * self.k)

    def background(self, rng: np.random.Generator, scene: Scene, textures: list[str]) -> np.ndarray:
        """The scene's wall and floor, a faint pattern per texture, grain: never a colour concept."""
        n = self.size
        y = self.img_coords[:, None]
        x = self.img_coords[None, :]
        horizon = (scene.horizon + rng.uniform(-0.06, 0.06)) * n
        floor = (y >= horizon).astype(np.float32)[..., None]
        shade = 1.0 + rng.uniform(-0.08, 0.08) + 0.06 * (y / n - 0.5)[..., None]
        wall, ground = np.array(scene.wall, np.float32), np.array(scene.floor, np.float32)
        img = (wall * (1 - floor) + ground * floor) * shade
        img = np.broadcast_to(img, (n, n, 3)).astype(np.float32)
        for i, name in enumerate(textures):
            p = _texture(
                name,
                x,
                y,
                period=float(rng.uniform(7, 12) * self.pattern_k),
                angle=float(rng.uniform(math.radians(25), math.radians(65))),
                cx=float(rng.uniform(0, n)),
                cy=float(rng.uniform(0, n)),
            )
            img = img + (TEXTURE_AMPLITUDE / (i + 1)) * (2.0 * p - 1.0)[..., None]
        return img + rng.normal(0, 3.0, size=img.shape).astype(np.float32)

    def place(self, rng: np.random.Generator, specs: list[tuple], placed: list[_Object]) -> None:
        """Add objects without overlaps (rejection sampling on bounding circles; an object
        that finds no room after 200 tries is dropped)."""
        for shape, label, radius, color, material, parts, angle_range in specs:
            reach = EXTENT[shape] * radius
            for _ in range(200):
                cx, cy = rng.uniform(reach + 1, self.size - reach - 1, size=2)
                if all(
                    math.hypot(cx - o.cx, cy - o.cy) > reach + EXTENT[o.shape] * o.radius + 1.5 * self.k for o in placed
                ):
                    break
            else:
                continue
            placed.append(
                _Object(
                    shape,
                    label,
                    float(cx),
                    float(cy),
                    radius,
                    float(rng.uniform(-angle_range, angle_range)),
                    color,
                    material,
                    parts,
                    salt=float(rng.uniform(0, 100)),
                )
            )

    def draw(self, img: np.ndarray, objects: list[_Object]) -> dict:
        seg = self.seg
        layers = {
            name: np.zeros((seg, seg), dtype=np.int32) for name in ("color", "object", "part_1", "part_2", "material")
        }
        v = self.vocab
        for obj in objects:
            reach = EXTENT[obj.shape] * obj.radius + 2.0
            ys, xs = _span(obj.cy, reach, self.img_coords), _span(obj.cx, reach, self.img_coords)
            reg = _object_regions(obj, self.img_coords[xs], self.img_coords[ys], self.rim_px)
            patch = img[ys, xs]
            if obj.shape == "knob":
                patch[reg["inside"]] = KNOB_RGB
            else:
                rgb = np.array(COLORS[obj.color], dtype=np.float32)
                p = _material(obj.material, reg["u"], reg["v"], self.pattern_k, obj.salt)
                shade = (0.5 + 0.5 * p)[..., None] * rgb
                shade = np.where(reg["cap"][..., None], np.minimum(shade * 1.3 + 25, 255), shade)
                shade = np.where(reg["base"][..., None], shade * 0.7, shade)
                body = reg["body"]
                patch[body] = shade[body]
                patch[reg["rim"]] = RIM_RGB
                patch[reg["knob"]] = KNOB_RGB

            ys, xs = _span(obj.cy, reach, self.seg_coords), _span(obj.cx, reach, self.seg_coords)
            reg = _object_regions(obj, self.seg_coords[xs], self.seg_coords[ys], self.rim_px)
            layers["object"][ys, xs][reg["inside"]] = v.object[obj.label]
            if obj.shape == "knob":
                continue
            layers["color"][ys, xs][reg["body"]] = v.color[obj.color]
            layers["material"][ys, xs][reg["body"]] = v.material[obj.material]
            layers["part_1"][ys, xs][reg["rim"]] = v.part["rim"]
            layers["part_1"][ys, xs][reg["knob"]] = v.part["knob"]
            layers["part_2"][ys, xs][reg["cap"]] = v.part["cap"]
            layers["part_2"][ys, xs][reg["base"]] = v.part["base"]
        return layers


@dataclass(frozen=True)
class _Row:
    cls: int
    scene: int
    textures: tuple[str, ...]


def _compose(painter: _Painter, rng: np.random.Generator, row: _Row):
    """One image: the class's main object and one or two context objects on the scene."""
    k = painter.k
    cls = CLASSES[row.cls]
    color = cls.colors[rng.choice(3, p=COLOR_WEIGHTS)]
    specs = [
        (
            cls.shape,
            cls.name,
            MAIN_RADIUS * k * rng.uniform(0.85, 1.15),
            color,
            cls.material,
            cls.parts,
            math.radians(20),
        )
    ]
    weights = DISTRACTOR_WEIGHTS / DISTRACTOR_WEIGHTS.sum()
    for _ in range(int(rng.integers(1, 3))):
        d = DISTRACTOR_SHAPES[rng.choice(len(DISTRACTOR_SHAPES), p=weights)]
        radius = (KNOB_CONTEXT_RADIUS if d == "knob" else CONTEXT_RADIUS) * k * rng.uniform(0.85, 1.15)
        specs.append(
            (
                d,
                d,
                radius,
                DISTRACTOR_COLORS[rng.integers(len(DISTRACTOR_COLORS))],
                DISTRACTOR_MATERIALS[rng.integers(len(DISTRACTOR_MATERIALS))],
                (),
                math.pi,
            )
        )
    img = painter.background(rng, SCENES[row.scene], list(row.textures))
    objects: list[_Object] = []
    painter.place(rng, specs, objects)
    layers = painter.draw(img, objects)
    return img, layers


def _check_args(n_train, n_val, image_size, n_classes, seed):
    for key, value, lo in (
        ("n_train", n_train, 1),
        ("n_val", n_val, 1),
        ("image_size", image_size, 32),
        ("n_classes", n_classes, 2),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ConfigError(f"synthetic.{key} must be a whole number >= {lo}, got {value!r}")
    if n_classes > MAX_CLASSES:
        raise ConfigError(f"synthetic.n_classes must be at most {MAX_CLASSES}, got {n_classes}")


def _plan(n: int, n_classes: int, rng: np.random.Generator) -> list[_Row]:
    """Per row of a split: its class (balanced), scene and background textures."""
    classes = rng.permutation(np.arange(n) % n_classes)
    scene_p, texture_p = zipf(len(SCENES), SCENE_ZIPF), zipf(len(TEXTURES), TEXTURE_ZIPF)
    rows = []
    for c in classes:
        home = rng.random() < P_HOME
        scene = int(c) % HOME_SCENES if home else int(rng.choice(len(SCENES), p=scene_p))
        textures: tuple[str, ...] = ()
        if rng.random() < P_TEXTURED:
            count = 2 if rng.random() < P_TWO_TEXTURES else 1
            picks = rng.choice(len(TEXTURES), size=count, replace=False, p=texture_p)
            textures = tuple(TEXTURES[i] for i in picks)
        rows.append(_Row(int(c), scene, textures))
    return rows


def generate(
    root: str | os.PathLike, *, n_train: int, n_val: int, image_size: int = 112, n_classes: int = 16, seed: int = 0
) -> None:
    """Write a synthetic Broden-format dataset to `root` (built beside it, then renamed into
    place, so an interrupted run leaves no partial dataset). Same arguments, same bytes."""
    _check_args(n_train, n_val, image_size, n_classes, seed)
    build_dataset_dir(root, lambda build: _write(build, n_train, n_val, image_size, n_classes, seed))
    log.info("synthetic dataset written to %s", root)


def _write(build: Path, n_train: int, n_val: int, image_size: int, n_classes: int, seed: int) -> None:
    vocab = vocabulary(n_classes)
    painter = _Painter(image_size, vocab)
    seg = painter.seg
    tally = LabelTally(vocab.n_labels, seg * seg)
    (build / "images" / "synthetic").mkdir(parents=True)
    records = []
    plan_rng = np.random.default_rng([seed, 0])
    splits = [("train", n_train, 1), ("val", n_val, 2)]
    with tqdm(total=n_train + n_val, desc="synthetic images", unit="img", disable=None) as bar:
        for split, n, code in splits:
            for i, row in enumerate(_plan(n, n_classes, plan_rng)):
                rng = np.random.default_rng([seed, code, i])
                stem = f"synthetic/{split}_{i:05d}"
                rec = {"image": f"{stem}.jpg", "split": split, "ih": image_size, "iw": image_size, "sh": seg, "sw": seg}
                rec.update({cat: "" for cat in CATEGORIES})
                img, layers = _compose(painter, rng, row)
                image_labels = {
                    "scene": [vocab.scene[SCENES[row.scene].name]],
                    "texture": [vocab.texture[t] for t in row.textures],
                }
                tally.add_image(build, rec, stem, image_labels, layers)
                rec["class"] = vocab.object[CLASSES[row.cls].name]
                pixels = np.clip(np.rint(img), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(build / "images" / rec["image"], quality=95)
                records.append(rec)
                bar.update(1)

    columns = [*INDEX_COLUMNS, "class"]
    pd.DataFrame(records, columns=columns).to_csv(build / "index.csv", index=False)
    write_labels(build, vocab, tally.freq, tally.cover, tally.category_images)


class LabelTally:
    """What label.csv and the c_<category>.csv files report, gathered image by image: per
    category, how many images hold each label (freq), the sum of its share of their pixels
    (cover; 1 per image for image-level labels), and how many images hold the category at all."""

    def __init__(self, n_labels: int, seg_pixels: int):
        self.n_labels, self.seg_pixels = n_labels, float(seg_pixels)
        self.freq = {cat: np.zeros(n_labels, dtype=np.int64) for cat in CATEGORIES}
        self.cover = {cat: np.zeros(n_labels, dtype=np.float64) for cat in CATEGORIES}
        self.category_images = {cat: 0 for cat in CATEGORIES}

    def add_image(self, build: Path, rec: dict, stem: str, image_labels: dict, layers: dict) -> None:
        """Write the image's non-empty mask layers as `<stem>_<name>.png`, fill its index row's
        category cells (`rec`) and count its labels."""
        for cat, numbers in image_labels.items():
            rec[cat] = ";".join(str(t) for t in numbers)
            self.freq[cat][numbers] += 1
            self.cover[cat][numbers] += 1.0
            self.category_images[cat] += bool(numbers)
        for name, layer in layers.items():
            if not layer.any():
                continue
            cat = name.split("_")[0]
            path = f"{stem}_{name}.png"
            Image.fromarray(encode_mask(layer)).save(build / "images" / path)
            rec[cat] = f"{rec[cat]};{path}" if rec[cat] else path
        for cat in PIXEL_CATEGORIES:
            mine = [layer for name, layer in layers.items() if name.split("_")[0] == cat]
            counts = sum(
                (np.bincount(layer.ravel(), minlength=self.n_labels) for layer in mine),
                np.zeros(self.n_labels, np.int64),
            )
            counts[0] = 0
            self.freq[cat] += counts > 0
            self.cover[cat] += counts / self.seg_pixels
            self.category_images[cat] += bool(counts.any())


def write_labels(build: Path, vocab: Vocabulary, freq: dict, cover: dict, category_images: dict) -> None:
    names: dict[int, str] = {}
    members: dict[str, list[int]] = {}
    for cat in CATEGORIES:
        suffix = "-s" if cat == "scene" else ""  # Broden's scene names end in -s
        entries = {n: f"{name}{suffix}" for name, n in getattr(vocab, cat).items()}
        members[cat] = sorted(entries)
        names.update(entries)

    label_rows = []
    for number in sorted(names):
        cats = [c for c in CATEGORIES if number in members[c]]
        cats.sort(key=lambda c: -freq[c][number])
        label_rows.append(
            {
                "number": number,
                "name": names[number],
                "category": ";".join(f"{c}({freq[c][number]})" for c in cats),
                "frequency": int(sum(freq[c][number] for c in cats)),
                "coverage": round(float(sum(cover[c][number] for c in cats)), 6),
                "syns": "",
            }
        )
    pd.DataFrame(label_rows).to_csv(build / "label.csv", index=False)

    cat_rows = []
    for cat in CATEGORIES:
        numbers = members[cat]
        pd.DataFrame(
            {
                "code": np.arange(1, len(numbers) + 1),
                "number": numbers,
                "name": [names[n] for n in numbers],
                "frequency": [int(freq[cat][n]) for n in numbers],
                "coverage": [round(float(cover[cat][n]), 6) for n in numbers],
            }
        ).to_csv(build / f"c_{cat}.csv", index=False)
        cat_rows.append(
            {
                "name": cat,
                "first": min(numbers),
                "last": max(numbers),
                "count": len(numbers),
                "frequency": category_images[cat],
            }
        )
    pd.DataFrame(cat_rows).to_csv(build / "category.csv", index=False)
