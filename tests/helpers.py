"""Helpers the test files share: random images, tiny networks, shard files, checkpoints.

Fixtures built on them live in conftest.py; test files import the plain functions from here
(`from helpers import write_shards`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from advdissect import store


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n uint8 images (n, 3, size, size), uniform over 0..255."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)


# ---------------------------------------------------------------- a unit's mask, one pixel at a time


def ref_weights(n_in: int, n_out: int, i: int) -> tuple[int, int, float, float]:
    """torch's bilinear, align_corners=False: (cell0, cell1, weight0, weight1) of output index i."""
    src = (n_in / n_out) * (i + 0.5) - 0.5
    src = max(src, 0.0)
    c0 = min(int(math.floor(src)), n_in - 1)
    c1 = c0 + 1 if c0 < n_in - 1 else c0
    w1 = min(max(src - c0, 0.0), 1.0)
    return c0, c1, 1.0 - w1, w1


def ref_upsample(a: np.ndarray, sh: int, sw: int) -> np.ndarray:
    """The 2-D map `a` resized bilinearly to (sh, sw), float64, one pixel at a time."""
    h, w = a.shape
    out = np.zeros((sh, sw))
    for i in range(sh):
        y0, y1, wy0, wy1 = ref_weights(h, sh, i)
        for j in range(sw):
            x0, x1, wx0, wx1 = ref_weights(w, sw, j)
            top = wx0 * float(a[y0, x0]) + wx1 * float(a[y0, x1])
            bottom = wx0 * float(a[y1, x0]) + wx1 * float(a[y1, x1])
            out[i, j] = wy0 * top + wy1 * bottom
    return out


def ref_mask(a: np.ndarray, t: float, sh: int, sw: int) -> set[tuple[int, int]]:
    """Set of active pixels (i, j) of the 2-D map `a` at threshold t: the upsampled value,
    rounded to float32, above t."""
    values = ref_upsample(a, sh, sw)
    return {(i, j) for i in range(sh) for j in range(sw) if float(np.float32(values[i, j])) > t}


# ---------------------------------------------------------------- networks


def tiny_vit(num_classes: int = 3, seed: int = 0):
    """A two-block ViT on 32 px images: 8 px patches (a 4 × 4 grid), 16 channels."""
    import torch
    import torchvision

    from advdissect.nets.architectures import NormalizedModel

    torch.manual_seed(seed)
    net = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=num_classes
    )
    return NormalizedModel(net, "tiny_vit", "none").eval()


def tiny_swin(num_classes: int = 3, seed: int = 0):
    """A two-stage Swin: on 32 px images features.1 is 8 × 8 × 8 and features.3 16 × 4 × 4."""
    import torch
    import torchvision

    from advdissect.nets.architectures import NormalizedModel

    torch.manual_seed(seed)
    net = torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2], num_classes=num_classes
    )
    return NormalizedModel(net, "tiny_swin", "none").eval()


def robustness_checkpoint(net, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> dict:
    """A checkpoint laid out as the madrylab robustness library saves one: its AttackerModel's
    state_dict under "model" (the network under module.model., the attacker's reference to the
    same network under module.attacker.model., and the normalisers' mean and std), beside the
    optimizer's state and the epoch."""
    import torch

    normal = {"new_mean": torch.tensor(mean).view(3, 1, 1), "new_std": torch.tensor(std).view(3, 1, 1)}
    state = {}
    for key, value in net.state_dict().items():
        state[f"module.model.{key}"] = value
        state[f"module.attacker.model.{key}"] = value
    for key, value in normal.items():
        state[f"module.normalizer.{key}"] = value
        state[f"module.attacker.normalize.{key}"] = value
    return {"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 90}


# ---------------------------------------------------------------- shard files


def write_shards(
    directory: str | Path,
    kind: str,
    identity: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    bounds: Sequence[tuple[int, int]],
    name: str = "{shard:04d}.h5",
) -> list[Path]:
    """Files of `kind` (images, activations, …), one per shard: shard s holds rows a:b of every
    array of `arrays` for (a, b) = bounds[s], and its identity is `identity` plus shard=s, as the
    workflow's jobs write them. `name` is formatted with the shard number. Returns the paths."""
    paths = []
    for shard, (a, b) in enumerate(bounds):
        path = Path(directory) / name.format(shard=shard)
        store.write_h5(path, kind, dict(identity, shard=shard), {key: value[a:b] for key, value in arrays.items()})
        paths.append(path)
    return paths


# ---------------------------------------------------------------- datasets


class StandInDataset:
    """In-memory segmentations standing in for a BrodenDataset where counting reads one
    (write_shard_counts, write_iou): segs[row] is (pixel layers, image-level labels)."""

    def __init__(self, segs, label_category, seg_size):
        self.segs = segs
        self.label_category = label_category
        self.n_labels = len(label_category)
        self.seg_size = seg_size
        self.label_names = [""] + [f"label{i}" for i in range(1, self.n_labels)]

    def load_segmentation(self, row):
        return self.segs[row]


IMAGEFOLDER_CLASSES = ("bee", "ant", "cat")  # listed in sorted order: ant, bee, cat


def make_imagefolder(root: Path, per_class=(8, 4), seed: int = 0) -> Path:
    """Non-square images of three classes in train/ and val/; class c is mostly colour channel c."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), per_class):
        for name in IMAGEFOLDER_CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            channel = sorted(IMAGEFOLDER_CLASSES).index(name)
            for i in range(n):
                h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
                pixels = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
                pixels[..., channel] += 180
                Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return root
