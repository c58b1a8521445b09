"""The rest of AutoAttack's family on float images: Square, FAB-T and the AutoAttack composition.

Conventions as in `attacks` (images in [0, 1], ε in pixel units, any ε).

- Square (L∞, Andriushchenko et al. 2020): random search with squares of ±2ε, no gradients
- FAB-T (L∞, Croce & Hein 2020): steps onto linearised boundaries towards each runner-up class,
  biased towards x; the nearest fooling point within ε
- AutoAttack (standard): APGD-CE, APGD-T, FAB-T, Square, each on the images not yet fooled
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .attacks import AutoAttackSettings, apgd, apgd_t, project_linf, target_ranks

# FAB's step settings, as the reference code has them: the largest share of a step that leans
# to x, the overshoot of each projection, and how far a fooling iterate is pulled back to x.
_FAB_ALPHA_MAX, _FAB_ETA, _FAB_BETA = 0.1, 1.05, 0.9


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
        x_new = project_linf(x_best[index] + torch.where(inside, step, torch.zeros_like(step)), x[index], eps)
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
    settings: AutoAttackSettings,
    draws: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Square Attack (L∞; Andriushchenko et al. 2020), untargeted against y, as torchattacks 3.5.1
    runs it but with every image's squares and signs its own: `settings.queries` iterations from
    a square share of `settings.p_init`, `settings.restarts` runs.

    draws: (init uniforms (restarts, N, C, 1, W), step uniforms (restarts, N, queries, 2 + C));
    None draws them from torch's global generator. Restart r runs on the images still classified
    as y. A fooled image keeps the first point that fooled it; one that no run fools keeps its
    lowest-margin point (the reference code returns x; a dissection wants the attacked image).
    """
    eps, queries, restarts = settings.eps, settings.queries, settings.restarts
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
        found, margin = _square_run(
            model, x[index], y[index], eps, queries, settings.p_init, init_u[r][on], step_u[r][on]
        )
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


def _fab_run(model, x, y, target, eps, steps, u=None):
    """One targeted FAB run (L∞; the reference code's `attack_single_run_targeted`).

    Each step linearises z_target − z_y at the iterate, projects both the iterate and x onto
    that hyperplane (inside [0, 1]), and moves to a mix of the two projections that leans to x by
    at most _FAB_ALPHA_MAX; an iterate that fools is recorded if it is the nearest yet and pulled
    back towards x by _FAB_BETA. u: uniforms shaped like x for a random start at x + (ε/2)·t/‖t‖∞,
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
            alpha = torch.clamp(a1 / (a1 + a2), min=0.0, max=_FAB_ALPHA_MAX)
            x1 = ((x1 + _FAB_ETA * d1) * (1 - alpha) + (x + d2 * _FAB_ETA) * alpha).clamp(0.0, 1.0)
            fooled = model(x1).argmax(1) != y
            dist = (x1 - x).reshape(n, -1).abs().amax(1)
            nearer = fooled & (dist < res)
            adv = torch.where(nearer.view(shape), x1, adv)
            res = torch.where(nearer, dist, res)
            x1 = torch.where(fooled.view(shape), x + (x1 - x) * _FAB_BETA, x1)
    return adv, res


def fab_t(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: AutoAttackSettings,
    starts: torch.Tensor | None = None,
) -> torch.Tensor:
    """FAB-T (L∞; Croce & Hein 2020, AutoAttack's targeted FAB), against y, as torchattacks 3.5.1
    runs it: `settings.steps` steps towards the class of clean-logit rank 2, 3, … (`target_ranks`,
    `settings.targets` of them), `settings.restarts` runs per target, each on the images still
    classified as y; a run's nearest fooling point counts when it lies within ε. The first run
    of each target starts at x, later ones at a random point (starts: uniforms shaped
    (targets·(restarts − 1), *x.shape), target by target; None: torch's global generator). An
    image that no run fools within ε stays x: FAB looks for the nearest boundary point and has no
    loss to keep a best point of.
    """
    eps = settings.eps
    x = x.detach()
    with torch.no_grad():
        logits = model(x)
    correct = logits.argmax(1) == y
    order = logits.sort(dim=1)[1]
    adv = x.clone()
    draw = 0
    for rank in target_ranks(logits.shape[1], settings.targets):
        for r in range(settings.restarts):
            index = correct.nonzero().squeeze(1)
            if index.numel() == 0:
                return adv
            u = None
            if r > 0:
                u = torch.rand(x.shape) if starts is None else starts[draw]
                u, draw = u[index.to(u.device)], draw + 1
            found, _ = _fab_run(model, x[index], y[index], order[index, -rank], eps, settings.steps, u)
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
    settings: AutoAttackSettings,
    draws: Mapping[str, Any] | None = None,
    finish: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AutoAttack, standard version (L∞; Croce & Hein 2020, as RobustBench runs it): APGD-CE,
    APGD-T, FAB-T and Square in turn, one restart each (`settings` gives ε, the steps, targets and
    queries), every component after the first on the images still classified as y. Returns
    (the images, first_success: int8, the 1-based number of the first component in
    `AUTOATTACK_COMPONENTS` that fooled the image, 0 for none).

    draws: the random draws by component, {"apgd-ce": APGD's starts, "apgd-t": APGD-T's starts,
    "square": Square's draws} (None or a missing key: torch's global generator). finish: applied
    to each component's result before it is judged (the shard writer rounds to uint8 there, so
    a success that rounding undoes leaves the image to the next component). A fooled image holds
    its first fooling component's result; one that none fools holds APGD-CE's highest-loss point.
    """
    draws = draws or {}
    finish = finish or (lambda a: a)
    x = x.detach()
    one = dataclasses.replace(settings, restarts=1, loss="ce", p_init=0.8)

    def fooled(adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(adv).argmax(1) != labels

    components = {
        "apgd-t": lambda i: apgd_t(model, x[i], y[i], one, _pick(draws.get("apgd-t"), i, 1)),
        "fab-t": lambda i: fab_t(model, x[i], y[i], one),
        "square": lambda i: square(model, x[i], y[i], one, _pick(draws.get("square"), i, 1)),
    }
    adv = finish(apgd(model, x, y, one, starts=draws.get("apgd-ce")))
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
