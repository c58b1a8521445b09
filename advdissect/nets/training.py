"""Training: standard, adversarial (FGSM), feature-consistency and ATDA domain adaptation.

Every step takes a clean batch D; the adversarial methods add its FGSM batch A, made with the
model's own prediction (Eq. 10, no label leaking) from the current weights:

    standard     CE(D)
    at           CE(D) + CE(A)
    consistency  CE(D) + CE(A) + λ·consistency(φ(D), φ(A))
    atda         CE(D) + CE(A) + λ·(CORAL + MMD [+ margin])

CE(A) uses the true label of each adversarial example's clean source. φ is the logits or the
output of a named layer (see `advdissect.nets.losses`).

Choices worth knowing:
- A is generated with the model in eval mode (BatchNorm running statistics, no dropout), so
  the attack neither updates BatchNorm statistics nor depends on the other images of the
  batch; the update itself runs in train mode on D and A concatenated into one batch, so
  BatchNorm normalises both domains with the same batch statistics.
- Learning rate: linear warm-up over `warmup` of all steps, then cosine decay to 0, stepped
  per batch.
- Reproducible on CPU: the global RNG (dropout) is seeded from `seed` and saved in every
  checkpoint; shuffling and flips come from a generator seeded per epoch. A checkpoint written
  after every epoch lets a killed run resume and end with the same weights as an unbroken one.
- No model selection on the held-out split: the final weights are kept, so held-out accuracy
  is an unbiased estimate.
- Precision (`precision: bf16`, the default): the update's forward pass and loss run under
  bfloat16 autocast, on channels-last weights, with fused optimizer steps; about twice as fast
  on a CPU with AVX-512 BF16 and on a GPU. The loss terms are taken in float32 from the bf16
  outputs, and the FGSM batches, the held-out accuracies and everything dissected later stay
  float32: bf16 moves a network's activations by percents and flips FGSM gradient signs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data.broden import BrodenDataset
from ..data.imagefolder import ImageFolderImages, load_imagefolder
from ..errors import ConfigError, DatasetError
from ..specs import ADVERSARIAL_METHODS, FEATURE_METHODS, ModelSpec, TrainSpec
from ..store import atomic_path, write_csv, write_json
from . import losses
from .attacks import fgsm
from .device import select_device
from .layers import capture
from .models import load_model
from .weights import save_weights

log = logging.getLogger(__name__)

# Loss terms logged per epoch; a term a method does not use is logged as NaN (empty in the CSV).
LOSS_TERMS = ("ce_clean", "ce_adv", "coral", "mmd", "margin", "consistency")
HISTORY_COLUMNS = ("epoch", "loss", *LOSS_TERMS, "train_accuracy", "val_accuracy", "lr", "seconds")
# CORAL builds a k×k covariance; past this k (e.g. a flattened conv map) it would not fit a step.
MAX_CORAL_FEATURES = 4096
CHECKPOINT_FORMAT = 1


# ---------------------------------------------------------------- batches


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # Each epoch's order and flips depend only on (seed, epoch), so a resumed run repeats them.
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    chunks = list(order.split(batch_size))
    # A batch of one breaks BatchNorm in train mode: fold it into the previous batch.
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2] = torch.cat([chunks[-2], chunks.pop()])
    return chunks


def _to_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images.to(device, non_blocking=True).float().div_(255.0)


def _as_tensors(images, labels, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Images read from disk on indexing (ImageFolderImages) stay as they are.
    if not isinstance(images, ImageFolderImages):
        images = torch.as_tensor(images)
    labels = torch.as_tensor(labels).long()
    if images.dtype != torch.uint8 or len(images.shape) != 4 or images.shape[1] != 3:
        raise ValueError(f"{what} images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{what} labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
    if len(labels) and int(labels.min()) < 0:
        raise ValueError(f"{what} labels hold -1 (no class); drop those images before training")
    return images, labels


# ---------------------------------------------------------------- attack, features


def _fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, eps: float) -> torch.Tensor:
    return fgsm(model, x, y, eps).detach()


def adversarial_batch(model: nn.Module, x: torch.Tensor, eps: float) -> torch.Tensor:
    """FGSM of `x` against the model's own prediction (Eq. 10), made in eval mode.

    Leaves the model in eval mode.
    """
    model.eval()
    return _fgsm(model, x, None, eps)  # y=None: the prediction of the attack's own forward pass


def _forward(
    model: nn.Module, x: torch.Tensor, feature: str | None, cfg: TrainSpec
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, φ) in float32 from one forward pass of the update (bf16 autocast under
    `precision: bf16`); φ is the logits, the named layer's output or, for feature None, None."""
    mixed = cfg.precision == "bf16"
    if mixed:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=mixed):
        if feature is None or feature == "logits":
            logits = model(x)
            feats = logits if feature else None
        else:
            logits, outputs = capture(model, x, [feature])
            feats = outputs[feature]
    return logits.float(), None if feats is None else feats.float()


