"""Shared fixtures: a tiny synthetic Broden-format dataset (generated once per test session), an
ImageFolder dataset and a ResNet-18 to save checkpoints of. Plain helpers are in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from advdissect.data.synthetic import generate

from helpers import make_imagefolder

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


@pytest.fixture
def tiny_imagefolder(tmp_path) -> Path:
    """An ImageFolder dataset: 3 classes, 8 training and 4 held-out images each, 20-39 px."""
    return make_imagefolder(tmp_path / "imagefolder")


@pytest.fixture(scope="module")
def robust_net():
    """A randomly initialised torchvision ResNet-18 with 3 classes (seed 0), in eval mode."""
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=3).eval()
