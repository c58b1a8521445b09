"""Adversarial attacks, the adversarial image shards and per-attack statistics.

Conventions: images are in [0, 1], the model normalises inside its forward,
ε and step sizes are in pixel units (e.g. 2/255), and every result is clipped to [0, 1].

- FGSM, Eq. 5 (untargeted):  x* = x + ε·sign(∇x CE(f(x), y))
- FGSM, Eq. 6 (targeted):    x* = x − ε·sign(∇x CE(f(x), t))
- FGSM, Eq. 10:              Eq. 5 with y = the model's own prediction on the clean image
- BIM: `steps` FGSM steps of size `step`, each projected onto the L∞ ε-ball around x and [0, 1]
- PGD: BIM from a uniformly random start in the ε-ball
- noise: x + ε·s with random signs s ∈ {−1, +1} per pixel (the control of the same L∞ size)

- DeepFool (L2, Moosavi-Dezfooli et al. 2016): linearise the classifier at the current image,
  step (1 + overshoot)× onto the nearest linearised boundary, repeat until the label changes
- C&W L2 (Carlini & Wagner 2017, untargeted): Adam in tanh space on ‖x* − x‖² + c·max(Z_y − max_{i≠y} Z_i, −κ)
- APGD (L∞, Croce & Hein 2020): PGD with momentum 0.75 and a step size that halves at
  checkpoints where the loss (CE or DLR) stopped rising, from a random start in the ε-ball
- APGD-T: APGD on the targeted DLR loss, towards each of the runner-up classes in turn
- Square (L∞, Andriushchenko et al. 2020): random search with squares of ±2ε, no gradients
- FAB-T (L∞, Croce & Hein 2020): steps onto linearised boundaries towards each runner-up class,
  biased towards x; the nearest fooling point within ε
- AutoAttack (standard): APGD-CE, APGD-T, FAB-T, Square, each on the images not yet fooled

Shards store images as uint8, which is lossless only on the 1/255 grid: FGSM, BIM, PGD and the
noise need ε (and the BIM/PGD step) to be a multiple of 1/255, so that each iterate lies on the
grid; PGD's random start is then drawn on the grid too. DeepFool, C&W and the AutoAttack family
end off the grid: their results are rounded to the nearest uint8 value (which keeps the L∞
attacks inside their ε-ball when ε is on the grid), and the stored predictions are those of the
rounded images.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.broden import BrodenDataset, shard_rows
from ..errors import AttackError
from ..specs import GRADIENT_METHODS, L2_METHODS, ROUNDED_METHODS, AttackSpec, ModelSpec, ShardPlan, grid_steps
from ..store import write_h5
from .device import in_batches, select_device
from .models import load_model_spec

log = logging.getLogger(__name__)

# How far (in 1/255 units) a float result may lie from the uint8 grid before it is refused;
# float32 rounding of on-grid iterates stays orders of magnitude below it.
_ROUND_TOL = 1e-2

# --------------------------------------------------------------------------- attacks


def _loss_grad(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, ∇x Σ CE(f(x), y), y). `y` may be a function of the logits of this pass.

    The loss is summed, not averaged, so one image's gradient does not depend on the batch.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        if callable(y):
            y = y(logits.detach())
        loss = F.cross_entropy(logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return logits.detach(), grad, y


def _project(adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Onto the L∞ ε-ball around x, then onto [0, 1]."""
    return torch.min(torch.max(adv, x - eps), x + eps).clamp(0.0, 1.0).detach()


def _descend(model, x, adv, y, eps, step, steps, targeted) -> torch.Tensor:
    """`steps` signed gradient steps from `adv`; a callable `y` is resolved on the first pass."""
    direction = -1.0 if targeted else 1.0
    for _ in range(steps):
        _, grad, y = _loss_grad(model, adv, y)
        adv = _project(adv.detach() + direction * step * grad.sign(), x, eps)
    return adv


Labels = torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None


@torch.no_grad()
def _clean_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(1)


def fgsm(model: torch.nn.Module, x: torch.Tensor, y: Labels, eps: float, targeted: bool = False) -> torch.Tensor:
    """One signed gradient step of size ε (Eq. 5; Eq. 6 when targeted, y = target).

    y: the labels; None for the model's own prediction on x (Eq. 10); or a function of x's
    logits that returns them. Either way they come from the gradient's own forward pass.
    """
    return _descend(model, x, x, _argmax if y is None else y, eps, eps, 1, targeted)


