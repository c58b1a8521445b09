"""Ablation test of concept drift: do the units whose concept changes under an attack carry it?

For one model, layer and attack: on the attacked images, the feature maps of a set of units are
replaced by their mean map over the clean images (mean ablation), and the predictions are
compared with the clean predictions. `restored` is the share of the images the attack flipped
whose prediction returns to the clean one; `kept` the share of the other images whose
prediction stays the clean one. The sets: per threshold mode, the drifted units (clean
detectors whose concept under the attack changed or was lost), and as control as many units
drawn at random, several times.

All sets share one forward pass up to the layer: the hook stacks the variants along the batch,
and the rest of the network runs on the stack (eval mode: each image's output depends on that
image alone). A layer whose output meets the block's input again (a module inside a residual
block) cannot take the stack; then each variant runs its own forward pass. A transformer
block's output is edited as a map too (`models.layer_outputs`: a ViT's patch tokens on their
grid, the class token kept; a Swin stage's channels-last map) and written back in its own
layout; encoder blocks and Swin stages keep their residual sums inside, so they take the stack.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import store
from ..errors import ArtifactError
from ..nets.device import in_batches, is_out_of_memory
from ..nets.layers import layer_outputs
from ..nets.models import load_model_spec
from ..specs import ModelSpec
from .drift import concept_drift
from .tally import read_units

log = logging.getLogger(__name__)

ABLATION_COLUMNS = [
    "dataset",
    "model",
    "layer",
    "attack",
    "threshold_mode",
    "units_set",
    "seed",
    "ablated",
    "units",
    "images",
    "flipped",
    "restored",
    "restored_percent",
    "kept_percent",
]

DRIFTED = ("changed", "lost")


def drifted_units(clean_units: pd.DataFrame, attack_units: pd.DataFrame) -> np.ndarray:
    """0-based indices of the clean detectors whose concept the attack changed or removed."""
    drift = concept_drift(clean_units, attack_units)
    return np.sort(drift.loc[drift["status"].isin(DRIFTED), "unit"].to_numpy(np.int64) - 1)


def random_units(n_units: int, k: int, seed: int) -> np.ndarray:
    """k of n_units drawn without replacement; depends on (n_units, k, seed) only."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(n_units), int(k)]))
    return np.sort(rng.choice(n_units, size=k, replace=False))


# Clean maps read at once: the job's memory does not grow with the shard or the layer's maps.
BLOCK_BYTES = 128 * 2**20


def _shard_sum(acts) -> np.ndarray:
    """Sum over the images of a shard (array or HDF5 dataset), read a block of rows at a time
    and added in row order, so the sum is bit for bit numpy's sum of the whole shard."""
    total = None
    for start, stop in store.row_blocks(acts.shape, 8, BLOCK_BYTES):
        block = np.asarray(acts[start:stop], np.float64)
        total = block.sum(axis=0) if total is None else np.concatenate([total[None], block]).sum(axis=0)
    return total


def mean_map(activation_shards: Iterable[Any]) -> np.ndarray:
    """(C, h, w) float64 mean of the clean feature maps over all images (shards: arrays or
    HDF5 datasets)."""
    total, n = None, 0
    for acts in activation_shards:
        if acts.shape[0] == 0:
            continue
        shard = _shard_sum(acts)
        total = shard if total is None else total + shard
        n += acts.shape[0]
    if total is None or n == 0:
        raise ArtifactError("no clean activations to average")
    return total / n


