"""Feature maps of one layer for a shard of images.

One forward pass per batch with a forward hook on the layer; the pass stops right after the
layer (later layers cannot change its output), so extraction costs at most a forward pass.
Each image's activations depend on that image alone (eval mode), so results do not depend on
the batch size apart from the backend's own float rounding; on out-of-memory the batch is
halved and retried.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from . import store
from .device import in_batches, select_device
from .errors import ArtifactError, ModelError
from .models import hook_layer, load_model_spec
from .specs import ModelSpec

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16}


class _StopForward(Exception):
    """Raised by the hook: nothing after the layer is needed."""


def extract_activations(
    model: nn.Module,
    images_uint8: np.ndarray,
    layer: str,
    batch_size: int,
    device: torch.device | str,
    dtype: str | torch.dtype = "float32",
) -> np.ndarray:
    """Activations (N, C, h, w) of `layer` for images (N, 3, H, W) uint8, as float32 or float16.

    `model` takes images in [0, 1] (normalisation inside) and should be in eval mode.
    """
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ArtifactError(f"activation dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    images = np.asarray(images_uint8)
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise ArtifactError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {images.shape}")
    if batch_size < 1:
        raise ArtifactError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise ModelError(f"layer {layer!r} does not return a 4-D feature map (N, C, h, w); pick a conv layer")
        captured.append(output.detach())
        raise _StopForward

    n = images.shape[0]
    if n == 0:
        raise ArtifactError("no images to run")
    out: np.ndarray | None = None

    def run(start: int, stop: int) -> None:
        nonlocal out
        x = torch.from_numpy(np.ascontiguousarray(images[start:stop])).to(device)
        x = x.to(torch.float32).div_(255.0)
        captured.clear()
        try:
            model(x)
        except _StopForward:
            pass
        if not captured:
            raise ModelError(f"layer {layer!r} did not run in the forward pass")
        feats = captured.pop().to(dtype)
        if dtype == torch.float16 and not torch.isfinite(feats).all():
            raise ModelError(f"activations of layer {layer!r} overflow float16; store them as float32")
        feats = feats.cpu().numpy()
        if out is None:
            out = np.empty((n,) + feats.shape[1:], dtype=feats.dtype)
        out[start:stop] = feats

    with torch.no_grad(), hook_layer(model, layer, hook):
        in_batches(n, batch_size, run)
    return out


def write_activation_shard(
    out_path: str | os.PathLike,
    *,
    images_path: str | os.PathLike,
    weights_file: str | os.PathLike | None,
    model_spec: ModelSpec,
    layer: str,
    identity: Mapping[str, Any],
    batch_size: int,
    dtype: str = "float32",
    device: torch.device | str | None = None,
    model: nn.Module | None = None,
) -> None:
    """Run a model on an images shard and write kind "activations" (rows, activations).

    `identity` (dataset, model, attack, shard) must match the images shard; the output adds
    layer and dtype. `device` defaults to advdissect.device.select_device(); `model` to
    advdissect.models.load_model_spec(model_spec, weights_file).
    """
    if device is None:
        device = select_device()
    with store.open_h5(images_path, "images", expect=identity) as f:
        images = f["images"][()]
        rows = f["rows"][()].astype(np.int64)
    if images.shape[0] == 0:
        raise ArtifactError(f"{images_path}: holds no images")
    if model is None:
        model = load_model_spec(model_spec, weights_file)
    model = model.to(device).eval()
    acts = extract_activations(model, images, layer, batch_size, device, dtype)
    log.info("%s: %s activations %s of layer %s", out_path, dtype, acts.shape, layer)
    attrs = dict(identity, layer=layer, dtype=dtype)
    store.write_h5(out_path, "activations", attrs, {"rows": rows, "activations": acts})
