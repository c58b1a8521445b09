"""Shared fixtures: a tiny synthetic Broden-format dataset, generated once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advdissect.synthetic import generate

TINY = dict(n_train=24, n_val=16, image_size=64, n_classes=16, seed=0)


@pytest.fixture(scope="session")
def tiny_broden_spec() -> dict:
    """The generate() arguments behind tiny_broden."""
    return dict(TINY)


@pytest.fixture(scope="session")
def tiny_broden(tmp_path_factory) -> Path:
    """Root of a 40-image synthetic dataset (64 px images, 32 px masks, 16 classes)."""
    root = tmp_path_factory.mktemp("broden") / "tiny"
    generate(root, **TINY)
    return root


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


@pytest.fixture
def tiny_imagefolder(tmp_path) -> Path:
    """An ImageFolder dataset: 3 classes, 8 training and 4 held-out images each, 20-39 px."""
    return make_imagefolder(tmp_path / "imagefolder")


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