# ---------------------------------------------------------------- one step


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainSpec,
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, float], torch.Tensor]:
    """One update on the clean batch `x` (float in [0, 1]) with labels `y`.

    Returns ({term: value} of the loss terms used, clean predictions made in train mode).
    """
    adv = adversarial_batch(model, x, cfg.eps) if cfg.method in ADVERSARIAL_METHODS else None
    optimizer.zero_grad(set_to_none=True)  # also drops gradients the attack left on the weights
    model.train()
    n = x.shape[0]
    terms: dict[str, torch.Tensor] = {}
    if adv is None:
        logits, _ = _forward(model, x, None, cfg)
        terms["ce_clean"] = F.cross_entropy(logits, y)
        clean_logits = logits
        loss = terms["ce_clean"]
    else:
        need_features = cfg.method in FEATURE_METHODS
        logits, feats = _forward(model, torch.cat([x, adv]), cfg.feature if need_features else None, cfg)
        clean_logits, adv_logits = logits[:n], logits[n:]
        terms["ce_clean"] = F.cross_entropy(clean_logits, y)
        terms["ce_adv"] = F.cross_entropy(adv_logits, y)
        loss = terms["ce_clean"] + terms["ce_adv"]
        if need_features:
            fd, fa = feats[:n].reshape(n, -1), feats[n:].reshape(n, -1)
            if cfg.method == "consistency":
                terms["consistency"] = losses.consistency(fd, fa)
                loss = loss + cfg.lam * terms["consistency"]
            else:
                if fd.shape[1] > MAX_CORAL_FEATURES:
                    raise ConfigError(
                        f"config: {cfg.key}.feature: {cfg.feature!r} has {fd.shape[1]} features per image; CORAL "
                        f"needs a k×k covariance and allows at most {MAX_CORAL_FEATURES} (use 'logits')"
                    )
                terms["coral"] = losses.coral(fd, fa)
                terms["mmd"] = losses.mmd(fd, fa)
                da = terms["coral"] + terms["mmd"]
                if cfg.margin:
                    terms["margin"] = losses.margin_loss(fd, fa, y)
                    da = da + terms["margin"]
                loss = loss + cfg.lam * da
    if not torch.isfinite(loss):
        raise ConfigError(
            f"training diverged: the loss is {loss.item()} "
            f"({', '.join(f'{k}={v.item():.4g}' for k, v in terms.items())}); lower {cfg.key}.lr "
            f"(now {cfg.lr:g}) or set {cfg.key}.grad_clip"
        )
    loss.backward()
    if cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    values = {k: float(v.detach()) for k, v in terms.items()}
    values["loss"] = float(loss.detach())
    return values, clean_logits.detach().argmax(dim=1)


# ---------------------------------------------------------------- evaluation


def accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    eps: float = 0.0,
    progress: bool = False,
    desc: str = "evaluate",
) -> float:
    """Top-1 accuracy in eval mode; with eps > 0, on FGSM examples made with the TRUE labels.

    The true label (Eq. 5) is the standard robust-accuracy attack; NaN for an empty set.
    """
    if len(labels) == 0:
        return float("nan")
    model.eval()
    correct = 0
    for start in tqdm(range(0, len(labels), batch_size), desc=desc, disable=None if progress else True, leave=False):
        x = _to_float(images[start : start + batch_size], device)
        y = labels[start : start + batch_size].to(device)
        if eps > 0:
            x = _fgsm(model, x, y, eps)
        with torch.no_grad():
            correct += int((model(x).argmax(dim=1) == y).sum())
    model.zero_grad(set_to_none=True)
    return correct / len(labels)


# ---------------------------------------------------------------- optimiser, schedule


def make_optimizer(model: nn.Module, cfg: TrainSpec) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or Adam; fused into one kernel per step under `precision: bf16`
    (the unfused step is a third of a small network's CPU training step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if cfg.precision == "bf16" else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
            **fused,
        )
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


def lr_factor(step: int, total_steps: int, warmup: float) -> float:
    """Multiplier of the peak lr at `step` (0-based): linear warm-up, then cosine to 0."""
    warm = int(round(warmup * total_steps))
    if step < warm:
        return (step + 1) / warm
    span = max(1, total_steps - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, span) / span))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainSpec, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg.warmup))


# ---------------------------------------------------------------- checkpoints