def bim(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: Labels,
    eps: float,
    step: float,
    steps: int,
    targeted: bool = False,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """`steps` signed gradient steps of size `step`, each projected to the ε-ball and [0, 1].

    Starts at x (or `start`). y as for `fgsm`: None or a function of the logits is resolved on
    x's logits (from the first step's pass when the descent starts at x).
    """
    y = _argmax if y is None else y
    if start is None:
        return _descend(model, x, x, y, eps, step, steps, targeted)
    if callable(y):  # the first pass is at `start`, so x's logits need a pass of their own
        y = y(_clean_logits(model, x))
    return _descend(model, x, start, y, eps, step, steps, targeted)


def uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + U(−ε, ε) per pixel, clipped to [0, 1]; drawn on the generator's device.

    Uses the same draw as torchattacks' PGD (`uniform_(-eps, eps)` of a tensor shaped like
    x), so a generator seeded like torch's global one gives torchattacks' start.
    """
    where = generator.device if generator is not None else x.device
    delta = torch.empty(x.shape, dtype=x.dtype, device=where).uniform_(-eps, eps, generator=generator)
    return (x + delta.to(x.device)).clamp(0.0, 1.0)


def pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    eps: float,
    step: float,
    steps: int,
    generator: torch.Generator | None = None,
    targeted: bool = False,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """BIM from a uniformly random start in the ε-ball (`uniform_start`) or from `start`; y as
    for `bim`."""
    if start is None:
        start = uniform_start(x, eps, generator)
    return bim(model, x, y, eps, step, steps, targeted, start=start)


def random_signs(shape: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """Independent ±1 (int8) per element."""
    device = generator.device if generator is not None else None
    return torch.randint(0, 2, tuple(shape), generator=generator, dtype=torch.int8, device=device) * 2 - 1


def noise(
    x: torch.Tensor, eps: float, generator: torch.Generator | None = None, signs: torch.Tensor | None = None
) -> torch.Tensor:
    """x + ε·s with s = ±1 per pixel (`random_signs`, or the given `signs`), clipped to [0, 1]."""
    if signs is None:
        signs = random_signs(x.shape, generator)
    return (x + eps * signs.to(device=x.device, dtype=x.dtype)).clamp(0.0, 1.0)


def clean(x: torch.Tensor) -> torch.Tensor:
    return x


def deepfool(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int = 50,
    overshoot: float = 0.02,
    candidates: int | None = None,
) -> torch.Tensor:
    """DeepFool (L2; Moosavi-Dezfooli et al. 2016), as torchattacks 3.5.1 runs it, batched.

    Each step linearises the logits at the current image, finds the class k among the
    candidates whose linearised boundary with y is nearest, |f_k − f_y| / ‖∇f_k − ∇f_y‖₂, and
    moves (1 + overshoot) times onto it, clipping to [0, 1]. An image stops as soon as its
    prediction is not y (it is then left as it is); at most `steps` steps. candidates: how many
    classes are tried besides y, the highest clean logits first (None: all, as torchattacks);
    the authors' code tries 10, which keeps ImageNet's 1000 classes affordable.
    """
    n = x.shape[0]
    adv = x.detach().clone()
    with torch.no_grad():
        logits = model(x)
    n_classes = logits.shape[1]
    if candidates is None or candidates >= n_classes:
        everything = torch.arange(n_classes, device=x.device).expand(n, n_classes)
        others = everything[everything != y[:, None]].view(n, n_classes - 1)
    else:
        masked = logits.float().scatter(1, y[:, None], float("-inf"))
        others = masked.topk(candidates - 1, dim=1).indices
    classes = torch.cat([y[:, None], others], 1)  # y first
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    for _ in range(steps):
        index = active.nonzero().squeeze(1)
        if index.numel() == 0:
            break
        xa = adv[index].requires_grad_(True)
        with torch.enable_grad():
            f = model(xa)
            fooled = f.detach().argmax(1) != y[index]
            f = f.gather(1, classes[index])
            grads = [
                torch.autograd.grad(f[:, j].sum(), xa, retain_graph=j + 1 < f.shape[1])[0] for j in range(f.shape[1])
            ]
        f = f.detach()
        w = torch.stack(grads, 1)
        f_prime = f[:, 1:] - f[:, :1]
        w_prime = w[:, 1:] - w[:, :1]
        value = f_prime.abs() / w_prime.flatten(2).norm(p=2, dim=2)
        nearest = value.argmin(1)
        pick = torch.arange(len(index), device=x.device)
        wp = w_prime[pick, nearest]
        shape = (-1,) + (1,) * (x.dim() - 1)
        delta = f_prime[pick, nearest].abs().view(shape) * wp / (wp.flatten(1).norm(p=2, dim=1) ** 2).view(shape)
        moved = (xa.detach() + (1 + overshoot) * delta).clamp(0.0, 1.0)
        adv[index[~fooled]] = moved[~fooled]
        active[index[fooled]] = False
    return adv


def _atanh(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.log((1 + z) / (1 - z))


def cw(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    c: float = 1.0,
    kappa: float = 0.0,
    steps: int = 100,
    lr: float = 0.01,
) -> torch.Tensor:
    """Carlini–Wagner L2 (untargeted, fixed c: no binary search), as torchattacks 3.5.1 runs it.

    Adam (lr) on w, x* = (tanh(w) + 1)/2 starting at x, minimising
    ‖x* − x‖² + c·max(Z_y − max_{i≠y} Z_i, −κ). The result is the misclassified iterate of
    least L2 distance (x itself when none is). Every `max(steps // 10, 1)` steps an image whose
    cost rose since the last check stops (torchattacks stops the whole batch on the batch's
    summed cost; per image, a result does not depend on its batch). Pixels at exactly 0 or 1
    cannot move (atanh(±1) = ±∞), as in torchattacks. The other classes' maximum is taken over
    the other logits themselves (torchattacks masks them by a product, which reads 0 when all of
    them are negative).
    """
    x = x.detach()
    w = _atanh((x * 2 - 1).clamp(-1, 1)).detach().requires_grad_(True)
    best = x.clone()
    best_l2 = torch.full((x.shape[0],), 1e10, dtype=x.dtype, device=x.device)
    previous = torch.full_like(best_l2, 1e10)
    stopped = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    optimizer = torch.optim.Adam([w], lr=lr)
    shape = (-1,) + (1,) * (x.dim() - 1)
    for step in range(steps):
        with torch.enable_grad():
            adv = (torch.tanh(w) + 1) / 2
            l2 = (adv - x).square().flatten(1).sum(1)
            logits = model(adv)
            real = logits.gather(1, y[:, None]).squeeze(1)
            other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
            cost = l2 + c * torch.clamp(real - other, min=-kappa)
            optimizer.zero_grad()
            cost.sum().backward()
        optimizer.step()
        better = (logits.detach().argmax(1) != y) & (best_l2 > l2.detach()) & ~stopped
        best_l2 = torch.where(better, l2.detach(), best_l2)
        best = torch.where(better.view(shape), adv.detach(), best)
        if step % max(steps // 10, 1) == 0:
            stopped |= cost.detach() > previous
            previous = cost.detach()
            if bool(stopped.all()):
                break
    return best


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Croce & Hein's difference of logits ratio, per image: −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3)."""
    z, order = logits.sort(dim=1)
    top_is_y = (order[:, -1] == y).to(logits.dtype)
    zy = logits.gather(1, y[:, None]).squeeze(1)
    return -(zy - z[:, -2] * top_is_y - z[:, -1] * (1.0 - top_is_y)) / (z[:, -1] - z[:, -3] + 1e-12)


