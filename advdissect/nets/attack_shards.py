"""Images shards: one shard of a dataset attacked and written (kind "images")."""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Mapping
from os import PathLike
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..data.broden import BrodenDataset, shard_rows
from ..errors import AttackError
from ..specs import AttackSpec, ModelSpec, ShardPlan
from ..store import write_h5
from .attack_runner import run_attack
from .device import select_device
from .models import load_model_spec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AttackShardJob:
    """One images shard (rule attack_shard): shard `shard` of the dataset at `dataset_root` as
    `plan` cuts it, attacked with `attack` on the model of `model_spec` (weights from
    `weights_file`, None for its own weights); the shard carries `identity`. batch_size: images per
    attack batch (no result depends on it)."""

    dataset_root: str | PathLike
    plan: ShardPlan
    shard: int
    model_spec: ModelSpec
    weights_file: str | PathLike | None
    attack: AttackSpec
    identity: Mapping[str, Any]
    batch_size: int


def write_attack_shard(
    out_path: str | PathLike, job: AttackShardJob, device: str | torch.device | None = None
) -> dict[str, np.ndarray]:
    """Attack one shard of the dataset and write its images shard (kind "images")."""
    dataset = BrodenDataset(job.dataset_root)
    rows = np.asarray(shard_rows(dataset, job.plan, job.shard), dtype=np.int64)
    model = load_model_spec(job.model_spec, job.weights_file)
    return write_attacked_rows(out_path, job, dataset, rows, model, device)


def write_attacked_rows(
    out_path: str | PathLike,
    job: AttackShardJob,
    dataset,
    rows: np.ndarray,
    model: torch.nn.Module,
    device: str | torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Attack `rows` of an open dataset with `model` and write them as the images shard of `job`
    (`write_attack_shard` once it has opened the dataset and built the model)."""
    images = _load_images(dataset, rows)
    labels = np.array([dataset.class_index(int(r)) for r in rows], dtype=np.int64)
    if device is None:
        device = select_device()
    result = run_attack(model, images, labels, job.attack, job.batch_size, device, rows=rows)
    arrays = {"rows": rows, "labels": labels, **result}
    attrs = dict(job.identity) | {"shard": int(job.shard), "attack_params": job.attack.to_dict()}
    write_h5(out_path, "images", attrs, arrays)
    log.info(
        "%s: %d images, %d predictions changed",
        out_path,
        len(rows),
        int((result["adv_pred"] != result["clean_pred"]).sum()),
    )
    return arrays


def _load_images(dataset, rows: np.ndarray) -> np.ndarray:
    ih, iw = dataset.image_size
    images = np.zeros((len(rows), 3, ih, iw), np.uint8)
    for i, row in enumerate(tqdm(rows, desc="load images", unit="img", disable=None, file=sys.stderr)):
        image = np.asarray(dataset.load_image(int(row)))
        if image.shape != (ih, iw, 3) or image.dtype != np.uint8:
            raise AttackError(
                f"dataset {dataset.root}: row {int(row)} loads as {image.dtype} {image.shape}, "
                f"expected uint8 ({ih}, {iw}, 3) like every image of the dataset"
            )
        images[i] = image.transpose(2, 0, 1)
    return images
