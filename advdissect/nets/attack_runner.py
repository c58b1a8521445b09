"""Attacks on uint8 images: `run_attack` attacks them batch by batch and returns the arrays of
an images shard (the attacked images, predictions, confidences and perturbation sizes).

Shards store images as uint8, which is lossless only on the 1/255 grid: FGSM, BIM, PGD and the
noise need ε (and the BIM/PGD step) to be a multiple of 1/255, so that each iterate lies on the
grid; PGD's random start is then drawn on the grid too. DeepFool, C&W and the AutoAttack family
end off the grid: their results are rounded to the nearest uint8 value (which keeps the L∞
attacks inside their ε-ball when ε is on the grid), and the stored predictions are those of the
rounded images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import AttackError
from ..specs import GRADIENT_METHODS, L2_METHODS, ROUNDED_METHODS, AttackSpec, grid_steps
from .attack_draws import apgd_starts, autoattack_draws, per_image_draws, square_draws
from .attacks import AutoAttackSettings, SignSteps, apgd, apgd_t, bim, cw, deepfool, fgsm, noise, pgd, target_ranks
from .autoattack import autoattack, fab_t, square
from .device import in_batches

# How far (in 1/255 units) a float result may lie from the uint8 grid before it is refused;
# float32 rounding of on-grid iterates stays orders of magnitude below it.
_ROUND_TOL = 1e-2


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _choose_labels(
    spec: AttackSpec, logits: torch.Tensor, labels: torch.Tensor, target_u: torch.Tensor | None
) -> torch.Tensor:
    """The class each image's loss is taken against, from its clean logits."""
    n_classes = logits.shape[1]
    pred = logits.argmax(1)
    if spec.labels == "prediction":
        return pred
    if spec.labels == "true":
        if int(labels.max()) >= n_classes:
            raise AttackError(
                f"attack '{spec.name}': class label {int(labels.max())} is out of range for a "
                f"model with {n_classes} classes"
            )
        return labels
    if spec.target == "least_likely":
        return logits.argmin(1)
    if spec.target == "random":
        if n_classes < 2:
            raise AttackError(f"attack '{spec.name}': a random target needs at least 2 classes")
        index = (target_u.to(logits.device) * (n_classes - 1)).long().clamp(max=n_classes - 2)
        return index + (index >= pred).long()
    if spec.target >= n_classes:
        raise AttackError(
            f"attack '{spec.name}': target class {spec.target} is out of range for a model with {n_classes} classes"
        )
    return torch.full_like(pred, spec.target)


def _to_uint8(adv: torch.Tensor, spec: AttackSpec) -> torch.Tensor:
    """Round a float result that must lie on the 1/255 grid; refuse if it does not. The results
    of deepfool, cw and apgd lie off the grid and are rounded to the nearest uint8 value."""
    scaled = adv.detach() * 255
    rounded = scaled.round()
    if spec.method in ROUNDED_METHODS:
        return rounded.clamp(0, 255).to(torch.uint8)
    off = float((scaled - rounded).abs().max()) if scaled.numel() else 0.0
    if off > _ROUND_TOL or (rounded.numel() and (rounded.min() < 0 or rounded.max() > 255)):
        raise AttackError(
            f"attack '{spec.name}': result is off the uint8 grid by {off:.3g}/255; it cannot be stored losslessly"
        )
    return rounded.to(torch.uint8)


def _on_grid(adv: torch.Tensor) -> torch.Tensor:
    """The image as it will be stored (rounded to uint8), in [0, 1]."""
    return (adv * 255).round().clamp(0, 255) / 255


@dataclasses.dataclass(frozen=True)
class _Batch:
    """One batch of `run_attack`, on its device: the uint8 images `u`, the same as floats `x`,
    and what the attack draws on (class labels, the images' per-image draws and dataset rows)."""

    model: torch.nn.Module
    spec: AttackSpec
    u: torch.Tensor
    x: torch.Tensor
    labels: torch.Tensor
    pixel_random: torch.Tensor | None
    target_u: torch.Tensor | None
    rows: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.u.shape)

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        return _choose_labels(self.spec, logits, self.labels, self.target_u)


# The attacks that run against labels chosen from the clean logits of a pass of their own:
# method -> f(batch, labels, clean logits) -> the float result.