def _apgd_grad(model, x_adv, y, criterion):
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_adv)
        loss = criterion(logits, y)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return logits.detach(), loss.detach(), grad.detach()


def _apgd_run(model, x, y, eps, steps, criterion, u, rho=0.75):
    """One APGD run (the reference code's `attack_single_run`, L∞) from x + ε·t/‖t‖∞, t = 2u − 1.

    Returns (the point of highest loss, still classified as y?, that loss, the last iterate
    that was not classified as y). The first checkpoint is after 0.22·steps iterations; each
    later interval is 0.03·steps shorter, down to 0.06·steps. At a checkpoint an image's step
    size halves (and it restarts from its best point) when the loss rose in at most ρ of the
    interval's steps, or when the step size was kept at the last checkpoint and its best loss has
    not improved since.
    """
    n = x.shape[0]
    shape = (-1,) + (1,) * (x.dim() - 1)
    steps_2, steps_min, size_decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    t = 2 * u - 1
    start = eps * torch.ones((n,) + (1,) * (x.dim() - 1), dtype=t.dtype, device=t.device) * t
    start = start / t.reshape(n, -1).abs().amax(1).view(shape)
    x_adv = (x + start.to(x.device)).clamp(0.0, 1.0)
    x_best, x_best_adv = x_adv.clone(), x_adv.clone()
    # float32 and zero-filled like the reference's record of the losses, whose first check reads
    # the row before the first step as the (still zero) last row.
    loss_steps = torch.zeros((steps, n), dtype=torch.float32, device=x.device)
    logits, loss, grad = _apgd_grad(model, x_adv, y, criterion)
    grad_best = grad.clone()
    acc = logits.argmax(1) == y
    loss_best = loss.clone()
    step_size = torch.full((n,) + (1,) * (x.dim() - 1), 2 * eps, dtype=torch.float32, device=x.device)
    x_adv_old = x_adv.clone()
    k, since_check = steps_2, 0
    loss_best_last_check = loss_best.clone()
    reduced_last_check = torch.ones(n, dtype=torch.bool, device=x.device)
    for i in range(steps):
        with torch.no_grad():
            momentum = x_adv - x_adv_old
            x_adv_old = x_adv.clone()
            a = 0.75 if i > 0 else 1.0
            z = _project(x_adv + step_size * torch.sign(grad), x, eps)
            x_adv = _project(x_adv + (z - x_adv) * a + momentum * (1 - a), x, eps)
        logits, loss, grad = _apgd_grad(model, x_adv, y, criterion)
        pred = logits.argmax(1) == y
        acc = acc & pred
        x_best_adv = torch.where((~pred).view(shape), x_adv, x_best_adv)
        loss_steps[i] = loss.float()
        improved = loss > loss_best
        x_best = torch.where(improved.view(shape), x_adv, x_best)
        grad_best = torch.where(improved.view(shape), grad, grad_best)
        loss_best = torch.where(improved, loss, loss_best)
        since_check += 1
        if since_check == k:
            rises = sum((loss_steps[i - j] > loss_steps[i - j - 1]).long() for j in range(k))
            oscillating = rises <= k * rho
            stalled = ~reduced_last_check & (loss_best_last_check >= loss_best)
            reduce = oscillating | stalled
            reduced_last_check = reduce.clone()
            loss_best_last_check = loss_best.clone()
            step_size = torch.where(reduce.view(shape), step_size / 2.0, step_size)
            x_adv = torch.where(reduce.view(shape), x_best, x_adv)
            grad = torch.where(reduce.view(shape), grad_best, grad)
            since_check = 0
            k = max(k - size_decr, steps_min)
    return x_best, acc, loss_best, x_best_adv


def _apgd_runs(model, x, y, eps, steps, losses, starts, rho) -> torch.Tensor:
    """APGD runs in turn, each on the images still classified as y: run r uses the loss
    `losses[r](index)` (index: the images it attacks) and starts from `starts[r]` (None: torch's
    global generator). A fooled image keeps its run's last fooling iterate; one that no run fools
    keeps its highest-loss point over the runs."""
    x = x.detach()
    with torch.no_grad():
        logits = model(x)
    correct = logits.argmax(1) == y
    adv, best = x.clone(), x.clone()
    best_loss = torch.full((x.shape[0],), float("-inf"), dtype=logits.dtype, device=x.device)
    shape = (-1,) + (1,) * (x.dim() - 1)
    for r, loss_of in enumerate(losses):
        index = correct.nonzero().squeeze(1)
        if index.numel() == 0:
            break
        u = torch.rand(x.shape) if starts is None else starts[r]
        x_best, still, loss_best, x_best_adv = _apgd_run(
            model, x[index], y[index], eps, steps, loss_of(index), u[index.to(u.device)], rho
        )
        adv[index[~still]] = x_best_adv[~still]
        correct[index[~still]] = False
        higher = still & (loss_best > best_loss[index])
        best[index[higher]] = x_best[higher]
        best_loss[index[higher]] = loss_best[higher]
    return torch.where(correct.view(shape), best, adv)