def _fingerprint(model: nn.Module, cfg: TrainSpec, n_train: int, n_val: int) -> dict[str, Any]:
    # What a checkpoint must agree with to be resumed.
    return {
        "config": cfg.to_dict(),
        "n_train": int(n_train),
        "n_val": int(n_val),
        "model": type(model).__name__ + ":" + str(getattr(model, "arch", "")),
        "parameters": [list(p.shape) for p in model.parameters()],
    }


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """torch.save `state` atomically: a killed write leaves the previous checkpoint intact."""
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None when there is none or it cannot be read (then logged)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a checkpoint is a cache: an unreadable one only costs a restart
        log.warning("checkpoint %s cannot be read (%s); training from the start", path, exc)
        return None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        log.warning("checkpoint %s has an unknown layout; training from the start", path)
        return None
    return state


# ---------------------------------------------------------------- the loop


def _mean_or_nan(total: float | None, count: int) -> float:
    return float("nan") if total is None or count == 0 else total / count


def _resume(checkpoint_path, fingerprint, model, optimizer, scheduler, cfg: TrainSpec) -> tuple[list, int]:
    """(history, epochs done) from a checkpoint made for the same fingerprint, its weights,
    optimizer, schedule and RNG restored; else ([], 0) with the global RNG seeded."""
    checkpoint = load_checkpoint(checkpoint_path)
    if checkpoint is not None and checkpoint.get("fingerprint") != fingerprint:
        log.warning(
            "checkpoint %s was made for another config, data or model; training from the start", checkpoint_path
        )
        checkpoint = None
    if checkpoint is None:
        torch.manual_seed(cfg.seed)
        return [], 0
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    _set_rng_state(checkpoint["rng"])
    start_epoch = int(checkpoint["epoch"])
    log.info("resuming from %s after epoch %d of %d", checkpoint_path, start_epoch, cfg.epochs)
    return list(checkpoint["history"]), start_epoch


@dataclasses.dataclass(frozen=True)
class TrainingSet:
    """What a model is trained on and held out on: uint8 (N, 3, H, W) images (tensors or arrays,
    or `ImageFolderImages` read on indexing) and their int64 class indices."""

    train_images: Any
    train_labels: Any
    val_images: Any
    val_labels: Any


@dataclasses.dataclass(frozen=True)
class _Run:
    """What every epoch of one `train` call works with."""

    model: nn.Module
    cfg: TrainSpec
    data: TrainingSet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    progress: bool

    def heldout(self, desc: str, eps: float = 0.0) -> float:
        """Accuracy on the held-out images (under FGSM at `eps` with the true labels when eps > 0)."""
        return accuracy(
            self.model,
            self.data.val_images,
            self.data.val_labels,
            batch_size=2 * self.cfg.batch_size,
            device=self.device,
            eps=eps,
            progress=self.progress,
            desc=desc,
        )


def _train_epoch(run: _Run, epoch: int) -> dict:
    """One epoch of updates; its history record without the held-out accuracy and time."""
    cfg, images, labels, device = run.cfg, run.data.train_images, run.data.train_labels, run.device
    n_train = len(labels)
    generator = _epoch_generator(cfg.seed, epoch)
    batches = _batches(n_train, cfg.batch_size, generator)
    flips = torch.rand(n_train, generator=generator) < 0.5 if cfg.augment else None
    sums: dict[str, float] = {}
    correct = seen = 0
    lr = run.optimizer.param_groups[0]["lr"]
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=None if run.progress else True, leave=False)
    for idx in bar:
        x = _to_float(images[idx], device)
        if flips is not None:
            x = torch.where(flips[idx].to(device)[:, None, None, None], x.flip(3), x)
        y = labels[idx].to(device)
        values, pred = train_step(run.model, x, y, cfg, run.optimizer)
        run.scheduler.step()
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value * len(idx)
        correct += int((pred == y).sum())
        seen += len(idx)
        bar.set_postfix(loss=f"{values['loss']:.3f}", refresh=False)
    record: dict[str, Any] = {"epoch": epoch + 1, "loss": sums["loss"] / seen}
    for term in LOSS_TERMS:
        record[term] = _mean_or_nan(sums.get(term), seen)
    record["train_accuracy"] = correct / seen
    record["lr"] = lr
    return record


def _checkpoint_state(run: _Run, epoch: int, fingerprint: dict[str, Any], history: list) -> dict[str, Any]:
    """What the checkpoint after `epoch` holds: weights, optimizer, schedule, RNG and history."""
    state = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
    }
    state.update(format=CHECKPOINT_FORMAT, epoch=epoch + 1, fingerprint=fingerprint, rng=_rng_state(), history=history)
    return state


