"""The gradient attacks on float images: FGSM, BIM, PGD, DeepFool, C&W, APGD and APGD-T, and the
noise control.

Conventions: images are in [0, 1], the model normalises inside its forward,
ε and step sizes are in pixel units (e.g. 2/255), and every result is clipped to [0, 1].
These functions take any ε; the shard writer (`attack_runner`) keeps ε on the 1/255 grid.

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

Square, FAB-T and AutoAttack, the rest of AutoAttack's family, are in `autoattack`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import AttackError
from ..specs import AttackSpec


@dataclasses.dataclass(frozen=True)
class SignSteps:
    """BIM's and PGD's settings: `steps` signed gradient steps of size `step` inside the L∞ ε-ball
    (pixel units); targeted: step towards the labels (Eq. 6) instead of away from them."""

    eps: float
    step: float
    steps: int
    targeted: bool = False

    @classmethod
    def of(cls, spec: AttackSpec) -> SignSteps:
        return cls(spec.eps, spec.step, spec.steps, spec.targeted)


@dataclasses.dataclass(frozen=True)
class AutoAttackSettings:
    """The settings of AutoAttack's family (APGD, APGD-T, FAB-T, Square and AutoAttack itself), in
    pixel units; each attack reads the fields it uses. Defaults as AutoAttack's standard version
    (Croce & Hein 2020: 100 iterations, 9 target classes, 5000 queries with p_init 0.8)."""

    eps: float
    steps: int = 100
    restarts: int = 1
    loss: str = "ce"  # APGD's: "ce" or "dlr"
    targets: int = 9
    queries: int = 5000
    p_init: float = 0.8

    @classmethod
    def of(cls, spec: AttackSpec) -> AutoAttackSettings:
        """A spec's settings: its method's own fields, the others at their defaults."""
        given = {field.name: getattr(spec, field.name) for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in given.items() if value is not None})


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


def project_linf(adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Onto the L∞ ε-ball around x, then onto [0, 1]."""
    return torch.min(torch.max(adv, x - eps), x + eps).clamp(0.0, 1.0).detach()


def _descend(model, x, adv, y, settings: SignSteps) -> torch.Tensor:
    """`steps` signed gradient steps from `adv`; a callable `y` is resolved on the first pass."""
    direction = -1.0 if settings.targeted else 1.0
    for _ in range(settings.steps):
        _, grad, y = _loss_grad(model, adv, y)
        adv = project_linf(adv.detach() + direction * settings.step * grad.sign(), x, settings.eps)
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
    return _descend(model, x, x, _argmax if y is None else y, SignSteps(eps, eps, 1, targeted))


def bim(
    model: torch.nn.Module, x: torch.Tensor, y: Labels, settings: SignSteps, start: torch.Tensor | None = None
) -> torch.Tensor:
    """`steps` signed gradient steps of size `step`, each projected to the ε-ball and [0, 1].

    Starts at x (or `start`). y as for `fgsm`: None or a function of the logits is resolved on
    x's logits (from the first step's pass when the descent starts at x).
    """
    y = _argmax if y is None else y
    if start is None:
        return _descend(model, x, x, y, settings)
    if callable(y):  # the first pass is at `start`, so x's logits need a pass of their own
        y = y(_clean_logits(model, x))
    return _descend(model, x, start, y, settings)


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
    settings: SignSteps,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """BIM from a uniformly random start in the ε-ball (`uniform_start`) or from `start`; y as
    for `bim`."""
    if start is None:
        start = uniform_start(x, settings.eps, generator)
    return bim(model, x, y, settings, start=start)


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
            z = project_linf(x_adv + step_size * torch.sign(grad), x, eps)
            x_adv = project_linf(x_adv + (z - x_adv) * a + momentum * (1 - a), x, eps)
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
    settings: AutoAttackSettings,
    starts: torch.Tensor | None = None,
    rho: float = 0.75,
) -> torch.Tensor:
    """APGD (L∞; Croce & Hein 2020) with the CE or DLR loss (`settings.loss`), untargeted against y.

    Restart r attacks the images still classified as y from x + ε·t/‖t‖∞, t = 2·starts[r] − 1
    (starts: uniforms in [0, 1) shaped (restarts, *x.shape); None draws them from torch's global
    generator, as torchattacks does). An image that a run fools keeps that run's last fooling
    iterate (as the reference code); one that none fools keeps the point of highest loss over the
    runs (the reference code returns x itself: a dissection wants the attacked image).
    """
    loss = settings.loss
    criterion = {"ce": lambda z, t: F.cross_entropy(z, t, reduction="none"), "dlr": dlr_loss}[loss]
    if x.shape[0] and loss == "dlr" and _n_classes(model, x) < 3:
        raise AttackError(f"APGD's DLR loss needs at least 3 classes, the model has {_n_classes(model, x)}")
    losses = [lambda index: criterion] * settings.restarts
    return _apgd_runs(model, x, y, settings.eps, settings.steps, losses, starts, rho)


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
    settings: AutoAttackSettings,
    starts: torch.Tensor | None = None,
    rho: float = 0.75,
) -> torch.Tensor:
    """APGD-T (L∞; AutoAttack's targeted APGD): APGD on the targeted DLR loss towards the class
    of clean-logit rank 2, 3, … (`target_ranks`, `settings.targets` of them), `settings.restarts`
    runs per target, each run on the images still classified as y. starts: uniforms shaped
    (targets·restarts, *x.shape), target by target (None: torch's global generator). Results as
    `apgd`'s.
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

    ranks = target_ranks(logits.shape[1], settings.targets)
    losses = [towards(rank) for rank in ranks for _ in range(settings.restarts)]
    return _apgd_runs(model, x, y, settings.eps, settings.steps, losses, starts, rho)