def _n_classes(model: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return model(x[:1]).shape[1]


def apgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 100,
    restarts: int = 1,
    loss: str = "ce",
    starts: torch.Tensor | None = None,
    rho: float = 0.75,
) -> torch.Tensor:
    """APGD (L∞; Croce & Hein 2020) with the CE or DLR loss, untargeted against y.

    Restart r attacks the images still classified as y from x + ε·t/‖t‖∞, t = 2·starts[r] − 1
    (starts: uniforms in [0, 1) shaped (restarts, *x.shape); None draws them from torch's global
    generator, as torchattacks does). An image that a run fools keeps that run's last fooling
    iterate (as the reference code); one that none fools keeps the point of highest loss over the
    runs (the reference code returns x itself: a dissection wants the attacked image).
    """
    criterion = {"ce": lambda z, t: F.cross_entropy(z, t, reduction="none"), "dlr": dlr_loss}[loss]
    if x.shape[0] and loss == "dlr" and _n_classes(model, x) < 3:
        raise AttackError(f"APGD's DLR loss needs at least 3 classes, the model has {_n_classes(model, x)}")
    return _apgd_runs(model, x, y, eps, steps, [lambda index: criterion] * restarts, starts, rho)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Croce & Hein's targeted DLR, per image: −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)."""
    z, _ = logits.sort(dim=1)
    zy = logits.gather(1, y[:, None]).squeeze(1)
    zt = logits.gather(1, target[:, None]).squeeze(1)
    return -(zy - zt) / (z[:, -1] - 0.5 * z[:, -3] - 0.5 * z[:, -4] + 1e-12)


def target_ranks(n_classes: int, targets: int) -> range:
    """The ranks (by clean logit, 2 = the runner-up) of the classes a targeted run aims at:
    the `targets` highest after the first, at most every other class."""
    return range(2, min(targets, n_classes - 1) + 2)


