"""Shared fixtures: a tiny synthetic Broden-format dataset, generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

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