class _Ablate:
    """Forward hook replacing the masked units' maps by the mean map, all variants stacked."""

    def __init__(self, masks: torch.Tensor, mean: torch.Tensor, stacked: bool):
        self.masks, self.mean, self.stacked = masks, mean, stacked
        self.variant = 0

    def __call__(self, _layer: str, output: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(output.dtype)
        if not self.stacked:
            return torch.where(self.masks[self.variant][None, :, None, None], mean[None], output)
        v, (b, c, h, w) = len(self.masks), output.shape
        out = torch.where(self.masks[:, None, :, None, None], mean[None, None], output[None])
        return out.reshape(v * b, c, h, w)


def ablated_predictions(
    model: nn.Module,
    images_uint8: np.ndarray | ShardedImages,
    layer: str,
    masks: np.ndarray,
    mean: np.ndarray,
    batch_size: int,
    device: torch.device | str = "cpu",
    stacked: bool | None = None,
) -> np.ndarray:
    """(V, N) predicted classes with the units of masks[v] (V, C) bool mean-ablated.

    stacked: None tries one stacked pass per batch and falls back to a pass per variant.
    """
    device = torch.device(device)
    masks_t = torch.as_tensor(np.asarray(masks, bool), device=device)
    mean_t = torch.as_tensor(np.asarray(mean, np.float32), device=device)
    if masks_t.ndim != 2 or masks_t.shape[1] != mean_t.shape[0]:
        raise ArtifactError(f"masks of shape {tuple(masks_t.shape)} for {mean_t.shape[0]} units")
    hook = _Ablate(masks_t, mean_t, stacked=stacked is not False)
    n, v = images_uint8.shape[0], masks_t.shape[0]
    out = np.empty((v, n), np.int64)

    def run(start: int, stop: int) -> None:
        x = torch.from_numpy(np.ascontiguousarray(images_uint8[start:stop])).to(device)
        x = x.to(torch.float32).div_(255.0)
        if hook.stacked:
            try:
                logits = model(x)
                out[:, start:stop] = logits.argmax(1).reshape(v, stop - start).cpu().numpy()
                return
            except RuntimeError as exc:
                if stacked or start > 0 or is_out_of_memory(exc):
                    raise
                log.info("layer %s cannot take stacked variants (%s); one pass per variant", layer, exc)
                hook.stacked = False
        for k in range(v):
            hook.variant = k
            out[k, start:stop] = model(x).argmax(1).cpu().numpy()

    with torch.no_grad(), layer_outputs(model, [layer], hook):
        in_batches(n, batch_size, run)
    return out


def ablation_sets(
    unit_tables: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]], n_units: int, random_sets: int
) -> list[dict[str, Any]]:
    """The unit sets to ablate: per threshold mode, the drifted units and `random_sets` random sets of their size.

    unit_tables: {mode: (clean units, attack units)}.
    """
    sets = []
    for mode, (clean, attack) in unit_tables.items():
        drifted = drifted_units(clean, attack)
        if len(clean) != n_units:
            raise ArtifactError(f"units table of {len(clean)} units for a layer of {n_units}")
        sets.append({"threshold_mode": mode, "units_set": "drifted", "seed": None, "units": drifted})
        for seed in range(random_sets):
            picked = random_units(n_units, len(drifted), seed)
            sets.append({"threshold_mode": mode, "units_set": "random", "seed": seed, "units": picked})
    return sets


def ablation_table(
    sets: Sequence[Mapping[str, Any]], predictions: np.ndarray, clean_pred: np.ndarray, n_units: int
) -> pd.DataFrame:
    """Rows per set from predictions (1 + len(sets), N): row 0 unablated, then one row per set."""
    clean_pred = np.asarray(clean_pred)
    flipped = predictions[0] != clean_pred
    n_flipped = int(flipped.sum())
    rows = []
    for s, pred in zip(sets, predictions[1:]):
        agree = pred == clean_pred
        restored = int(np.sum(agree & flipped))
        rows.append(
            {
                "threshold_mode": s["threshold_mode"],
                "units_set": s["units_set"],
                "seed": s["seed"],
                "ablated": len(s["units"]),
                "units": n_units,
                "images": int(len(clean_pred)),
                "flipped": n_flipped,
                "restored": restored,
                "restored_percent": 100.0 * restored / n_flipped if n_flipped else float("nan"),
                "kept_percent": 100.0 * np.sum(agree & ~flipped) / max(1, len(clean_pred) - n_flipped),
            }
        )
    frame = pd.DataFrame(rows)
    frame["seed"] = frame["seed"].astype("Int64")  # written as 0, 1, ... and empty for the drifted set
    return frame


# ---------------------------------------------------------------- files


