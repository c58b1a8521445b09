"""Feature maps of a model's dissected layers for a shard of images.

One forward pass per batch with a forward hook on every layer; the pass stops right after the
last of them runs (later layers cannot change their outputs), so extracting any number of layers
costs at most one forward pass. Each image's activations depend on that image alone (eval mode),
so results do not depend on the batch size apart from the backend's own float rounding; on
out-of-memory the batch is halved and retried.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import store
from ..errors import ArtifactError, ModelError
from ..nets.device import in_batches, select_device
from ..nets.layers import layer_outputs
from ..nets.models import load_model_spec
from ..specs import ModelSpec

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16}


class _StopForward(Exception):
    """Raised by a hook once every wanted layer has run: nothing after them is needed."""


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ArtifactError(f"activation dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    return dtype


def _checked_input(images_uint8: np.ndarray, layers: Sequence[str], batch_size: int) -> tuple[np.ndarray, list[str]]:
    """The images as an array and the layers without repeats; ArtifactError when either, or the
    batch size, cannot be run."""
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise ArtifactError("no layers to extract")
    images = np.asarray(images_uint8)
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise ArtifactError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {images.shape}")
    if batch_size < 1:
        raise ArtifactError(f"batch_size must be >= 1, got {batch_size}")
    return images, layers


def extract_layers(
    model: nn.Module,
    images_uint8: np.ndarray,
    layers: Sequence[str],
    batch_size: int,
    device: torch.device | str,
    dtype: str | torch.dtype = "float32",
) -> dict[str, np.ndarray]:
    """{layer: activations (N, C, h, w)} for images (N, 3, H, W) uint8, as float32 or float16,
    from one forward pass per batch.

    `model` takes images in [0, 1] (normalisation inside) and should be in eval mode.
    """
    dtype = _torch_dtype(dtype)
    images, layers = _checked_input(images_uint8, layers, batch_size)
    device = torch.device(device)
    captured: dict[str, torch.Tensor] = {}

    def keep(layer: str, output: torch.Tensor) -> None:
        stops_here = len(captured) + 1 == len(layers)
        # A copy unless the pass stops here: it goes on to later layers, and an in-place
        # op after this one (AlexNet's ReLU(inplace=True)) would overwrite the output.
        captured[layer] = output.detach().to(dtype=dtype, copy=not stops_here)
        if stops_here:
            raise _StopForward

    n = images.shape[0]
    if n == 0:
        raise ArtifactError("no images to run")
    # On a GPU the maps go straight into page-locked host memory, asynchronously: a pageable
    # copy and a second host copy per batch cost more than the forward pass itself.
    pinned = device.type == "cuda"
    out: dict[str, torch.Tensor] = {}

    def run(start: int, stop: int) -> None:
        x = torch.from_numpy(np.ascontiguousarray(images[start:stop])).to(device)
        x = x.to(torch.float32).div_(255.0)
        captured.clear()
        try:
            model(x)
        except _StopForward:
            pass
        for layer in layers:
            if layer not in captured:
                raise ModelError(f"layer {layer!r} did not run in the forward pass")
            feats = captured[layer]
            if dtype == torch.float16 and not torch.isfinite(feats).all():
                raise ModelError(f"activations of layer {layer!r} overflow float16; store them as float32")
            if layer not in out:
                out[layer] = torch.empty((n,) + tuple(feats.shape[1:]), dtype=dtype, pin_memory=pinned)
            out[layer][start:stop].copy_(feats, non_blocking=pinned)
        captured.clear()

    with torch.no_grad(), layer_outputs(model, layers, keep):
        in_batches(n, batch_size, run)
    if pinned:
        torch.cuda.synchronize(device)
    return {layer: maps.numpy() for layer, maps in out.items()}


def extract_activations(
    model: nn.Module,
    images_uint8: np.ndarray,
    layer: str,
    batch_size: int,
    device: torch.device | str,
    dtype: str | torch.dtype = "float32",
) -> np.ndarray:
    """Activations (N, C, h, w) of one layer (`extract_layers` for a single layer)."""
    return extract_layers(model, images_uint8, [layer], batch_size, device, dtype)[layer]


@dataclass(frozen=True)
class ActivationJob:
    """What an activations job runs: the images shard with its `identity` (dataset, model,
    attack, shard), the model (`model_spec` with its weights file), the layers, the batch size
    and the stored dtype of the maps."""

    images_path: str | os.PathLike
    weights_file: str | os.PathLike | None
    model_spec: ModelSpec
    layers: Sequence[str]
    identity: Mapping[str, Any]
    batch_size: int
    dtype: str = "float32"


def write_activation_shard(
    out_path: str | os.PathLike,
    job: ActivationJob,
    *,
    device: torch.device | str | None = None,
    model: nn.Module | None = None,
) -> None:
    """Run a model on an images shard and write kind "activations": rows, and one dataset per
    layer (`store.layer_key`), all from one forward pass, written a block of batches at a time.

    `job.identity` must match the images shard; the output adds layers and dtype. `device`
    defaults to advdissect.nets.device.select_device(); `model` to
    advdissect.nets.models.load_model_spec(job.model_spec, job.weights_file).
    """
    if device is None:
        device = select_device()
    with store.open_h5(job.images_path, "images", expect=job.identity) as f:
        images = f["images"][()]
        rows = f["rows"][()].astype(np.int64)
    if images.shape[0] == 0:
        raise ArtifactError(f"{job.images_path}: holds no images")
    if model is None:
        model = load_model_spec(job.model_spec, job.weights_file)
    model = model.to(device).eval()
    layers = list(dict.fromkeys(job.layers))
    n = images.shape[0]
    with store.h5_writer(out_path, "activations", dict(job.identity, layers=layers, dtype=job.dtype)) as f:
        f.create_dataset("rows", data=rows, chunks=True, fletcher32=True)
        start, block = 0, job.batch_size
        while start < n:
            stop = min(n, start + block)
            acts = extract_layers(model, images[start:stop], layers, job.batch_size, device, job.dtype)
            if start == 0:
                for layer, maps in acts.items():
                    log.info("%s: %s activations %s of layer %s", out_path, job.dtype, (n, *maps.shape[1:]), layer)
                    store.create_rows(f, store.layer_key(layer), (n, *maps.shape[1:]), maps.dtype)
                block = block_images(sum(maps[0].nbytes for maps in acts.values()), job.batch_size)
            for layer, maps in acts.items():
                f[store.layer_key(layer)][start:stop] = maps
            start = stop


# Maps held in memory before they go to disk: a job's memory does not grow with its shard.
BLOCK_BYTES = 512 * 2**20


def block_images(bytes_per_image: int, batch_size: int) -> int:
    """Images per block of a shard's pass: whole batches (so the batches, and the results, are
    those of one pass over the shard) whose maps take about BLOCK_BYTES, at least one batch."""
    return batch_size * max(1, BLOCK_BYTES // max(1, bytes_per_image * batch_size))