def apgd_t(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 100,
    restarts: int = 1,
    targets: int = 9,
    starts: torch.Tensor | None = None,
    rho: float = 0.75,
) -> torch.Tensor:
    """APGD-T (L∞; AutoAttack's targeted APGD): APGD on the targeted DLR loss towards the class
    of clean-logit rank 2, 3, … (`target_ranks`), `restarts` runs per target, each run on the
    images still classified as y. starts: uniforms shaped (targets·restarts, *x.shape), target
    by target (None: torch's global generator). Results as `apgd`'s.
    """
    x = x.detach()
    with torch.no_grad():
        logits = model(x)
    if logits.shape[1] < 4:
        raise AttackError(f"APGD-T's targeted DLR loss needs at least 4 classes, the model has {logits.shape[1]}")
    order = logits.sort(dim=1)[1]

    def towards(rank: int):
        def loss_of(index: torch.Tensor):
            target = order[index, -rank]
            return lambda z, t: dlr_targeted_loss(z, t, target)

        return loss_of

    losses = [towards(rank) for rank in target_ranks(logits.shape[1], targets) for _ in range(restarts)]
    return _apgd_runs(model, x, y, eps, steps, losses, starts, rho)


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y − max_{i≠y} z_i per image: > 0 while the image is classified as y."""
    zy = logits.gather(1, y[:, None]).squeeze(1)
    return zy - logits.scatter(1, y[:, None], float("-inf")).amax(1)


def _square_size(i: int, queries: int, p_init: float, n_features: int, channels: int) -> int:
    """The side of iteration i's square: p (the share of pixels changed) halves at fixed
    fractions of the queries, as in the reference code's schedule (rescaled to 10,000)."""
    it = int(i / queries * 10000)
    halvings = sum(it > edge for edge in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    p = p_init / 2**halvings
    return max(int(round(math.sqrt(p * n_features / channels))), 1)


def _square_run(model, x, y, eps, queries, p_init, init_u, step_u):
    """One Square Attack run (L∞, margin loss) from x + ε·(random sign per channel and column).

    init_u: uniforms (N, C, 1, W); step_u: uniforms (N, queries, 2 + C), iteration i's
    [square row, square column, sign per channel]. Each iteration moves every image not yet
    fooled: a square of ±2ε per channel, projected onto the ε-ball and [0, 1], kept when it
    lowers the margin. Returns (the lowest-margin points, their margins)."""
    n, c, h, w = x.shape
    shape = (-1,) + (1,) * (x.dim() - 1)
    # The reference draws in float32 whatever the images' type: so does the size of a step.
    signs = torch.sign(2 * init_u.float() - 1).to(x.device)
    x_best = (x + (eps * signs).to(x.dtype)).clamp(0.0, 1.0)
    with torch.no_grad():
        margin_min = _margin(model(x_best), y)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    for i in range(queries):
        index = (margin_min > 0).nonzero().squeeze(1)
        if index.numel() == 0:
            break
        s = _square_size(i, queries, p_init, c * h * w, c)
        u = step_u[index.to(step_u.device), i].float().to(x.device)
        vh, vw = ((h - s) * u[:, 0]).long(), ((w - s) * u[:, 1]).long()
        inside = ((rows >= vh[:, None]) & (rows < vh[:, None] + s))[:, None, :, None] & (
            (cols >= vw[:, None]) & (cols < vw[:, None] + s)
        )[:, None, None, :]
        step = (2.0 * eps * torch.sign(2 * u[:, 2:] - 1)).view(-1, c, 1, 1).to(x.dtype)
        x_new = _project(x_best[index] + torch.where(inside, step, torch.zeros_like(step)), x[index], eps)
        with torch.no_grad():
            margin = _margin(model(x_new), y[index])
        better = (margin < margin_min[index]) | (margin <= 0)
        margin_min[index] = torch.where(better, margin, margin_min[index])
        x_best[index] = torch.where(better.view(shape), x_new, x_best[index])
    return x_best, margin_min


def square(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    queries: int = 5000,
    restarts: int = 1,
    p_init: float = 0.8,
    draws: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Square Attack (L∞; Andriushchenko et al. 2020), untargeted against y, as torchattacks 3.5.1
    runs it but with every image's squares and signs its own.

    draws: (init uniforms (restarts, N, C, 1, W), step uniforms (restarts, N, queries, 2 + C));
    None draws them from torch's global generator. Restart r runs on the images still classified
    as y. A fooled image keeps the first point that fooled it; one that no run fools keeps its
    lowest-margin point (the reference code returns x; a dissection wants the attacked image).
    """
    n, c, h, w = x.shape
    if draws is None:
        draws = (torch.rand((restarts, n, c, 1, w)), torch.rand((restarts, n, queries, 2 + c)))
    init_u, step_u = draws
    x = x.detach()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    adv = x.clone()
    best_margin = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
    for r in range(restarts):
        index = correct.nonzero().squeeze(1)
        if index.numel() == 0:
            break
        on = index.to(init_u.device)
        found, margin = _square_run(model, x[index], y[index], eps, queries, p_init, init_u[r][on], step_u[r][on])
        with torch.no_grad():  # as the reference: fooled is misclassified, not a margin of 0
            fooled = model(found).argmax(1) != y[index]
        lower = fooled | (margin.to(x.dtype) < best_margin[index])
        adv[index[lower]] = found[lower]
        best_margin[index[lower]] = margin[lower].to(x.dtype)
        correct[index[fooled]] = False
    return adv


def _projection_linf(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The smallest-L∞ step d with t + d in [0, 1] and on the hyperplane w·z = b, per row (the
    reference code's `projection_linf`: a sort and a bisection over the coordinates)."""
    w, b = w.clone(), b.clone()
    sign = 2 * ((w * t).sum(1) - b >= 0) - 1
    w.mul_(sign.unsqueeze(1))
    b.mul_(sign)
    a = (w < 0).to(t.dtype)
    d = (a - t) * (w != 0).to(t.dtype)
    p = a - t * (2 * a - 1)
    indp = torch.argsort(p, dim=1)
    b = b - (w * t).sum(1)
    b0 = (w * d).sum(1)
    indp2 = indp.flip((1,))
    ws = w.gather(1, indp2)
    bs2 = -ws * d.gather(1, indp2)
    s = torch.cumsum(ws.abs(), dim=1)
    sb = torch.cumsum(bs2, dim=1) + b0.unsqueeze(1)
    b2 = sb[:, -1] - s[:, -1] * p.gather(1, indp[:, 0:1]).squeeze(1)
    c_l = b - b2 > 0
    c2 = (b - b0 > 0) & (~c_l)
    lb = torch.zeros(int(c2.sum()), device=t.device)
    ub = torch.full_like(lb, w.shape[1] - 1)
    indp_, sb_, s_, p_, b_ = indp[c2], sb[c2], s[c2], p[c2], b[c2]
    for _ in range(math.ceil(math.log2(w.shape[1]))):
        middle = torch.floor((lb + ub) / 2)
        at = middle.long().unsqueeze(1)
        current = indp_.gather(1, indp_.size(1) - 1 - at)
        b2 = (sb_.gather(1, at) - s_.gather(1, at) * p_.gather(1, current)).squeeze(1)
        above = b_ - b2 > 0
        lb = torch.where(above, middle, lb)
        ub = torch.where(above, ub, middle)
    lb = lb.long()
    if c_l.any():
        lmbd = torch.clamp_min((b[c_l] - sb[c_l, -1]) / (-s[c_l, -1]), min=0).unsqueeze(-1)
        d[c_l] = (2 * a[c_l] - 1) * lmbd
    lmbd = torch.clamp_min((b[c2] - sb[c2, lb]) / (-s[c2, lb]), min=0).unsqueeze(-1)
    d[c2] = torch.min(lmbd, d[c2]) * a[c2] + torch.max(-lmbd, d[c2]) * (1 - a[c2])
    return d * (w != 0).to(t.dtype)


def _fab_run(model, x, y, target, eps, steps, u=None, alpha_max=0.1, eta=1.05, beta=0.9):
    """One targeted FAB run (L∞; the reference code's `attack_single_run_targeted`).

    Each step linearises z_target − z_y at the iterate, projects both the iterate and x onto
    that hyperplane (inside [0, 1]), and moves to a mix of the two projections that leans to x by
    at most alpha_max; an iterate that fools is recorded if it is the nearest yet and pulled
    back towards x by beta. u: uniforms shaped like x for a random start at x + (ε/2)·t/‖t‖∞,
    t = 2u − 1 (None: start at x). Returns (the nearest fooling point, or x; its L∞ distance,
    1e10 where none was found)."""
    n = x.shape[0]
    shape = (-1,) + (1,) * (x.dim() - 1)
    rows = torch.arange(n, device=x.device)
    adv = x.clone()
    res = torch.full((n,), 1e10, dtype=x.dtype, device=x.device)
    x1, x0 = x.clone(), x.reshape(n, -1)
    if u is not None:
        t = 2 * u.to(device=x.device, dtype=x.dtype) - 1
        radius = torch.min(res, eps * torch.ones_like(res)).view(shape)
        x1 = (x + radius * t / t.reshape(n, -1).abs().amax(1).view(shape) * 0.5).clamp(0.0, 1.0)
    for _ in range(steps):
        z = x1.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(z)
            diff = -(logits[rows, y] - logits[rows, target])
            (grad,) = torch.autograd.grad(diff.sum(), z)
        with torch.no_grad():
            df, dg = diff.detach(), grad.detach()
            b = -df + (dg * x1).reshape(n, -1).sum(-1)
            w = dg.reshape(n, -1)
            d3 = _projection_linf(torch.cat((x1.reshape(n, -1), x0), 0), torch.cat((w, w), 0), torch.cat((b, b), 0))
            d1, d2 = d3[:n].reshape(x.shape), d3[n:].reshape(x.shape)
            a0 = torch.clamp_min(d3.abs().amax(1, keepdim=True).view(shape), 1e-8)
            a1, a2 = a0[:n], a0[n:]
            alpha = torch.clamp(a1 / (a1 + a2), min=0.0, max=alpha_max)
            x1 = ((x1 + eta * d1) * (1 - alpha) + (x + d2 * eta) * alpha).clamp(0.0, 1.0)
            fooled = model(x1).argmax(1) != y
            dist = (x1 - x).reshape(n, -1).abs().amax(1)
            nearer = fooled & (dist < res)
            adv = torch.where(nearer.view(shape), x1, adv)
            res = torch.where(nearer, dist, res)
            x1 = torch.where(fooled.view(shape), x + (x1 - x) * beta, x1)
    return adv, res


def fab_t(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 100,
    restarts: int = 1,
    targets: int = 9,
    starts: torch.Tensor | None = None,
) -> torch.Tensor:
    """FAB-T (L∞; Croce & Hein 2020, AutoAttack's targeted FAB), against y, as torchattacks 3.5.1
    runs it: towards the class of clean-logit rank 2, 3, … (`target_ranks`), `restarts` runs per
    target, each on the images still classified as y; a run's nearest fooling point counts when it
    lies within ε. The first run of each target starts at x, later ones at a random point
    (starts: uniforms shaped (targets·(restarts − 1), *x.shape), target by target; None: torch's
    global generator). An image that no run fools within ε stays x: FAB looks for the nearest
    boundary point and has no loss to keep a best point of.
    """
    x = x.detach()
    with torch.no_grad():
        logits = model(x)
    correct = logits.argmax(1) == y
    order = logits.sort(dim=1)[1]
    adv = x.clone()
    draw = 0
    for rank in target_ranks(logits.shape[1], targets):
        for r in range(restarts):
            index = correct.nonzero().squeeze(1)
            if index.numel() == 0:
                return adv
            u = None
            if r > 0:
                u = torch.rand(x.shape) if starts is None else starts[draw]
                u, draw = u[index.to(u.device)], draw + 1
            found, _ = _fab_run(model, x[index], y[index], order[index, -rank], eps, steps, u)
            with torch.no_grad():
                fooled = model(found).argmax(1) != y[index]
            fooled &= (found - x[index]).reshape(index.numel(), -1).abs().amax(1) <= eps
            adv[index[fooled]] = found[fooled]
            correct[index[fooled]] = False
    return adv


# The components of `autoattack`, in order; an image's `first_success` is the 1-based number of
# the first that fooled it, 0 where none did.
AUTOATTACK_COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")


def autoattack(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 100,
    targets: int = 9,
    queries: int = 5000,
    draws: Mapping[str, Any] | None = None,
    finish: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AutoAttack, standard version (L∞; Croce & Hein 2020, as RobustBench runs it): APGD-CE,
    APGD-T, FAB-T and Square in turn, one restart each, every component after the first on the
    images still classified as y. Returns (the images, first_success: int8, the 1-based number
    of the first component in `AUTOATTACK_COMPONENTS` that fooled the image, 0 for none).

    draws: the random draws by component, {"apgd-ce": APGD's starts, "apgd-t": APGD-T's starts,
    "square": Square's draws} (None or a missing key: torch's global generator). finish: applied
    to each component's result before it is judged (the shard writer rounds to uint8 there, so
    a success that rounding undoes leaves the image to the next component). A fooled image holds
    its first fooling component's result; one that none fools holds APGD-CE's highest-loss point.
    """
    draws = draws or {}
    finish = finish or (lambda a: a)
    x = x.detach()

    def fooled(adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(adv).argmax(1) != labels

    components = {
        "apgd-t": lambda i: apgd_t(model, x[i], y[i], eps, steps, 1, targets, _pick(draws.get("apgd-t"), i, 1)),
        "fab-t": lambda i: fab_t(model, x[i], y[i], eps, steps, 1, targets),
        "square": lambda i: square(model, x[i], y[i], eps, queries, 1, 0.8, _pick(draws.get("square"), i, 1)),
    }
    adv = finish(apgd(model, x, y, eps, steps, 1, "ce", starts=draws.get("apgd-ce")))
    first = torch.zeros(x.shape[0], dtype=torch.int8, device=x.device)
    first[fooled(adv, y)] = 1
    for code, name in enumerate(AUTOATTACK_COMPONENTS[1:], start=2):
        index = (first == 0).nonzero().squeeze(1)
        if index.numel() == 0:
            break
        result = finish(components[name](index))
        hit = fooled(result, y[index])
        adv[index[hit]] = result[hit]
        first[index[hit]] = code
    return adv, first


def _pick(draws, index: torch.Tensor, axis: int):
    """The images `index` of per-image draws (a tensor, or a tuple of them) along `axis`."""
    if draws is None:
        return None
    if isinstance(draws, tuple):
        return tuple(_pick(d, index, axis) for d in draws)
    return draws.index_select(axis, index.to(draws.device))


def image_generator(seed: int, row: int) -> torch.Generator:
    """A CPU generator seeded from (seed, dataset row): each image's randomness is its own,
    so an attacked image does not depend on which shard or batch it falls in."""
    state = np.random.SeedSequence([int(seed), int(row)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _per_image_draws(spec: AttackSpec, shape: tuple[int, ...], rows: np.ndarray, k: int):
    """Noise signs or PGD grid offsets (one tensor shaped like the images) and random-target
    uniforms (one per image), each image drawn from `image_generator(spec.seed, row)`."""
    per_pixel = spec.method in ("noise", "pgd")
    random_target = spec.targeted and spec.target == "random"
    if not (per_pixel or random_target):
        return None, None
    pixel_random = torch.empty(shape, dtype=torch.int16) if per_pixel else None
    target_u = torch.empty(len(rows), dtype=torch.float64)
    for i, row in enumerate(rows):
        generator = image_generator(spec.seed, int(row))
        if spec.method == "noise":
            pixel_random[i] = random_signs(shape[1:], generator)
        elif spec.method == "pgd":
            # Uniform over the grid points of the ε-ball, so every iterate stays on the grid.
            pixel_random[i] = torch.randint(-k, k + 1, shape[1:], generator=generator, dtype=torch.int16)
        target_u[i] = torch.rand(1, generator=generator, dtype=torch.float64)[0]
    return pixel_random, (target_u if random_target else None)


# --------------------------------------------------------------------------- run on uint8


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


def apgd_starts(spec: AttackSpec, shape: tuple[int, ...], rows: np.ndarray, runs: int | None = None) -> torch.Tensor:
    """APGD's (or FAB's) start uniforms, (runs, N, C, H, W), default `spec.restarts` runs, image i's
    from `image_generator(spec.seed, rows[i])`."""
    runs = spec.restarts if runs is None else runs
    starts = torch.empty((runs, len(rows), *shape[1:]))
    for i, row in enumerate(rows):
        starts[:, i] = torch.rand((runs, *shape[1:]), generator=image_generator(spec.seed, int(row)))
    return starts


def square_draws(
    spec: AttackSpec, shape: tuple[int, ...], rows: np.ndarray, queries: int, restarts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Square's uniforms (init (restarts, N, C, 1, W), steps (restarts, N, queries, 2 + C)), image
    i's from `image_generator(spec.seed, rows[i])`, restart by restart, in the order that
    torchattacks draws them for one image (so a generator seeded as torch's global one gives
    torchattacks' run)."""
    c, w = shape[1], shape[3]
    init = torch.empty((restarts, len(rows), c, 1, w))
    steps = torch.empty((restarts, len(rows), queries, 2 + c))
    for i, row in enumerate(rows):
        generator = image_generator(spec.seed, int(row))
        for r in range(restarts):
            init[r, i] = torch.rand((c, 1, w), generator=generator)
            steps[r, i] = torch.rand((queries, 2 + c), generator=generator)
    return init, steps


def _on_grid(adv: torch.Tensor) -> torch.Tensor:
    """The image as it will be stored (rounded to uint8), in [0, 1]."""
    return (adv * 255).round().clamp(0, 255) / 255


def _autoattack_draws(spec: AttackSpec, u: torch.Tensor, rows: np.ndarray, logits: torch.Tensor) -> dict:
    """Each component's draws from `image_generator(spec.seed, row)` afresh, as the reference
    code seeds every component with the same seed."""
    shape = tuple(u.shape)
    return {
        "apgd-ce": apgd_starts(spec, shape, rows, 1),
        "apgd-t": apgd_starts(spec, shape, rows, len(target_ranks(logits.shape[1], spec.targets))),
        "square": square_draws(spec, shape, rows, spec.queries, 1),
    }


def _attack_batch(model, spec, u, labels, pixel_random, target_u, device, dtype, rows=None) -> dict[str, np.ndarray]:
    u = u.to(device)
    x = u.to(dtype) / 255
    labels = labels.to(device)
    choose = lambda logits: _choose_labels(spec, logits, labels, target_u)  # noqa: E731
    y = None
    extra: dict[str, np.ndarray] = {}
    if spec.method in ("clean", "noise", "pgd", *ROUNDED_METHODS):
        with torch.no_grad():
            logits = model(x)
    if spec.method == "clean":
        adv_u, adv_logits = u, logits
    else:
        if spec.method in ROUNDED_METHODS:
            y = choose(logits)
        if spec.method == "deepfool":
            adv = deepfool(model, x, y, spec.steps, spec.overshoot, spec.candidates)
        elif spec.method == "cw":
            adv = cw(model, x, y, spec.c, spec.kappa, spec.steps, spec.lr)
        elif spec.method == "apgd":
            starts = apgd_starts(spec, tuple(u.shape), rows)
            adv = apgd(model, x, y, spec.eps, spec.steps, spec.restarts, spec.loss, starts=starts)
        elif spec.method == "apgd_t":
            runs = len(target_ranks(logits.shape[1], spec.targets)) * spec.restarts
            starts = apgd_starts(spec, tuple(u.shape), rows, runs)
            adv = apgd_t(model, x, y, spec.eps, spec.steps, spec.restarts, spec.targets, starts=starts)
        elif spec.method == "square":
            draws = square_draws(spec, tuple(u.shape), rows, spec.queries, spec.restarts)
            adv = square(model, x, y, spec.eps, spec.queries, spec.restarts, spec.p_init, draws)
        elif spec.method == "fab_t":
            runs = len(target_ranks(logits.shape[1], spec.targets)) * (spec.restarts - 1)
            starts = apgd_starts(spec, tuple(u.shape), rows, runs) if runs else None
            adv = fab_t(model, x, y, spec.eps, spec.steps, spec.restarts, spec.targets, starts=starts)
        elif spec.method == "autoattack":
            draws = _autoattack_draws(spec, u, rows, logits)
            adv, first = autoattack(model, x, y, spec.eps, spec.steps, spec.targets, spec.queries, draws, _on_grid)
            extra["first_success"] = first.cpu().numpy()
        elif spec.method == "noise":
            adv = noise(x, spec.eps, signs=pixel_random)
        elif spec.method == "pgd":
            y = choose(logits)
            start = (u.to(torch.int16) + pixel_random.to(device)).clamp(0, 255).to(dtype) / 255
            adv = pgd(model, x, y, spec.eps, spec.step, spec.steps, targeted=spec.targeted, start=start)
        else:
            seen: dict[str, torch.Tensor] = {}

            def choose_and_keep(clean_logits: torch.Tensor) -> torch.Tensor:
                # The gradient pass at x gives the clean logits too: no separate forward pass.
                seen["logits"], seen["y"] = clean_logits, choose(clean_logits)
                return seen["y"]

            if spec.method == "fgsm":
                adv = fgsm(model, x, choose_and_keep, spec.eps, spec.targeted)
            else:
                adv = bim(model, x, choose_and_keep, spec.eps, spec.step, spec.steps, spec.targeted)
            logits, y = seen["logits"], seen["y"]
        adv_u = _to_uint8(adv, spec)
        with torch.no_grad():
            adv_logits = model(adv_u.to(dtype) / 255)
    clean_conf, clean_pred = F.softmax(logits.float(), 1).max(1)
    adv_conf, adv_pred = F.softmax(adv_logits.float(), 1).max(1)
    target = y if (spec.targeted and y is not None) else torch.full_like(clean_pred, -1)
    # Perturbation sizes on the device, in exact integers of 1/255: a pass over the whole shard
    # in float64 on the host would cost more than the attack itself on a GPU.
    diff = (adv_u.to(torch.int32) - u.to(torch.int32)).flatten(1)
    return {
        "images": adv_u.cpu().numpy(),
        "linf_255": diff.abs().amax(1).cpu().numpy().astype(np.int64) if diff.shape[1] else np.zeros(len(u), np.int64),
        "sumsq_255": diff.to(torch.int64).square().sum(1).cpu().numpy(),
        "clean_pred": clean_pred.cpu().numpy().astype(np.int64),
        "clean_conf": clean_conf.cpu().numpy().astype(np.float32),
        "adv_pred": adv_pred.cpu().numpy().astype(np.int64),
        "adv_conf": adv_conf.cpu().numpy().astype(np.float32),
        "target": target.cpu().numpy().astype(np.int64),
        **extra,
    }


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

    k = grid_steps(spec.eps)  # ε in 1/255 steps (a spec's ε is on the grid)
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
    pixel_random, target_u = _per_image_draws(spec, images.shape, rows, k)

    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    model.to(device)
    dtype = _model_dtype(model)
    u_all = torch.from_numpy(images)
    labels_all = torch.from_numpy(labels)
    parts: list[dict[str, np.ndarray]] = []

    def run(start: int, stop: int) -> None:
        parts.append(
            _attack_batch(
                model,
                spec,
                u_all[start:stop],
                labels_all[start:stop],
                None if pixel_random is None else pixel_random[start:stop],
                None if target_u is None else target_u[start:stop],
                device,
                dtype,
                rows[start:stop],
            )
        )
        bar.update(stop - start)

    with _eval_mode(model), tqdm(total=n, desc=f"attack {spec.name}", unit="img", disable=None, file=sys.stderr) as bar:
        in_batches(n, batch_size, run)

    out = _concatenate(parts, images.shape)
    if spec.method == "autoattack" and not parts:
        out["first_success"] = np.zeros(0, np.int8)
    linf_255, sumsq_255 = out.pop("linf_255"), out.pop("sumsq_255")
    if n and spec.method not in L2_METHODS and int(linf_255.max()) > k:
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


# --------------------------------------------------------------------------- shards


def _open_dataset(root: str | PathLike):
    return BrodenDataset(root)


def _shard_rows(dataset, plan: ShardPlan, shard: int) -> np.ndarray:
    return np.asarray(shard_rows(dataset, plan, shard), dtype=np.int64)


def _load_model(model_spec: ModelSpec, weights_file: str | PathLike | None):
    return load_model_spec(model_spec, weights_file)


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


def write_attack_shard(
    out_path: str | PathLike,
    *,
    dataset_root: str | PathLike,
    plan: ShardPlan,
    shard: int,
    model_spec: ModelSpec,
    weights_file: str | PathLike | None,
    attack: AttackSpec,
    identity: Mapping[str, Any],
    batch_size: int,
    device: str | torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Attack one shard of the dataset and write its images shard (kind "images")."""
    dataset = _open_dataset(dataset_root)
    rows = _shard_rows(dataset, plan, shard)
    images = _load_images(dataset, rows)
    labels = np.array([dataset.class_index(int(r)) for r in rows], dtype=np.int64)
    model = _load_model(model_spec, weights_file)
    if device is None:
        device = select_device()
    result = run_attack(model, images, labels, attack, batch_size, device, rows=rows)
    arrays = {"rows": rows, "labels": labels, **result}
    attrs = dict(identity) | {"shard": int(shard), "attack_params": attack.to_dict()}
    write_h5(out_path, "images", attrs, arrays)
    log.info(
        "%s: %d images, %d predictions changed",
        out_path,
        len(rows),
        int((result["adv_pred"] != result["clean_pred"]).sum()),
    )
    return arrays