def _pgd(b: _Batch, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    # The start is a grid point of the ε-ball drawn per image (`per_image_draws`).
    start = (b.u.to(torch.int16) + b.pixel_random.to(b.u.device)).clamp(0, 255).to(b.x.dtype) / 255
    return pgd(b.model, b.x, y, SignSteps.of(b.spec), start=start)


def _deepfool(b: _Batch, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return deepfool(b.model, b.x, y, b.spec.steps, b.spec.overshoot, b.spec.candidates)


def _cw(b: _Batch, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return cw(b.model, b.x, y, b.spec.c, b.spec.kappa, b.spec.steps, b.spec.lr)


def _apgd(b: _Batch, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return apgd(b.model, b.x, y, AutoAttackSettings.of(b.spec), apgd_starts(b.spec, b.shape, b.rows))


def _apgd_t(b: _Batch, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    runs = len(target_ranks(logits.shape[1], b.spec.targets)) * b.spec.restarts
    return apgd_t(b.model, b.x, y, AutoAttackSettings.of(b.spec), apgd_starts(b.spec, b.shape, b.rows, runs))


def _square(b: _Batch, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    draws = square_draws(b.spec, b.shape, b.rows, b.spec.queries, b.spec.restarts)
    return square(b.model, b.x, y, AutoAttackSettings.of(b.spec), draws)


def _fab_t(b: _Batch, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    runs = len(target_ranks(logits.shape[1], b.spec.targets)) * (b.spec.restarts - 1)
    starts = apgd_starts(b.spec, b.shape, b.rows, runs) if runs else None
    return fab_t(b.model, b.x, y, AutoAttackSettings.of(b.spec), starts)


_AGAINST_CHOSEN_LABELS: dict[str, Callable[[_Batch, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "pgd": _pgd,
    "deepfool": _deepfool,
    "cw": _cw,
    "apgd": _apgd,
    "apgd_t": _apgd_t,
    "square": _square,
    "fab_t": _fab_t,
}


def _one_pass_attack(b: _Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FGSM or BIM: (clean logits, labels, result). The gradient pass at x gives the clean logits
    too: no separate forward pass."""
    seen: dict[str, torch.Tensor] = {}

    def choose_and_keep(clean_logits: torch.Tensor) -> torch.Tensor:
        seen["logits"], seen["y"] = clean_logits, b.choose(clean_logits)
        return seen["y"]

    if b.spec.method == "fgsm":
        adv = fgsm(b.model, b.x, choose_and_keep, b.spec.eps, b.spec.targeted)
    else:
        adv = bim(b.model, b.x, choose_and_keep, SignSteps.of(b.spec))
    return seen["logits"], seen["y"], adv


def _attack(b: _Batch) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, dict[str, np.ndarray]]:
    """(clean logits, the labels attacked against or None, the float result or None for clean,
    extra arrays of the shard)."""
    spec = b.spec
    if spec.method in ("fgsm", "bim"):
        return (*_one_pass_attack(b), {})
    with torch.no_grad():
        logits = b.model(b.x)
    if spec.method == "clean":
        return logits, None, None, {}
    if spec.method == "noise":
        return logits, None, noise(b.x, spec.eps, signs=b.pixel_random), {}
    y = b.choose(logits)
    if spec.method == "autoattack":
        draws = autoattack_draws(spec, b.shape, b.rows, logits.shape[1])
        adv, first = autoattack(b.model, b.x, y, AutoAttackSettings.of(spec), draws, _on_grid)
        return logits, y, adv, {"first_success": first.cpu().numpy()}
    return logits, y, _AGAINST_CHOSEN_LABELS[spec.method](b, y, logits), {}


def _attack_batch(b: _Batch) -> dict[str, np.ndarray]:
    logits, y, adv, extra = _attack(b)
    if adv is None:
        adv_u, adv_logits = b.u, logits
    else:
        adv_u = _to_uint8(adv, b.spec)
        with torch.no_grad():
            adv_logits = b.model(adv_u.to(b.x.dtype) / 255)
    clean_conf, clean_pred = F.softmax(logits.float(), 1).max(1)
    adv_conf, adv_pred = F.softmax(adv_logits.float(), 1).max(1)
    target = y if (b.spec.targeted and y is not None) else torch.full_like(clean_pred, -1)
    # Perturbation sizes on the device, in exact integers of 1/255: a pass over the whole shard
    # in float64 on the host would cost more than the attack itself on a GPU.
    diff = (adv_u.to(torch.int32) - b.u.to(torch.int32)).flatten(1)
    linf_255 = diff.abs().amax(1).cpu().numpy().astype(np.int64) if diff.shape[1] else np.zeros(len(b.u), np.int64)
    return {
        "images": adv_u.cpu().numpy(),
        "linf_255": linf_255,
        "sumsq_255": diff.to(torch.int64).square().sum(1).cpu().numpy(),
        "clean_pred": clean_pred.cpu().numpy().astype(np.int64),
        "clean_conf": clean_conf.cpu().numpy().astype(np.float32),
        "adv_pred": adv_pred.cpu().numpy().astype(np.int64),
        "adv_conf": adv_conf.cpu().numpy().astype(np.float32),
        "target": target.cpu().numpy().astype(np.int64),
        **extra,
    }


def _checked_inputs(
    spec: AttackSpec, images_uint8: np.ndarray, labels: np.ndarray, batch_size: int, rows: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, rows) of a `run_attack` call as arrays; AttackError when they do not fit."""
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise AttackError(
            f"attack '{spec.name}': expected uint8 images (N, C, H, W), got {images.dtype} {images.shape}"
        )
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = images.shape[0]
    if labels.shape[0] != n:
        raise AttackError(f"attack '{spec.name}': {labels.shape[0]} labels for {n} images")
    if batch_size < 1:
        raise AttackError(f"attack '{spec.name}': batch_size must be >= 1, got {batch_size}")
    if spec.method in GRADIENT_METHODS and spec.labels == "true" and (labels < 0).any():
        missing = np.flatnonzero(labels < 0)
        raise AttackError(
            f"attack '{spec.name}': 'labels: true' needs a class label for every image, but "
            f"{missing.size} of {n} have none (-1; first at position {int(missing[0])}); this "
            "dataset has no class labels for them (real Broden has no ImageNet labels): use "
            "'labels: prediction' (Eq. 10)"
        )
    rows = np.arange(n) if rows is None else np.asarray(rows).reshape(-1)
    if rows.shape[0] != n:
        raise AttackError(f"attack '{spec.name}': {rows.shape[0]} rows for {n} images")
    return images, labels, rows


def run_attack(
    model: torch.nn.Module,
    images_uint8: np.ndarray,
    labels: np.ndarray,
    spec: AttackSpec,
    batch_size: int,
    device: str | torch.device | None = None,
    rows: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Attack uint8 images (N, C, H, W) and return the arrays of an images shard.

    Returns images (uint8; rounded for the methods of `ROUNDED_METHODS`), clean_pred, clean_conf,
    adv_pred, adv_conf (softmax probability of the predicted class; adversarial ones computed from
    the stored uint8 images), target (class attacked towards, -1 when untargeted), linf and l2 (per
    image, pixel units), and for autoattack first_success (int8: 1-4 the first component of
    `AUTOATTACK_COMPONENTS` that fooled the image, 0 none). labels are class indices (-1 = none),
    used by `labels: true`.

    All randomness (PGD's, APGD's and FAB's starts, Square's search, noise signs, random targets)
    of image i is drawn from
    `image_generator(spec.seed, rows[i])` (rows: the images' dataset rows, default 0..N−1), so
    results depend neither on batch_size nor on how a dataset is cut into shards. A batch that runs
    out of GPU memory is retried at half the size.
    The model is moved to `device` (default: where its parameters are) and run in eval mode.
    """
    images, labels, rows = _checked_inputs(spec, images_uint8, labels, batch_size, rows)
    n = images.shape[0]
    k = grid_steps(spec.eps)  # ε in 1/255 steps (a spec's ε is on the grid)
    pixel_random, target_u = per_image_draws(spec, images.shape, rows, k)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    model.to(device)
    dtype = _model_dtype(model)
    u_all = torch.from_numpy(images)
    labels_all = torch.from_numpy(labels)
    parts: list[dict[str, np.ndarray]] = []

    def run(start: int, stop: int) -> None:
        u = u_all[start:stop].to(device)
        batch = _Batch(
            model,
            spec,
            u,
            u.to(dtype) / 255,
            labels_all[start:stop].to(device),
            None if pixel_random is None else pixel_random[start:stop],
            None if target_u is None else target_u[start:stop],
            rows[start:stop],
        )
        parts.append(_attack_batch(batch))
        bar.update(stop - start)

    with _eval_mode(model), tqdm(total=n, desc=f"attack {spec.name}", unit="img", disable=None, file=sys.stderr) as bar:
        in_batches(n, batch_size, run)

    out = _concatenate(parts, images.shape)
    if spec.method == "autoattack" and not parts:
        out["first_success"] = np.zeros(0, np.int8)
    return _with_sizes(out, spec, k)


def _with_sizes(out: dict[str, np.ndarray], spec: AttackSpec, k: int) -> dict[str, np.ndarray]:
    """The perturbation sizes in pixel units (linf, l2) in place of their 1/255 integers; refuses an
    L∞ attack's image outside its ε-ball (k/255)."""
    linf_255, sumsq_255 = out.pop("linf_255"), out.pop("sumsq_255")
    if len(linf_255) and spec.method not in L2_METHODS and int(linf_255.max()) > k:
        raise AttackError(
            f"attack '{spec.name}': a perturbation exceeds eps={spec.eps:g} "
            f"({int(linf_255.max())}/255 > {k}/255); refusing to write it"
        )
    out["linf"] = (linf_255.astype(np.float64) / 255).astype(np.float32)
    out["l2"] = (np.sqrt(sumsq_255.astype(np.float64)) / 255).astype(np.float32)
    return out


def _concatenate(parts: list[dict[str, np.ndarray]], shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    if parts:
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    empty = {key: np.zeros(0, np.int64) for key in ("clean_pred", "adv_pred", "target", "linf_255", "sumsq_255")}
    empty.update({key: np.zeros(0, np.float32) for key in ("clean_conf", "adv_conf")})
    empty["images"] = np.zeros(shape, np.uint8)
    return empty