def _start(model: nn.Module, data: TrainingSet, cfg: TrainSpec, device: torch.device, progress: bool) -> _Run:
    """The run of `train`: its data as tensors, the model on the device, optimizer and schedule."""
    train_images, train_labels = _as_tensors(data.train_images, data.train_labels, "training")
    val_images, val_labels = _as_tensors(data.val_images, data.val_labels, "held-out")
    n_train = len(train_labels)
    if n_train < 2:
        raise DatasetError(f"training needs at least 2 labelled images, got {n_train}")
    model.to(device)
    if cfg.precision == "bf16":
        model.to(memory_format=torch.channels_last)
    steps_per_epoch = len(_batches(n_train, cfg.batch_size, torch.Generator().manual_seed(0)))
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, cfg.epochs * steps_per_epoch)
    data = TrainingSet(train_images, train_labels, val_images, val_labels)
    return _Run(model, cfg, data, optimizer, scheduler, device, progress)


def train(
    model: nn.Module,
    data: TrainingSet,
    cfg: TrainSpec,
    *,
    checkpoint_path: str | Path,
    history_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train `model` (takes float images in [0, 1]) in place on `data`; return its metrics.

    A checkpoint at `checkpoint_path` is written after every epoch and, when present at the start
    and made for the same config, data sizes and model, resumed from. `on_epoch_end(record)` runs
    after each epoch's checkpoint is written. The history (one row per epoch, HISTORY_COLUMNS)
    goes to `history_path` when given and into the metrics under "history".

    Metrics: heldout_accuracy (val, final weights), train_accuracy (clean training batches of
    the last epoch, as seen in train mode), heldout_fgsm_accuracy (val under FGSM at cfg.eps
    with true labels; absent when eps is 0), seconds (training and evaluation, over every
    resumed run), epochs, method, n_train, n_val, resumed_from_epoch.
    """
    run = _start(model, data, cfg, torch.device(device), progress)
    fingerprint = _fingerprint(model, cfg, len(run.data.train_labels), len(run.data.val_labels))
    history, start_epoch = _resume(checkpoint_path, fingerprint, model, run.optimizer, run.scheduler, cfg)
    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        record = _train_epoch(run, epoch)
        record["val_accuracy"] = run.heldout("held-out")
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        log.info(
            "epoch %d/%d: loss %.4f, train acc %.3f, held-out acc %.3f, %.1f s",
            epoch + 1,
            cfg.epochs,
            record["loss"],
            record["train_accuracy"],
            record["val_accuracy"],
            record["seconds"],
        )
        save_checkpoint(checkpoint_path, _checkpoint_state(run, epoch, fingerprint, history))
        if history_path is not None:
            write_history(history_path, history)
        if on_epoch_end is not None:
            on_epoch_end(record)
    return _final(run, history, start_epoch, history_path)


def _final(run: _Run, history: list[dict], start_epoch: int, history_path: str | Path | None) -> dict[str, Any]:
    """The metrics of a run whose epochs are done (the held-out FGSM accuracy measured now)."""
    cfg = run.cfg
    started = time.perf_counter()
    run.model.eval()
    metrics = _final_metrics(history, cfg, len(run.data.train_labels), len(run.data.val_labels), start_epoch)
    if cfg.eps > 0:
        metrics["heldout_fgsm_accuracy"] = run.heldout("held-out FGSM", cfg.eps)
    metrics["seconds"] = sum(r["seconds"] for r in history) + time.perf_counter() - started
    if history_path is not None:
        write_history(history_path, history)
    metrics["history"] = history
    return metrics


def _final_metrics(history: list[dict], cfg: TrainSpec, n_train: int, n_val: int, start_epoch: int) -> dict[str, Any]:
    last = history[-1] if history else {}
    metrics: dict[str, Any] = {
        "method": cfg.method,
        "epochs": cfg.epochs,
        "n_train": n_train,
        "n_val": n_val,
        "resumed_from_epoch": start_epoch,
        "train_accuracy": last.get("train_accuracy", float("nan")),
        "heldout_accuracy": last.get("val_accuracy", float("nan")),
    }
    if cfg.eps > 0:
        metrics["eps"] = cfg.eps
    return metrics


def write_history(path: str | Path, history: list[Mapping[str, Any]]) -> None:
    write_csv(path, pd.DataFrame(list(history), columns=list(HISTORY_COLUMNS)))


# ---------------------------------------------------------------- dataset files


def load_split(dataset, split: str, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 (N, 3, H, W), int64 (N,) class indices) of a split's rows that have a class."""
    rows = dataset.rows(split)
    labels = np.array([dataset.class_index(r) for r in rows], dtype=np.int64)
    keep = labels >= 0
    rows, labels = rows[keep], labels[keep]
    if len(rows) == 0:
        raise DatasetError(
            f"{dataset.root / 'index.csv'}: no '{split}' row has a class (a `class` cell, or a scene "
            "where the index has no class column); training needs labelled rows in both the train and the val split"
        )
    ih, iw = dataset.image_size
    images = np.empty((len(rows), 3, ih, iw), dtype=np.uint8)
    for i, row in enumerate(tqdm(rows, desc=f"load {split}", disable=None if progress else True, leave=False)):
        images[i] = dataset.load_image(int(row)).transpose(2, 0, 1)
    return torch.from_numpy(images), torch.from_numpy(labels)


def check_num_classes(model_spec: ModelSpec, n_classes: int, dataset_root: str | Path) -> None:
    """ConfigError unless the model has one output per class of the dataset."""
    want = model_spec.num_classes
    if want != n_classes:
        raise ConfigError(
            f"model num_classes is {want!r}, but the dataset {dataset_root} has {n_classes} "
            f"classes (the classification task); set num_classes: {n_classes} for this {model_spec.arch} model"
        )


def training_data(
    dataset_root: str | Path, source: str, image_size: int | None, progress: bool = True
) -> tuple[TrainingSet, int, Path]:
    """(the training set, n_classes, root) of a training dataset.

    source "imagefolder": the train/val class folders, read batch by batch at image_size;
    otherwise a Broden-format dataset's train and val rows with a class, loaded into memory.
    """
    if source == "imagefolder":
        train_x, train_y, val_x, val_y, classes = load_imagefolder(dataset_root, image_size or 224)
        return TrainingSet(train_x, train_y, val_x, val_y), len(classes), Path(dataset_root)
    dataset = BrodenDataset(dataset_root)
    train_x, train_y = load_split(dataset, "train", progress)
    val_x, val_y = load_split(dataset, "val", progress)
    return TrainingSet(train_x, train_y, val_x, val_y), len(dataset.classes()), dataset.root


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """One model to train and the files it writes (rule train_model).

    The dataset at `dataset_root` is Broden-format, or with dataset_source "imagefolder"
    torchvision's ImageFolder layout read at image_size (see `training_data`). `init_weights`
    starts from a weights file (fine-tuning; it must have num_classes outputs), None from the
    seeded random init. The checkpoint lives at `checkpoint_path` while the training runs.
    """

    dataset_root: str | Path
    model_spec: ModelSpec
    training: TrainSpec
    out_weights: str | Path
    out_metrics: str | Path
    out_history: str | Path
    checkpoint_path: str | Path
    init_weights: str | Path | None = None
    dataset_source: str = "broden"
    image_size: int | None = None


def train_model_to_files(
    job: TrainJob, device: torch.device | str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train a model on a dataset's train split, hold out its val split, write files.

    Writes the weights (`save_weights`, meta: arch, method, dataset, num_classes,
    normalization, training config), metrics.json and history.csv, then removes the checkpoint.
    """
    data, n_classes, root = training_data(job.dataset_root, job.dataset_source, job.image_size, progress)
    spec, training = job.model_spec, job.training
    check_num_classes(spec, n_classes, root)
    device = select_device() if device is None else torch.device(device)
    log.info(
        "training %s (%s) on %s: %d train / %d held-out images, %s, device %s",
        spec.arch,
        training.method,
        root,
        len(data.train_labels),
        len(data.val_labels),
        training,
        device,
    )
    model = load_model(
        spec.arch, spec.num_classes, weights_file=job.init_weights, normalization=spec.normalization, seed=spec.seed
    )
    metrics = train(
        model,
        data,
        training,
        checkpoint_path=job.checkpoint_path,
        history_path=job.out_history,
        device=device,
        progress=progress,
    )
    history = metrics.pop("history")
    meta = {
        "arch": spec.arch,
        "method": training.method,
        "dataset": str(root.name),
        "num_classes": int(spec.num_classes),
        "normalization": spec.normalization,
        "init": None if job.init_weights is None else str(job.init_weights),
        "training": training.to_dict(),
        "heldout_accuracy": metrics["heldout_accuracy"],
    }
    save_weights(job.out_weights, model.net.state_dict(), meta)
    metrics.update(
        arch=spec.arch, dataset=str(root), training=training.to_dict(), init=meta["init"], device=str(device)
    )
    write_json(job.out_metrics, metrics)
    write_history(job.out_history, history)
    Path(job.checkpoint_path).unlink(missing_ok=True)
    return metrics