class ShardedImages:
    """An attack's images across its shard files, read one range of rows at a time, so the
    ablation holds a batch of images rather than the whole attack; with their clean and
    adversarial predictions (small) in memory."""

    def __init__(self, paths: Sequence[str | os.PathLike], expect: Mapping[str, Any]):
        self.paths, self.expect = [str(p) for p in paths], dict(expect)
        sizes, clean, adv = [], [], []
        image_shape: tuple[int, ...] = ()
        for shard, path in enumerate(self.paths):
            with store.open_h5(path, "images", expect=dict(self.expect, shard=shard)) as f:
                sizes.append(f["images"].shape[0])
                image_shape = tuple(f["images"].shape[1:])
                clean.append(f["clean_pred"][()])
                adv.append(f["adv_pred"][()])
        if not sizes:
            raise ArtifactError("no image shards to ablate")
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.shape = (int(self.starts[-1]), *image_shape)
        self.clean_pred, self.adv_pred = np.concatenate(clean), np.concatenate(adv)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        parts = []
        for shard, path in enumerate(self.paths):
            a, b = max(start, self.starts[shard]), min(stop, self.starts[shard + 1])
            if a < b:
                with store.open_h5(path, "images", expect=dict(self.expect, shard=shard)) as f:
                    parts.append(f["images"][a - self.starts[shard] : b - self.starts[shard]])
        return np.concatenate(parts) if parts else np.zeros((0, *self.shape[1:]), np.uint8)


@dataclass(frozen=True)
class AblationJob:
    """What an ablation job reads: one attack's image shards (`images_paths`), the layer's
    activation shards of the clean set `clean_attack`, per threshold mode the (clean units csv,
    attack units csv), the model (`model_spec` with its weights file), the identity (dataset,
    model, attack, layer), how many random unit sets and the batch size."""

    images_paths: Sequence[str | os.PathLike]
    clean_activation_paths: Sequence[str | os.PathLike]
    units_paths: Mapping[str, tuple[str | os.PathLike, str | os.PathLike]]
    weights_file: str | os.PathLike | None
    model_spec: ModelSpec
    identity: Mapping[str, Any]
    random_sets: int
    batch_size: int
    clean_attack: str = "clean"


def write_ablation(
    out: str | os.PathLike,
    job: AblationJob,
    *,
    device: torch.device | str = "cpu",
    model: nn.Module | None = None,
) -> pd.DataFrame:
    """Ablate the drifted and random unit sets of one layer on one attack's images; write the table."""
    identity = job.identity
    layer = identity["layer"]
    image_id = {k: identity[k] for k in ("dataset", "model", "attack")}
    images = ShardedImages(job.images_paths, image_id)
    act_id = dict(image_id, attack=job.clean_attack, layer=layer)

    def clean_maps():
        for shard, path in enumerate(job.clean_activation_paths):
            with store.open_layer(path, dict(act_id, shard=shard)) as (_, acts):
                yield acts

    mean = mean_map(clean_maps())
    n_units = mean.shape[0]
    unit_tables = {
        mode: (read_units(clean), read_units(attacked)) for mode, (clean, attacked) in job.units_paths.items()
    }
    sets = ablation_sets(unit_tables, n_units, job.random_sets)
    masks = np.zeros((1 + len(sets), n_units), bool)
    for i, s in enumerate(sets, start=1):
        masks[i, s["units"]] = True
    if model is None:
        model = load_model_spec(job.model_spec, job.weights_file)
    model = model.to(device).eval()
    predictions = ablated_predictions(model, images, layer, masks, mean, job.batch_size, device)
    differ = int(np.sum(predictions[0] != images.adv_pred))
    if differ:
        log.warning(
            "%d of %d attacked images predicted differently from their shard's adv_pred", differ, len(images.adv_pred)
        )
    frame = ablation_table(sets, predictions, images.clean_pred, n_units)
    frame.insert(0, "layer", layer)
    for i, key in enumerate(("dataset", "model")):
        frame.insert(i, key, identity[key])
    frame.insert(3, "attack", identity["attack"])
    frame = frame[ABLATION_COLUMNS]
    store.write_csv(out, frame)
    return frame
