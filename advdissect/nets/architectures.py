"""Architectures: torchvision's classifiers and the stand-ins, built with random weights, and
the input normalisation every network is wrapped in.

Every network is wrapped in `NormalizedModel`, which takes images in [0, 1] and normalises
them inside, so attacks, their ε and the stored images all live in pixel space.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torchvision
from torch import nn

from ..errors import ModelError
from .stand_ins import STAND_INS

NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def list_architectures() -> list[str]:
    """Names of torchvision's classification models (e.g. alexnet, vgg11, resnet18), then the
    stand-ins of `advdissect.nets.stand_ins` (resnet18_shapes, vit_tiny, swin_tiny)."""
    return list(torchvision.models.list_models(module=torchvision.models)) + list(STAND_INS)


def build_network(arch: str, num_classes: int) -> nn.Module:
    """A randomly initialised torchvision classifier with `num_classes` outputs."""
    valid = list_architectures()
    if arch not in valid:
        raise ModelError(f"unknown architecture {arch!r}; valid names: {', '.join(valid)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive integer, got {num_classes!r} (arch {arch})")
    if arch in STAND_INS:
        return STAND_INS[arch](num_classes=int(num_classes))
    return torchvision.models.get_model(arch, weights=None, num_classes=int(num_classes))


def resolve_normalization(
    normalization: str | Mapping[str, Sequence[float]],
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) for a name in NORMALIZATIONS or a dict {"mean": [3 floats], "std": [3 floats]}."""
    allowed = f"allowed: {', '.join(NORMALIZATIONS)} or {{'mean': [3 floats], 'std': [3 floats > 0]}}"
    if isinstance(normalization, str):
        if normalization not in NORMALIZATIONS:
            raise ModelError(f"unknown normalization {normalization!r}; {allowed}")
        return NORMALIZATIONS[normalization]
    if isinstance(normalization, Mapping) and set(normalization) == {"mean", "std"}:
        try:
            mean = tuple(float(v) for v in normalization["mean"])
            std = tuple(float(v) for v in normalization["std"])
        except (TypeError, ValueError):
            raise ModelError(f"normalization {dict(normalization)!r} is not numeric; {allowed}") from None
        if len(mean) == 3 and len(std) == 3 and all(s > 0 for s in std) and all(map(math.isfinite, mean + std)):
            return mean, std
    raise ModelError(f"normalization {normalization!r} cannot be used; {allowed}")


class NormalizedModel(nn.Module):
    """A classifier that takes float images in [0, 1] (NCHW) and normalises them inside."""

    def __init__(self, net: nn.Module, arch: str, normalization: str | Mapping = "imagenet"):
        super().__init__()
        mean, std = resolve_normalization(normalization)
        self.net = net
        self.arch = arch
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ModelError(
                f"{self.arch} expects float images in [0, 1] shaped (N, 3, H, W); got {x.dtype} {tuple(x.shape)}"
            )
        return self.net((x - self.mean) / self.std)
