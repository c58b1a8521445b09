"""Models as the jobs use them: a network of a spec with its weights loaded, its predictions,
and weights fetched from a URL (checked by loading them into the model).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..data.download import RETRIES, WAIT, download_checked
from ..errors import ModelError
from ..specs import ModelSpec
from .architectures import NormalizedModel, build_network
from .weights import load_into, load_state_dict_file

log = logging.getLogger(__name__)


def load_model(
    arch: str,
    num_classes: int,
    weights_file: str | Path | None = None,
    normalization: str | Mapping = "imagenet",
    seed: int = 0,
    weights_sha256: str | None = None,
) -> NormalizedModel:
    """Build `arch`, load `weights_file` (or keep the init seeded by `seed`), in eval mode, on CPU.

    The seeded init leaves the caller's global RNG state untouched. `weights_sha256` pins the
    file's digest (see `check_sha256`).
    """
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only: torch.manual_seed would also reseed (and not restore) CUDA's.
        torch.default_generator.manual_seed(int(seed))
        net = build_network(arch, num_classes)
    if weights_file is not None:
        state = load_state_dict_file(weights_file, weights_sha256, normalization)
        load_into(net, state, weights_file, arch=arch, num_classes=num_classes)
    model = NormalizedModel(net, arch, normalization)
    model.eval()
    return model


def load_model_spec(model_spec: ModelSpec, weights_file: str | Path | None = None) -> NormalizedModel:
    """load_model from a job's model spec and weights file."""
    return load_model(
        model_spec.arch,
        model_spec.num_classes,
        weights_file=weights_file or None,
        normalization=model_spec.normalization,
        seed=model_spec.seed,
        weights_sha256=model_spec.weights_sha256,
    )


def softmax_prediction(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax int64, its softmax probability float32) per row of `logits`."""
    logits = logits.detach()
    pred = logits.argmax(dim=1)
    conf = torch.softmax(logits.float(), dim=1).gather(1, pred[:, None]).squeeze(1)
    return pred.to(torch.int64), conf.to(torch.float32)


def predict(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class int64, softmax probability of that class float32) for images `x`."""
    with torch.no_grad():
        return softmax_prediction(model(x))


def download_url_weights(
    url: str,
    dest: str | Path,
    model_spec: ModelSpec,
    *,
    retries: int = RETRIES,
    wait: float = WAIT,
    timeout: float = 60.0,
) -> None:
    """Fetch the weights file at `url` into `dest` (checked against the model's pinned sha256 and
    any record beside `dest`), check that it loads into the model, then record its sha256 beside it."""
    dest = Path(dest)
    digest = download_checked(
        [url],
        dest,
        lambda path: load_model_spec(model_spec, path),
        what="download",
        error=ModelError,
        sha256=model_spec.weights_sha256,
        retries=retries,
        wait=wait,
        timeout=timeout,
        hint="check the URL, or download the file by hand and use `weights: {source: file, path: ...}`",
    )
    log.info("wrote %s (sha256 %s)", dest, digest)
