"""A synthetic dataset in the Broden format, small enough to train and dissect on a CPU.

Each scene image shows a few objects on a plain, unlabelled background. A scene is a
signature (object shape, material, colour): three objects of the scene's shape, filled with
the scene's material in the scene's colour, plus one or two distractor objects whose shapes
never sign a scene and whose material and colour differ from the scene's. The (shape,
material) pair alone identifies the scene; the colour, shared by two or three scenes, makes
the scene quick to learn from scratch. The background carries no information. A tenth of
the rows are pure texture images (one or two periodic patterns over the whole image, no
scene), like the DTD rows of the real Broden.

Concept labels (Broden categories):
  color    the colour of an object's body (never the background)
  object   the object's shape; `knob` (a small black disc) is both an object and a part
  part     layer 1: rim (light outline), knob (black centre disc);
           layer 2: cap (top of the object, lighter), base (bottom, darker)
  material the fill pattern of an object's body
  scene    image-level, one per scene image; texture rows have scene `0` or none
  texture  image-level, one or two per texture image

Every pixel concept stays small (each object covers 1-5 % of the image, a concept at most a
few percent of all pixels), because a unit's mask covers about 0.5 % of the pixels and
IoU against a concept covering a fraction c of all pixels is at most 0.005 / c.

Label numbers come in fixed blocks, so materials sit above 255 and their masks need the
G channel (R + 256*G), as labels >= 256 do in the real Broden:
  color 1-10, object 21-32, part 41-43 (+ knob 32), scene 101-148, texture 201-210,
  material 301-306.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from .broden import CATEGORIES, PIXEL_CATEGORIES, check_dataset_dest, encode_mask, install_dataset_dir
from .errors import ConfigError

log = logging.getLogger(__name__)

COLORS = {
    "red": (205, 30, 35), "orange": (245, 135, 20), "yellow": (240, 215, 35),
    "lime": (150, 225, 45), "green": (30, 130, 50), "cyan": (40, 200, 215),
    "blue": (35, 70, 205), "purple": (120, 45, 175), "magenta": (225, 50, 190),
    "brown": (125, 70, 30),
}
SIGNATURE_SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "crescent")
DISTRACTOR_SHAPES = ("bar", "arrow", "tee", "knob")
DISTRACTOR_WEIGHTS = np.array([1.0, 1.0, 1.0, 0.4])
PARTS = ("rim", "cap", "base")  # plus knob, shared with the object category
MATERIALS = ("wood", "brick", "fabric", "metal", "stone", "plastic")
TEXTURES = ("striped", "banded", "chequered", "dotted", "grid", "zigzagged", "wavy",
            "crosshatched", "spiralled", "lined")

COLOR_START, OBJECT_START, PART_START = 1, 21, 41
SCENE_START, TEXTURE_START, MATERIAL_START = 101, 201, 301
MAX_SCENES = len(SIGNATURE_SHAPES) * len(MATERIALS)
TEXTURE_FRACTION = 0.1
SIGNATURE_OBJECTS = 3

RIM_RGB = np.array([238, 238, 232], dtype=np.float32)
KNOB_RGB = np.array([22, 22, 22], dtype=np.float32)


@dataclass(frozen=True)
class Vocabulary:
    """Label numbers and names of the synthetic dataset."""

    color: dict
    object: dict
    part: dict
    material: dict
    scene: dict  # number -> (shape, material, colour)
    texture: dict

    @property
    def n_labels(self) -> int:
        return MATERIAL_START + len(MATERIALS)


def vocabulary(n_scenes: int) -> Vocabulary:
    objects = SIGNATURE_SHAPES + DISTRACTOR_SHAPES
    obj = {name: OBJECT_START + i for i, name in enumerate(objects)}
    part = {name: PART_START + i for i, name in enumerate(PARTS)}
    part["knob"] = obj["knob"]
    return Vocabulary(
        color={name: COLOR_START + i for i, name in enumerate(COLORS)},
        object=obj,
        part=part,
        material={name: MATERIAL_START + i for i, name in enumerate(MATERIALS)},
        scene={SCENE_START + i: scene_signature(i) for i in range(n_scenes)},
        texture={name: TEXTURE_START + i for i, name in enumerate(TEXTURES)},
    )


def scene_signature(i: int) -> tuple[str, str, str]:
    """(shape, material, colour) of scene i. The (shape, material) pairs are unique for
    i < 48; for 24 scenes every shape signs 3 scenes, every material 4, every colour 2-3,
    and scenes that share a colour differ in shape."""
    s, m = len(SIGNATURE_SHAPES), len(MATERIALS)
    colors = list(COLORS)
    return SIGNATURE_SHAPES[i % s], MATERIALS[(i // s + i % s) % m], colors[i % len(colors)]


# Shapes: inside-tests in object coordinates (u, v), radius 1, v pointing down.
# Radius of each shape's bounding circle, in units of its radius.
EXTENT = {"circle": 0.95, "knob": 0.95, "square": 1.14, "triangle": 1.2, "star": 1.15,
          "cross": 1.05, "ring": 1.0, "diamond": 1.15, "crescent": 1.0, "bar": 1.18,
          "arrow": 1.12, "tee": 1.35}


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
        return (((np.abs(u) <= 0.95) & (v >= -0.95) & (v <= -0.55))
                | ((np.abs(u) <= 0.22) & (v >= -0.55) & (v <= 0.95)))
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


def _texture(name: str, x: np.ndarray, y: np.ndarray, period: float, angle: float,
             cx: float, cy: float) -> np.ndarray:
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
    cx: float
    cy: float
    radius: float
    angle: float
    color: str | None
    material: str | None
    rim: bool
    knob: bool
    cap: bool
    base: bool
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
    out = {"inside": inside, "u": u * obj.radius, "v": v * obj.radius, "dy": dy}
    rim = np.zeros_like(inside)
    if obj.rim:
        w = rim_px / obj.radius
        eroded = inside.copy()
        for a in range(8):
            eroded &= _shape(obj.shape, u + w * math.cos(a * math.pi / 4), v + w * math.sin(a * math.pi / 4))
        rim = inside & ~eroded
    knob = np.zeros_like(inside)
    if obj.knob:
        knob = inside & (u * u + v * v <= 0.3**2) & ~rim
    out["rim"], out["knob"] = rim, knob
    out["body"] = inside & ~rim & ~knob
    out["cap"] = inside & (dy < -0.35 * obj.radius) if obj.cap else np.zeros_like(inside)
    out["base"] = inside & (dy > 0.35 * obj.radius) if obj.base else np.zeros_like(inside)
    return out


def _span(centre: float, reach: float, coords: np.ndarray) -> slice:
    return slice(int(np.searchsorted(coords, centre - reach)), int(np.searchsorted(coords, centre + reach)))


class _Painter:
    """Draws one image and its pixel-level label layers."""

    def __init__(self, image_size: int, vocab: Vocabulary):
        self.size = image_size
        self.seg = image_size // 2
        self.k = image_size / 112.0
        self.vocab = vocab
        self.img_coords = np.arange(image_size, dtype=np.float32) + 0.5
        self.seg_coords = (np.arange(self.seg, dtype=np.float32) + 0.5) * (image_size / self.seg)
        self.rim_px = max(1.0, 2.0 * self.k)

    def background(self, rng: np.random.Generator) -> np.ndarray:
        # Low-saturation grey with a gentle gradient and grain: never a colour concept.
        grey = rng.uniform(95, 165)
        tint = rng.uniform(-12, 12, size=3)
        ramp = np.linspace(-1, 1, self.size, dtype=np.float32) * rng.uniform(-15, 15)
        img = np.empty((self.size, self.size, 3), dtype=np.float32)
        img[...] = grey + tint
        img += ramp[:, None, None] if rng.random() < 0.5 else ramp[None, :, None]
        img += rng.normal(0, 3.0, size=img.shape).astype(np.float32)
        return img

    def place(self, rng: np.random.Generator, specs: list[tuple], placed: list[_Object]) -> None:
        """Add objects without overlaps (rejection sampling on bounding circles; an object
        that finds no room after 200 tries is dropped)."""
        for shape, radius, color, material, parts, angle_range in specs:
            reach = EXTENT[shape] * radius
            for _ in range(200):
                cx, cy = rng.uniform(reach + 1, self.size - reach - 1, size=2)
                if all(math.hypot(cx - o.cx, cy - o.cy) > reach + EXTENT[o.shape] * o.radius + 1.5 * self.k
                       for o in placed):
                    break
            else:
                continue
            placed.append(_Object(shape, float(cx), float(cy), radius,
                                  float(rng.uniform(-angle_range, angle_range)), color, material,
                                  *parts, salt=float(rng.uniform(0, 100))))

    def draw(self, img: np.ndarray, objects: list[_Object]) -> dict:
        seg = self.seg
        layers = {name: np.zeros((seg, seg), dtype=np.int32)
                  for name in ("color", "object", "part_1", "part_2", "material")}
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
                p = _material(obj.material, reg["u"], reg["v"], self.k, obj.salt)
                shade = (0.5 + 0.5 * p)[..., None] * rgb
                shade = np.where(reg["cap"][..., None], np.minimum(shade * 1.3 + 25, 255), shade)
                shade = np.where(reg["base"][..., None], shade * 0.7, shade)
                body = reg["body"]
                patch[body] = shade[body]
                patch[reg["rim"]] = RIM_RGB
                patch[reg["knob"]] = KNOB_RGB

            ys, xs = _span(obj.cy, reach, self.seg_coords), _span(obj.cx, reach, self.seg_coords)
            reg = _object_regions(obj, self.seg_coords[xs], self.seg_coords[ys], self.rim_px)
            layers["object"][ys, xs][reg["inside"]] = v.object[obj.shape]
            if obj.shape == "knob":
                continue
            layers["color"][ys, xs][reg["body"]] = v.color[obj.color]
            layers["material"][ys, xs][reg["body"]] = v.material[obj.material]
            layers["part_1"][ys, xs][reg["rim"]] = v.part["rim"]
            layers["part_1"][ys, xs][reg["knob"]] = v.part["knob"]
            layers["part_2"][ys, xs][reg["cap"]] = v.part["cap"]
            layers["part_2"][ys, xs][reg["base"]] = v.part["base"]
        return layers


def _object_parts(rng: np.random.Generator, shape: str) -> tuple[bool, bool, bool, bool]:
    rim = rng.random() < 0.45
    knob = shape not in ("ring", "crescent", "bar", "arrow", "tee") and rng.random() < 0.6
    cap = rng.random() < 0.3
    base = rng.random() < 0.3
    return rim, knob, cap, base


def _scene_image(painter: _Painter, rng: np.random.Generator, scene_number: int):
    vocab = painter.vocab
    shape, material, color = vocab.scene[scene_number]
    k = painter.k
    specs = []
    for _ in range(SIGNATURE_OBJECTS):
        specs.append((shape, 16.0 * k * rng.uniform(0.85, 1.15), color, material,
                      _object_parts(rng, shape), math.radians(20)))
    other_colors = [c for c in COLORS if c != color]
    other_materials = [m for m in MATERIALS if m != material]
    weights = DISTRACTOR_WEIGHTS / DISTRACTOR_WEIGHTS.sum()
    for _ in range(int(rng.integers(1, 3))):
        d = DISTRACTOR_SHAPES[rng.choice(len(DISTRACTOR_SHAPES), p=weights)]
        radius = (5.0 if d == "knob" else 11.0) * k * rng.uniform(0.85, 1.15)
        parts = (False, False, False, False) if d == "knob" else _object_parts(rng, d)
        specs.append((d, radius, other_colors[rng.integers(len(other_colors))],
                      other_materials[rng.integers(len(other_materials))], parts, math.pi))
    img = painter.background(rng)
    objects: list[_Object] = []
    painter.place(rng, specs, objects)
    layers = painter.draw(img, objects)
    return img, layers


def _texture_image(painter: _Painter, rng: np.random.Generator, names: list[str]):
    n = painter.size
    x = painter.img_coords[None, :]
    y = painter.img_coords[:, None]
    k = painter.k

    def pattern(name):
        return _texture(name, x, y, period=float(rng.uniform(7, 12) * k),
                        angle=float(rng.uniform(math.radians(25), math.radians(65))),
                        cx=float(rng.uniform(0, n)), cy=float(rng.uniform(0, n)))

    c1, c2, c3 = (rng.uniform(20, 235, size=3).astype(np.float32) for _ in range(3))
    p = pattern(names[0])[..., None]
    img = c1 * p + c2 * (1 - p)
    if len(names) > 1:
        q = pattern(names[1])[..., None] > 0.5
        img = np.where(q, 0.35 * img + 0.65 * c3, img)
    img = np.broadcast_to(img, (n, n, 3)).astype(np.float32)
    img = img + rng.normal(0, 3.0, size=img.shape).astype(np.float32)
    return img


def _check_args(n_train, n_val, image_size, n_scenes, seed):
    for key, value, lo in (("n_train", n_train, 1), ("n_val", n_val, 1), ("image_size", image_size, 32),
                           ("n_scenes", n_scenes, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ConfigError(f"synthetic.{key} must be a whole number >= {lo}, got {value!r}")
    if n_scenes > MAX_SCENES:
        raise ConfigError(f"synthetic.n_scenes must be at most {MAX_SCENES} "
                          f"({len(SIGNATURE_SHAPES)} shapes x {len(MATERIALS)} materials), got {n_scenes}")


def _plan(n: int, n_scenes: int, rng: np.random.Generator) -> list:
    """Per row of a split: ('scene', number) or ('texture', [names], scene cell)."""
    n_texture = int(round(TEXTURE_FRACTION * n)) if n >= 10 else min(1, n - 1)
    n_scene = n - n_texture
    scenes = SCENE_START + np.arange(n_scene) % n_scenes  # balanced
    rows = [("scene", int(s)) for s in scenes]
    for t in range(n_texture):
        count = 2 if t % 3 == 1 else 1  # a third of the texture rows carry two textures
        names = [TEXTURES[i] for i in rng.choice(len(TEXTURES), size=count, replace=False)]
        rows.append(("texture", names, "0" if t % 2 == 0 else ""))
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def generate(root: str | os.PathLike, *, n_train: int, n_val: int, image_size: int = 112,
             n_scenes: int = 24, seed: int = 0) -> None:
    """Write a synthetic Broden-format dataset to `root` (built beside it, then renamed into
    place, so an interrupted run leaves no partial dataset). Same arguments, same bytes."""
    _check_args(n_train, n_val, image_size, n_scenes, seed)
    root = Path(root)
    check_dataset_dest(root)  # fail before the work, not after it
    root.parent.mkdir(parents=True, exist_ok=True)
    build = root.parent / f".{root.name}.building-{uuid.uuid4().hex[:8]}"
    build.mkdir()
    try:
        _write(build, n_train, n_val, image_size, n_scenes, seed)
        install_dataset_dir(build, root)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    log.info("synthetic dataset written to %s", root)


def _write(build: Path, n_train: int, n_val: int, image_size: int, n_scenes: int, seed: int) -> None:
    vocab = vocabulary(n_scenes)
    painter = _Painter(image_size, vocab)
    seg = painter.seg
    n_labels = vocab.n_labels
    freq = {cat: np.zeros(n_labels, dtype=np.int64) for cat in CATEGORIES}
    cover = {cat: np.zeros(n_labels, dtype=np.float64) for cat in CATEGORIES}
    category_images = {cat: 0 for cat in CATEGORIES}
    (build / "images" / "synthetic").mkdir(parents=True)
    records = []
    plan_rng = np.random.default_rng([seed, 0])
    splits = [("train", n_train, 1), ("val", n_val, 2)]
    total = n_train + n_val
    with tqdm(total=total, desc="synthetic images", unit="img", disable=None) as bar:
        for split, n, code in splits:
            for i, item in enumerate(_plan(n, n_scenes, plan_rng)):
                rng = np.random.default_rng([seed, code, i])
                stem = f"synthetic/{split}_{i:05d}"
                rec = {"image": f"{stem}.jpg", "split": split, "ih": image_size, "iw": image_size,
                       "sh": seg, "sw": seg}
                rec.update({cat: "" for cat in CATEGORIES})
                if item[0] == "scene":
                    img, layers = _scene_image(painter, rng, item[1])
                    rec["scene"] = str(item[1])
                    freq["scene"][item[1]] += 1
                    cover["scene"][item[1]] += 1.0
                    for name in ("color", "object", "part_1", "part_2", "material"):
                        layer = layers[name]
                        if not layer.any():
                            continue
                        cat = name.split("_")[0]
                        path = f"{stem}_{name}.png"
                        Image.fromarray(encode_mask(layer)).save(build / "images" / path)
                        rec[cat] = f"{rec[cat]};{path}" if rec[cat] else path
                    for cat in PIXEL_CATEGORIES:
                        names = [n_ for n_ in layers if n_.split("_")[0] == cat]
                        counts = sum(np.bincount(layers[n_].ravel(), minlength=n_labels) for n_ in names)
                        counts[0] = 0
                        freq[cat] += counts > 0
                        cover[cat] += counts / float(seg * seg)
                        category_images[cat] += bool(counts.any())
                    category_images["scene"] += 1
                else:
                    _, names, scene_cell = item
                    img = _texture_image(painter, rng, names)
                    numbers = [vocab.texture[t] for t in names]
                    rec["texture"] = ";".join(str(t) for t in numbers)
                    rec["scene"] = scene_cell
                    freq["texture"][numbers] += 1
                    cover["texture"][numbers] += 1.0
                    category_images["texture"] += 1
                pixels = np.clip(np.rint(img), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(build / "images" / rec["image"], quality=95)
                records.append(rec)
                bar.update(1)

    columns = ["image", "split", "ih", "iw", "sh", "sw", *CATEGORIES]
    pd.DataFrame(records, columns=columns).to_csv(build / "index.csv", index=False)
    _write_labels(build, vocab, freq, cover, category_images)


def _write_labels(build: Path, vocab: Vocabulary, freq: dict, cover: dict, category_images: dict) -> None:
    names: dict[int, str] = {}
    members: dict[str, list[int]] = {}
    for cat in CATEGORIES:
        mapping = getattr(vocab, cat)
        if cat == "scene":
            entries = {n: f"{shape}_{material}-s" for n, (shape, material, _) in mapping.items()}
        else:
            entries = {n: name for name, n in mapping.items()}
        members[cat] = sorted(entries)
        names.update(entries)

    label_rows = []
    for number in sorted(names):
        cats = [c for c in CATEGORIES if number in members[c]]
        cats.sort(key=lambda c: -freq[c][number])
        label_rows.append({
            "number": number, "name": names[number],
            "category": ";".join(f"{c}({freq[c][number]})" for c in cats),
            "frequency": int(sum(freq[c][number] for c in cats)),
            "coverage": round(float(sum(cover[c][number] for c in cats)), 6),
            "syns": "",
        })
    pd.DataFrame(label_rows).to_csv(build / "label.csv", index=False)

    cat_rows = []
    for cat in CATEGORIES:
        numbers = members[cat]
        pd.DataFrame({
            "code": np.arange(1, len(numbers) + 1),
            "number": numbers,
            "name": [names[n] for n in numbers],
            "frequency": [int(freq[cat][n]) for n in numbers],
            "coverage": [round(float(cover[cat][n]), 6) for n in numbers],
        }).to_csv(build / f"c_{cat}.csv", index=False)
        cat_rows.append({"name": cat, "first": min(numbers), "last": max(numbers),
                         "count": len(numbers), "frequency": category_images[cat]})
    pd.DataFrame(cat_rows).to_csv(build / "category.csv", index=False)
