"""Attacks against direct transcriptions of their equations and against torchattacks 3.5.1.

Every reference below is written independently of advdissect.nets.attacks: per-image gradients
with torch.autograd.grad of the cross-entropy, sign, step, clip, in float64 on a tiny conv
net that normalises inside its forward (the project's setup: images in [0, 1]). DeepFool, C&W
and APGD are compared with torchattacks image for image, and DeepFool with a per-image
transcription too.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from advdissect.errors import ArtifactError, AttackError, ConfigError
from advdissect.nets import attack_runner
from advdissect.nets.attack_draws import apgd_starts, image_generator
from advdissect.nets.attack_runner import run_attack
from advdissect.nets.attack_shards import AttackShardJob, write_attacked_rows
from advdissect.nets.attack_stats import attack_statistics
from advdissect.nets.attacks import (
    AutoAttackSettings,
    SignSteps,
    _apgd_run,
    apgd,
    bim,
    cw,
    deepfool,
    dlr_loss,
    fgsm,
    noise,
    pgd,
    random_signs,
)
from advdissect.specs import AttackSpec, ShardPlan, attack_spec, parse_fraction
from advdissect.store import write_h5

torch.set_num_threads(1)

N_CLASSES = 5


class Tiny(nn.Module):
    """Two conv layers on 3×16×16, normalisation inside, float64."""

    def __init__(self, seed: int = 0, batchnorm: bool = False):
        super().__init__()
        torch.manual_seed(seed)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        layers = [nn.Conv2d(3, 6, 3, padding=1)]
        if batchnorm:
            layers.append(nn.BatchNorm2d(6))
        layers += [
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(32, N_CLASSES),
        ]
        self.net = nn.Sequential(*layers)
        self.double().eval()

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


class OOMAbove(nn.Module):
    """Wraps a model; a batch larger than `limit` raises an out-of-memory error."""

    def __init__(self, inner: nn.Module, limit: int = 2, kind: str = "cuda"):
        super().__init__()
        self.inner, self.limit, self.kind, self.refused = inner, limit, kind, 0

    def forward(self, x):
        if x.shape[0] > self.limit:
            self.refused += 1
            if self.kind == "cuda":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate; out of memory")
        return self.inner(x)


@pytest.fixture(scope="module")
def model():
    return Tiny()


def make_images(n=10, seed=0, size=16):
    """uint8 NCHW images with saturated pixels, so clipping at 0 and 255 is exercised."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    images[:, :, :2, :] = 0
    images[:, :, -2:, :] = 255
    return images


def as_float(images_uint8):
    return torch.from_numpy(images_uint8).double() / 255


# ----------------------------------------------------------------- independent references


def ref_grad(model, x, y):
    """∇x CE(f(x_i), y_i), one image at a time."""
    grads = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        loss = F.cross_entropy(model(xi), y[i : i + 1])
        grads.append(torch.autograd.grad(loss, xi)[0])
    return torch.cat(grads)


def ref_fgsm(model, x, y, eps, targeted=False):
    g = ref_grad(model, x, y)
    if targeted:
        return torch.clamp(x - eps * torch.sign(g), 0, 1)  # Eq. 6
    return torch.clamp(x + eps * torch.sign(g), 0, 1)  # Eq. 5


def ref_bim(model, x, y, eps, alpha, steps, start=None, targeted=False):
    adv = x.clone() if start is None else start.clone()
    for _ in range(steps):
        g = ref_grad(model, adv, y)
        adv = adv - alpha * torch.sign(g) if targeted else adv + alpha * torch.sign(g)
        adv = torch.clamp(adv, x - eps, x + eps)
        adv = torch.clamp(adv, 0, 1)
    return adv


def predictions(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


# ----------------------------------------------------------------- config


@pytest.mark.parametrize(
    "value, expected",
    [
        (0, 0.0),
        (0.5, 0.5),
        (3, 3.0),
        ("2/255", 2 / 255),
        (" 8 / 255 ", 8 / 255),
        ("0.25", 0.25),
        (np.float32(0.5), 0.5),
    ],
)
def test_parse_fraction_accepts(value, expected):
    assert parse_fraction(value) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("value", ["abc", "2/", "/255", "1/0", "1/2/3", "-2/255", -0.1, "nan", "inf", True, None, [1]])
def test_parse_fraction_refuses(value):
    with pytest.raises(ConfigError, match="eps"):
        parse_fraction(value, "eps")


def test_spec_from_config_defaults():
    spec = attack_spec("f2", {"method": "fgsm", "eps": "2/255"})
    assert (spec.method, spec.labels, spec.targeted, spec.name) == ("fgsm", "prediction", False, "f2")
    assert spec.eps == pytest.approx(2 / 255)
    b = attack_spec("b", {"method": "bim", "eps": "4/255"})
    assert b.step == pytest.approx(1 / 255) and b.steps == int(min(4 + 4, 1.25 * 4))
    p = attack_spec(
        "p",
        {
            "method": "pgd",
            "eps": "8/255",
            "step": "2/255",
            "steps": 7,
            "seed": 3,
            "labels": "target",
            "target": "random",
        },
    )
    assert (p.steps, p.seed, p.target, p.targeted) == (7, 3, "random", True)
    t = attack_spec("t", {"method": "fgsm", "eps": "25/255", "labels": "target", "target": "4"})
    assert t.target == 4
    assert attack_spec("c", {"method": "clean"}).eps == 0
    assert attack_spec("n", {"method": "noise", "eps": "2/255", "seed": 1}).seed == 1
    d = attack_spec("d", {"method": "deepfool"})
    assert (d.eps, d.steps, d.overshoot, d.candidates, d.labels) == (0, 50, 0.02, 10, "prediction")
    c = attack_spec("cw", {"method": "cw", "c": "1/2", "kappa": 1})
    assert (c.c, c.kappa, c.steps, c.lr, c.eps) == (0.5, 1.0, 100, 0.01, 0)
    a = attack_spec("a", {"method": "apgd", "eps": "4/255", "loss": "dlr", "restarts": 2, "seed": 5})
    assert (a.steps, a.restarts, a.loss, a.seed) == (100, 2, "dlr", 5) and a.eps == pytest.approx(4 / 255)
    assert attack_spec("a", {"method": "apgd", "eps": "4/255"}).loss == "ce"
    # The new methods' keys stay out of every other method's params (the jobs' params are unchanged).
    assert set(attack_spec("f", {"method": "fgsm", "eps": "2/255"}).to_dict()) == {
        "method", "eps", "step", "steps", "labels", "target", "seed", "name"
    }  # fmt: skip
    assert AttackSpec(**d.to_dict()) == d and AttackSpec(**c.to_dict()) == c and AttackSpec(**a.to_dict()) == a


@pytest.mark.parametrize(
    "config, key",
    [
        ({"method": "laser"}, "method"),
        ({"eps": "25/255"}, "method"),
        ({"method": "fgsm"}, "eps"),
        ({"method": "fgsm", "eps": 0}, "eps"),
        ({"method": "fgsm", "eps": 2}, "eps"),
        ({"method": "fgsm", "eps": "x"}, "eps"),
        ({"method": "fgsm", "eps": "25/255", "steps": 3}, "steps"),
        ({"method": "fgsm", "eps": "25/255", "epsilon": 3}, "epsilon"),
        ({"method": "fgsm", "eps": "25/255", "labels": "gold"}, "labels"),
        ({"method": "fgsm", "eps": "25/255", "target": "random"}, "target"),
        ({"method": "fgsm", "eps": "25/255", "labels": "target", "target": "nearest"}, "target"),
        ({"method": "fgsm", "eps": "25/255", "labels": "target", "target": -1}, "target"),
        ({"method": "bim", "eps": "25/255", "steps": 0}, "steps"),
        ({"method": "bim", "eps": "25/255", "steps": 2.5}, "steps"),
        ({"method": "pgd", "eps": "25/255", "step": "-1/255"}, "step"),
        ({"method": "pgd", "eps": "25/255", "seed": -3}, "seed"),
        ({"method": "noise", "eps": "25/255", "labels": "true"}, "labels"),
        ({"method": "clean", "eps": "25/255"}, "eps"),
        ({"method": "deepfool", "eps": "2/255"}, "eps"),
        ({"method": "deepfool", "labels": "true"}, "labels"),
        ({"method": "deepfool", "seed": 1}, "seed"),
        ({"method": "deepfool", "c": 1}, "c"),
        ({"method": "deepfool", "steps": 0}, "steps"),
        ({"method": "deepfool", "overshoot": -0.1}, "overshoot"),
        ({"method": "deepfool", "overshoot": "x"}, "overshoot"),
        ({"method": "deepfool", "candidates": 1}, "candidates"),
        ({"method": "cw", "eps": "2/255"}, "eps"),
        ({"method": "cw", "overshoot": 0.02}, "overshoot"),
        ({"method": "cw", "c": 0}, "c"),
        ({"method": "cw", "lr": 0}, "lr"),
        ({"method": "cw", "kappa": -1}, "kappa"),
        ({"method": "cw", "steps": 2.5}, "steps"),
        ({"method": "apgd"}, "eps"),
        ({"method": "apgd", "eps": 0.01}, "eps"),
        ({"method": "apgd", "eps": "4/255", "loss": "cw"}, "loss"),
        ({"method": "apgd", "eps": "4/255", "restarts": 0}, "restarts"),
        ({"method": "apgd", "eps": "4/255", "step": "1/255"}, "step"),
        ({"method": "apgd", "eps": "4/255", "labels": "target", "target": 1}, "labels"),
        ({"method": "apgd", "eps": "4/255", "kappa": 0}, "kappa"),
        ({"method": "pgd", "eps": "4/255", "restarts": 2}, "restarts"),
    ],
)
def test_spec_from_config_refuses(config, key):
    with pytest.raises(ConfigError) as info:
        attack_spec("myattack", config)
    assert "myattack" in str(info.value) and key in str(info.value)


# ----------------------------------------------------------------- equations


def test_fgsm_untargeted_eq5(model):
    x = as_float(make_images(6))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(fgsm(model, x, y, 0.03), ref_fgsm(model, x, y, 0.03), rtol=0, atol=1e-12)


def test_fgsm_targeted_eq6(model):
    x = as_float(make_images(6, seed=1))
    t = torch.tensor([4, 3, 2, 1, 0, 4])
    torch.testing.assert_close(
        fgsm(model, x, t, 0.03, targeted=True), ref_fgsm(model, x, t, 0.03, targeted=True), rtol=0, atol=1e-12
    )


def test_fgsm_own_prediction_eq10(model):
    x = as_float(make_images(6, seed=2))
    expected = ref_fgsm(model, x, predictions(model, x), 0.02)
    torch.testing.assert_close(fgsm(model, x, None, 0.02), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("targeted", [False, True])
def test_bim_matches_transcription(model, targeted):
    x = as_float(make_images(5, seed=3))
    y = torch.tensor([1, 2, 3, 4, 0])
    ours = bim(model, x, y, SignSteps(0.05, 0.01, 6, targeted))
    torch.testing.assert_close(ours, ref_bim(model, x, y, 0.05, 0.01, 6, targeted=targeted), rtol=0, atol=1e-12)


def test_pgd_matches_transcription(model):
    x = as_float(make_images(5, seed=4))
    y = predictions(model, x)
    ours = pgd(model, x, y, SignSteps(0.05, 0.01, 4), generator=torch.Generator().manual_seed(11))
    delta = torch.empty(x.shape, dtype=x.dtype).uniform_(-0.05, 0.05, generator=torch.Generator().manual_seed(11))
    expected = ref_bim(model, x, y, 0.05, 0.01, 4, start=torch.clamp(x + delta, 0, 1))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)


def test_noise_is_exactly_plus_minus_eps_or_clipped():
    x = as_float(make_images(4, seed=5))
    eps = 0.05
    adv = noise(x, eps, generator=torch.Generator().manual_seed(0))
    diff = adv - x
    exact = torch.isclose(diff.abs(), torch.tensor(eps, dtype=x.dtype), rtol=0, atol=1e-12)
    clipped_high = (adv == 1) & (diff >= 0) & (x + eps > 1)
    clipped_low = (adv == 0) & (diff <= 0) & (x - eps < 0)
    assert bool((exact | clipped_high | clipped_low).all())
    assert bool((diff > 0).any()) and bool((diff < 0).any())
    again = noise(x, eps, generator=torch.Generator().manual_seed(0))
    assert torch.equal(adv, again)
    signs = random_signs((2, 3, 4, 4), torch.Generator().manual_seed(1))
    assert set(signs.unique().tolist()) == {-1, 1}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_output_in_eps_ball_and_unit_range(model, seed):
    x = as_float(make_images(4, seed=seed))
    y = predictions(model, x)
    eps = 0.037  # deliberately off the 1/255 grid: the float functions accept any ε
    outputs = {
        "fgsm": fgsm(model, x, y, eps),
        "fgsm_t": fgsm(model, x, (y + 1) % N_CLASSES, eps, targeted=True),
        "bim": bim(model, x, y, SignSteps(eps, 0.01, 6)),
        "pgd": pgd(model, x, y, SignSteps(eps, 0.01, 6), generator=torch.Generator().manual_seed(seed)),
        "noise": noise(x, eps, generator=torch.Generator().manual_seed(seed)),
    }
    for name, adv in outputs.items():
        assert float((adv - x).abs().max()) <= eps + 1e-12, name
        assert float(adv.min()) >= 0 and float(adv.max()) <= 1, name


# ----------------------------------------------------------------- torchattacks 3.5.1


@pytest.fixture(scope="module")
def ta():
    return pytest.importorskip("torchattacks", minversion="3.5")


def test_torchattacks_fgsm(model, ta):
    x = as_float(make_images(6, seed=6))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    expected = ta.FGSM(model, eps=3 / 255)(x, y)
    torch.testing.assert_close(fgsm(model, x, y, 3 / 255), expected, rtol=0, atol=1e-6)


def test_torchattacks_fgsm_targeted(model, ta):
    x = as_float(make_images(6, seed=7))
    t = torch.tensor([4, 4, 3, 2, 1, 0])
    atk = ta.FGSM(model, eps=3 / 255)
    atk.set_mode_targeted_by_label(quiet=True)  # the labels passed are the targets
    torch.testing.assert_close(fgsm(model, x, t, 3 / 255, targeted=True), atk(x, t), rtol=0, atol=1e-6)


def test_torchattacks_bim(model, ta):
    # torchattacks' BIM: `alpha` is our `step`, `steps` our `steps` (steps=0 there means
    # "choose by the paper's rule", which our config also applies when steps is omitted).
    x = as_float(make_images(6, seed=8))
    y = predictions(model, x)
    expected = ta.BIM(model, eps=4 / 255, alpha=1 / 255, steps=5)(x, y)
    torch.testing.assert_close(bim(model, x, y, SignSteps(4 / 255, 1 / 255, 5)), expected, rtol=0, atol=1e-6)


def test_torchattacks_pgd_same_random_start(model, ta):
    # torchattacks draws PGD's start with torch's global RNG as
    # `torch.empty_like(x).uniform_(-eps, eps)`; our `uniform_start` makes the same draw from
    # its generator, so seeding both identically gives the same start and the same result.
    x = as_float(make_images(6, seed=9))
    y = predictions(model, x)
    torch.manual_seed(1234)
    expected = ta.PGD(model, eps=8 / 255, alpha=2 / 255, steps=5, random_start=True)(x, y)
    ours = pgd(model, x, y, SignSteps(8 / 255, 2 / 255, 5), generator=torch.Generator().manual_seed(1234))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    # Without a random start PGD is BIM.
    plain = ta.PGD(model, eps=8 / 255, alpha=2 / 255, steps=5, random_start=False)(x, y)
    torch.testing.assert_close(bim(model, x, y, SignSteps(8 / 255, 2 / 255, 5)), plain, rtol=0, atol=1e-6)


class Shifted(nn.Module):
    """The model's logits plus a constant: the same predictions, softmax and C&W objective."""

    def __init__(self, inner: nn.Module, shift: float = 100.0):
        super().__init__()
        self.inner, self.shift = inner, shift

    def forward(self, x):
        return self.inner(x) + self.shift


def ref_deepfool(model, x, y, steps, overshoot, candidates=None):
    """DeepFool image by image with the full Jacobian (torch.autograd.functional.jacobian)."""
    out = []
    for i in range(x.shape[0]):
        image, label = x[i : i + 1].clone(), int(y[i])
        with torch.no_grad():
            clean = model(image)[0]
        order = [int(k) for k in clean.argsort(descending=True) if int(k) != label]
        others = order if candidates is None else order[: candidates - 1]
        for _ in range(steps):
            with torch.no_grad():
                logits = model(image)[0]
            if int(logits.argmax()) != label:
                break
            jac = torch.autograd.functional.jacobian(lambda z: model(z)[0], image)[:, 0]
            best = None
            for k in others:
                f = float(logits[k] - logits[label])
                w = jac[k] - jac[label]
                dist = abs(f) / float(w.norm())
                if best is None or dist < best[0]:
                    best = (dist, f, w)
            _, f, w = best
            image = torch.clamp(image + (1 + overshoot) * abs(f) * w / w.norm() ** 2, 0, 1)
        out.append(image)
    return torch.cat(out)


@pytest.mark.parametrize("candidates", [None, 10, 3])
def test_deepfool_matches_transcription(model, candidates):
    # All classes (None, or 10 >= the tiny net's 5), or the two nearest others by clean logit.
    x = as_float(make_images(6, seed=22))
    y = predictions(model, x)
    ours = deepfool(model, x, y, 20, 0.02, candidates)
    torch.testing.assert_close(ours, ref_deepfool(model, x, y, 20, 0.02, candidates), rtol=0, atol=1e-9)


def test_torchattacks_deepfool(model, ta):
    # torchattacks tries every class; so does ours when candidates covers them. Differences are
    # float rounding of the batched Jacobian (observed 4e-16); tolerance 1e-9.
    x = as_float(make_images(8, seed=3))
    y = predictions(model, x)
    expected = ta.DeepFool(model, steps=50, overshoot=0.02)(x, y)
    ours = deepfool(model, x, y, 50, 0.02)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-9)
    assert bool((predictions(model, ours) != y).any())


def test_torchattacks_cw(model, ta):
    # torchattacks stops the whole batch when the batch's summed cost rises at a check; ours stops
    # each image on its own cost, so it is compared with torchattacks run one image at a time.
    # torchattacks takes the other classes' maximum as max((1 − onehot)·Z), which reads 0 when all
    # of them are negative (the tiny net's logits are near 0): on logits shifted by +100 both
    # objectives are C&W's. Tolerance 1e-9 (observed: identical).
    x = as_float(make_images(8, seed=3))
    y = predictions(model, x)
    shifted = Shifted(model)
    expected = torch.cat(
        [ta.CW(shifted, c=1, kappa=0, steps=100, lr=0.01)(x[i : i + 1], y[i : i + 1]) for i in range(8)]
    )
    ours = cw(model, x, y, 1.0, 0.0, 100, 0.01)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-9)
    assert bool((predictions(model, ours) != y).any()) and bool((ours == x).all(1).all(1).all(1).any())
    # The shift changes nothing for ours.
    torch.testing.assert_close(cw(shifted, x, y, 1.0, 0.0, 100, 0.01), ours, rtol=0, atol=1e-9)


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_torchattacks_apgd_same_start(model, ta, loss):
    # torchattacks seeds torch's global generator with its `seed` and draws the start as
    # 2·torch.rand(x.shape) − 1; the same uniforms given to ours as `starts` give the same run.
    # Its single run (x_best: highest loss, x_best_adv: last fooling iterate) is compared whole;
    # its forward returns x_best_adv for the fooled images (ours too) and x for the others
    # (ours keeps x_best: the attacked image a dissection wants). Tolerance 1e-12 (observed 0).
    x = as_float(make_images(8, seed=3))
    y = predictions(model, x)
    torch.manual_seed(0)
    u = torch.rand(x.shape)
    atk = ta.APGD(model, eps=4 / 255, steps=20, n_restarts=1, seed=0, loss=loss)
    torch.manual_seed(0)
    x_best, acc, loss_best, x_best_adv = atk.attack_single_run(x, y)
    criterion = {"ce": lambda z, t: F.cross_entropy(z, t, reduction="none"), "dlr": dlr_loss}[loss]
    ours = _apgd_run(model, x, y, 4 / 255, 20, criterion, u)
    torch.testing.assert_close(ours[0], x_best, rtol=0, atol=1e-12)
    assert torch.equal(ours[1], acc)
    torch.testing.assert_close(ours[2], loss_best, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours[3], x_best_adv, rtol=0, atol=1e-12)

    full = ta.APGD(model, eps=4 / 255, steps=20, n_restarts=1, seed=0, loss=loss)(x, y)
    result = apgd(model, x, y, AutoAttackSettings(4 / 255, steps=20, loss=loss), starts=u[None])
    fooled = ~acc
    assert bool(fooled.any()) and bool(acc.any())
    torch.testing.assert_close(result[fooled], full[fooled], rtol=0, atol=1e-12)
    torch.testing.assert_close(result[acc], x_best[acc], rtol=0, atol=1e-12)
    assert torch.equal(full[acc], x[acc])


@pytest.mark.parametrize("loss", ["ce", "dlr"])
@pytest.mark.parametrize("seed", [0, 1])
def test_apgd_stays_in_eps_ball_and_unit_range(model, loss, seed):
    x = as_float(make_images(6, seed=seed))
    y = predictions(model, x)
    eps = 0.037  # off the grid: the float function accepts any ε
    starts = torch.rand((2, *x.shape), generator=torch.Generator().manual_seed(seed))
    adv = apgd(model, x, y, AutoAttackSettings(eps, steps=10, restarts=2, loss=loss), starts=starts)
    assert float((adv - x).abs().max()) <= eps + 1e-12
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    out = run_attack(
        model, make_images(6, seed=seed), np.full(6, -1), spec({"method": "apgd", "eps": "3/255", "steps": 10}), 4
    )
    assert int(np.abs(out["images"].astype(int) - make_images(6, seed=seed).astype(int)).max()) <= 3
    assert float(out["linf"].max()) <= 3 / 255 + 1e-7


def test_apgd_at_least_as_strong_as_pgd(model):
    # Same ε and number of steps, stored (rounded) images: APGD's success rate is at least PGD's
    # (on these 24 images: PGD 13, APGD-CE 13, APGD-DLR 14).
    images = make_images(24, seed=23)
    rates = {}
    for name, settings in {
        "pgd": {"method": "pgd", "eps": "2/255", "step": "1/255", "steps": 10},
        "apgd_ce": {"method": "apgd", "eps": "2/255", "steps": 10},
        "apgd_dlr": {"method": "apgd", "eps": "2/255", "steps": 10, "loss": "dlr"},
    }.items():
        out = run_attack(model, images, np.full(24, -1), spec(settings), 24, "cpu")
        rates[name] = int((out["adv_pred"] != out["clean_pred"]).sum())
    assert rates["apgd_ce"] >= rates["pgd"] and rates["apgd_dlr"] >= rates["pgd"], rates
    assert 0 < rates["pgd"] < 24


def test_apgd_restarts_only_attack_the_unfooled(model):
    # A second restart changes no image the first one fooled, and fools at least as many.
    x = as_float(make_images(8, seed=24))
    y = predictions(model, x)
    starts = torch.rand((2, *x.shape), generator=torch.Generator().manual_seed(0))
    one = apgd(model, x, y, AutoAttackSettings(2 / 255, steps=6), starts=starts[:1])
    two = apgd(model, x, y, AutoAttackSettings(2 / 255, steps=6, restarts=2), starts=starts)
    fooled = predictions(model, one) != y
    assert torch.equal(two[fooled], one[fooled])
    assert int((predictions(model, two) != y).sum()) >= int(fooled.sum())


def test_apgd_starts_per_image_from_its_row():
    a = attack_spec("a", {"method": "apgd", "eps": "2/255", "restarts": 2, "seed": 7})
    starts = apgd_starts(a, (3, 3, 4, 4), np.array([5, 9, 5]))
    assert starts.shape == (2, 3, 3, 4, 4)
    assert torch.equal(starts[:, 0], starts[:, 2]) and not torch.equal(starts[:, 0], starts[:, 1])
    alone = torch.rand((2, 3, 4, 4), generator=image_generator(7, 9))
    assert torch.equal(starts[:, 1], alone)


@pytest.mark.parametrize(
    "settings",
    [
        {"method": "deepfool"},
        {"method": "cw"},
        {"method": "cw", "kappa": 0.05},
        {"method": "apgd", "eps": "4/255", "steps": 20},
    ],
    ids=lambda c: c["method"] + ("_kappa" if "kappa" in c else ""),
)
def test_rounded_results_and_their_predictions(model, settings, record_property):
    """DeepFool, C&W and APGD end off the 1/255 grid and are stored rounded to uint8. The stored
    predictions are those of the rounded images (what is dissected); the share of the float
    results' successes that survive rounding is reported (`pytest -s` prints it)."""
    images = make_images(32, seed=21)
    a = spec(settings)
    out = run_attack(model, images, np.full(32, -1), a, 16, "cpu")
    x = as_float(images)
    y = predictions(model, x)
    if a.method == "deepfool":
        adv = deepfool(model, x, y, a.steps, a.overshoot, a.candidates)
    elif a.method == "cw":
        adv = cw(model, x, y, a.c, a.kappa, a.steps, a.lr)
    else:
        adv = apgd(model, x, y, AutoAttackSettings.of(a), starts=apgd_starts(a, images.shape, np.arange(32)))
    np.testing.assert_array_equal(out["images"], (adv * 255).round().to(torch.uint8).numpy())
    stored = torch.from_numpy(out["images"]).double() / 255
    with torch.no_grad():
        probs = F.softmax(model(stored), 1)
    np.testing.assert_array_equal(out["adv_pred"], probs.argmax(1).numpy())
    np.testing.assert_allclose(out["adv_conf"], probs.max(1).values.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(out["clean_pred"], y.numpy())
    diff = (stored - x).flatten(1)
    np.testing.assert_allclose(out["l2"], diff.norm(dim=1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["linf"], diff.abs().amax(1).numpy(), rtol=1e-6)
    float_success = predictions(model, adv) != y
    kept = float_success & torch.from_numpy(out["adv_pred"] != out["clean_pred"])
    share = float(kept.sum()) / max(1, int(float_success.sum()))
    record_property("kept_after_rounding", share)
    print(f"{a.method} {settings}: {int(kept.sum())}/{int(float_success.sum())} successes kept after rounding")
    assert bool(float_success.any())
    if a.method == "apgd":
        assert float(out["linf"].max()) <= a.eps + 1e-7


# ----------------------------------------------------------------- run_attack on uint8


def spec(config, name="a"):
    return attack_spec(name, config)


@pytest.mark.parametrize(
    "config",
    [
        {"method": "fgsm", "eps": "2/255"},
        {"method": "bim", "eps": "2/255", "step": "1/255", "steps": 2},
        {"method": "pgd", "eps": "2/255", "step": "1/255", "steps": 2},
        {"method": "deepfool", "steps": 2},
        {"method": "cw", "steps": 2},
        {"method": "apgd", "eps": "2/255", "steps": 2},
    ],
    ids=lambda c: c["method"],
)
def test_shards_are_made_by_the_functions_checked_above(model, monkeypatch, config):
    """run_attack (the shard writer) calls fgsm / bim / pgd / deepfool / cw / apgd themselves, the
    functions that the transcription and torchattacks tests check, once per batch."""
    calls = []

    def spy(name, original):
        def called(*args, **kwargs):
            calls.append(name)
            return original(*args, **kwargs)

        return called

    for name in ("fgsm", "bim", "pgd", "deepfool", "cw", "apgd"):
        monkeypatch.setattr(attack_runner, name, spy(name, getattr(attack_runner, name)))
    run_attack(model, make_images(4, seed=3), np.full(4, -1), spec(config), 2, "cpu")
    assert calls.count(config["method"]) == 2


def test_run_attack_fgsm_uint8_lossless(model):
    images = make_images(7, seed=10)
    labels = np.full(7, -1)
    out = run_attack(model, images, labels, spec({"method": "fgsm", "eps": "3/255"}), 4, "cpu")
    x = as_float(images)
    exact = ref_fgsm(model, x, predictions(model, x), 3 / 255)
    scaled = exact * 255
    assert float((scaled - scaled.round()).abs().max()) < 1e-9  # the float result is on the grid
    np.testing.assert_array_equal(out["images"], scaled.round().to(torch.uint8).numpy())
    assert out["images"].dtype == np.uint8
    # Per-image distances, brute force from the stored uint8 images.
    for i in range(7):
        d = (out["images"][i].astype(float) - images[i].astype(float)) / 255
        assert out["linf"][i] == pytest.approx(np.abs(d).max(), abs=1e-7)
        assert out["l2"][i] == pytest.approx(math.sqrt((d**2).sum()), rel=1e-6)
    assert float(out["linf"].max()) <= 3 / 255 + 1e-7
    np.testing.assert_array_equal(out["clean_pred"], predictions(model, x).numpy())
    adv_logits = model(torch.from_numpy(out["images"]).double() / 255).detach()
    np.testing.assert_array_equal(out["adv_pred"], adv_logits.argmax(1).numpy())
    np.testing.assert_allclose(out["adv_conf"], F.softmax(adv_logits, 1).max(1).values.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(out["target"], -1)


def test_run_attack_bim_and_true_labels(model):
    images = make_images(5, seed=11)
    labels = np.array([0, 1, 2, 3, 4])
    out = run_attack(
        model,
        images,
        labels,
        spec({"method": "bim", "eps": "4/255", "step": "1/255", "steps": 3, "labels": "true"}),
        2,
        "cpu",
    )
    x = as_float(images)
    expected = ref_bim(model, x, torch.from_numpy(labels), 4 / 255, 1 / 255, 3)
    np.testing.assert_array_equal(out["images"], (expected * 255).round().to(torch.uint8).numpy())


def test_run_attack_pgd_start_on_grid(model):
    # Documented draw: offsets = randint(-k, k+1) per pixel for the whole call, from the
    # generator, then the clipped start (u + offsets)/255.
    images = make_images(4, seed=12)
    k = 4
    out = run_attack(
        model,
        images,
        np.full(4, -1),
        spec({"method": "pgd", "eps": "4/255", "step": "1/255", "steps": 3, "seed": 5}),
        3,
        "cpu",
        rows=np.arange(20, 24),
    )
    offsets = torch.stack(
        [
            torch.randint(-k, k + 1, images.shape[1:], generator=image_generator(5, row), dtype=torch.int16)
            for row in range(20, 24)
        ]
    )
    u = torch.from_numpy(images).to(torch.int16)
    start = (u + offsets).clamp(0, 255).double() / 255
    x = as_float(images)
    expected = ref_bim(model, x, predictions(model, x), 4 / 255, 1 / 255, 3, start=start)
    np.testing.assert_array_equal(out["images"], (expected * 255).round().to(torch.uint8).numpy())


def test_run_attack_noise_exact_on_grid(model):
    images = make_images(4, seed=13)
    out = run_attack(
        model, images, np.full(4, -1), spec({"method": "noise", "eps": "2/255"}), 3, "cpu", rows=np.array([7, 3, 9, 1])
    )
    signs = np.stack([random_signs(images.shape[1:], image_generator(0, row)).numpy() for row in (7, 3, 9, 1)]).astype(
        int
    )
    expected = np.clip(images.astype(int) + 2 * signs, 0, 255)
    np.testing.assert_array_equal(out["images"], expected)


def test_run_attack_clean_is_identity(model):
    images = make_images(3, seed=14)
    out = run_attack(model, images, np.full(3, -1), spec({"method": "clean"}), 2, "cpu")
    np.testing.assert_array_equal(out["images"], images)
    np.testing.assert_array_equal(out["adv_pred"], out["clean_pred"])
    assert float(out["linf"].max()) == 0 and float(out["l2"].max()) == 0


def test_eps_off_grid_refused():
    """Shards hold uint8, exact only on the 1/255 grid: an attack spec off it is refused when built."""
    off_grid = r"attacks\.f\.eps: 0\.01 is not a multiple of 1/255 \(images are stored as uint8"
    with pytest.raises(ConfigError, match=off_grid):
        attack_spec("f", {"method": "fgsm", "eps": 0.01})
    with pytest.raises(ConfigError, match=r"attacks\.b\.step: 0\.005 is not a multiple of 1/255"):
        attack_spec("b", {"method": "bim", "eps": "2/255", "step": 0.005, "steps": 2})
    with pytest.raises(ConfigError, match=r"attacks\.attack\.eps"):
        AttackSpec(method="noise", eps=0.01)
    with pytest.raises(ConfigError, match=r"attacks\.attack\.eps: 1e-09 is not a multiple of 1/255.*e\.g\. 1/255"):
        AttackSpec(method="fgsm", eps=1e-9)  # zero steps of 1/255: the image would not move
    with pytest.raises(ConfigError, match=r"attacks\.attack\.step: 1e-09"):
        AttackSpec(method="bim", eps=2 / 255, step=1e-9, steps=2)


def test_true_labels_missing_refused(model):
    with pytest.raises(AttackError, match=r"labels: true.*2 of 3 have none.*labels: prediction"):
        run_attack(
            model,
            make_images(3),
            np.array([1, -1, -1]),
            spec({"method": "fgsm", "eps": "2/255", "labels": "true"}),
            2,
            "cpu",
        )


def test_targeted_fgsm_moves_toward_target(model):
    images = make_images(8, seed=15)
    for target in ("least_likely", "random", 3):
        out = run_attack(
            model,
            images,
            np.full(8, -1),
            spec({"method": "fgsm", "eps": "4/255", "labels": "target", "target": target}),
            8,
            "cpu",
        )
        t = torch.from_numpy(out["target"])
        with torch.no_grad():
            before = F.cross_entropy(model(as_float(images)), t, reduction="none")
            after = F.cross_entropy(model(torch.from_numpy(out["images"]).double() / 255), t, reduction="none")
        assert bool((after < before).all()), target
        if target == "least_likely":
            with torch.no_grad():
                np.testing.assert_array_equal(out["target"], model(as_float(images)).argmin(1).numpy())
        elif target == "random":
            assert bool((out["target"] != out["clean_pred"]).all())
            assert out["target"].min() >= 0 and out["target"].max() < N_CLASSES
        else:
            np.testing.assert_array_equal(out["target"], 3)


def test_fixed_target_out_of_range_refused(model):
    with pytest.raises(AttackError, match="target class 9"):
        run_attack(
            model,
            make_images(2),
            np.full(2, -1),
            spec({"method": "fgsm", "eps": "2/255", "labels": "target", "target": 9}),
            2,
            "cpu",
        )


BATCH_SPECS = [
    {"method": "clean"},
    {"method": "fgsm", "eps": "2/255"},
    {"method": "fgsm", "eps": "3/255", "labels": "target", "target": "random"},
    {"method": "bim", "eps": "3/255", "step": "1/255", "steps": 3},
    {"method": "pgd", "eps": "4/255", "step": "1/255", "steps": 2, "seed": 9},
    {"method": "noise", "eps": "2/255", "seed": 4},
    {"method": "deepfool", "steps": 10},
    {"method": "cw", "steps": 20, "c": 5},
    {"method": "apgd", "eps": "3/255", "steps": 8, "restarts": 2, "seed": 3},
    {"method": "apgd", "eps": "3/255", "steps": 8, "loss": "dlr", "seed": 3},
]


def spec_id(config):
    return config["method"] + ("_t" if "target" in config else "") + ("_" + config["loss"] if "loss" in config else "")


@pytest.mark.parametrize("config", BATCH_SPECS, ids=spec_id)
def test_results_do_not_depend_on_batch_size(model, config):
    images = make_images(10, seed=16)
    results = [run_attack(model, images, np.full(10, -1), spec(config), bs, "cpu") for bs in (1, 3, 8)]
    for other in results[1:]:
        assert other.keys() == results[0].keys()
        for key in results[0]:
            np.testing.assert_array_equal(other[key], results[0][key], err_msg=key)


@pytest.mark.parametrize("kind", ["cuda", "runtime"])
@pytest.mark.parametrize("config", [BATCH_SPECS[1], BATCH_SPECS[4], BATCH_SPECS[5]], ids=["fgsm", "pgd", "noise"])
def test_out_of_memory_halves_batch(model, kind, config):
    images = make_images(9, seed=17)
    reference = run_attack(model, images, np.full(9, -1), spec(config), 2, "cpu")
    fragile = OOMAbove(model, limit=2, kind=kind)
    out = run_attack(fragile, images, np.full(9, -1), spec(config), 8, "cpu")
    assert fragile.refused >= 2  # 8 -> 4 -> 2
    for key in reference:
        np.testing.assert_array_equal(out[key], reference[key], err_msg=key)


def test_out_of_memory_at_batch_one_and_other_errors_propagate(model):
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_attack(
            OOMAbove(model, limit=0), make_images(2), np.full(2, -1), spec({"method": "fgsm", "eps": "2/255"}), 4, "cpu"
        )

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_attack(Broken(), make_images(2), np.full(2, -1), spec({"method": "fgsm", "eps": "2/255"}), 4, "cpu")


def test_eval_mode_used_and_training_mode_restored():
    net = Tiny(seed=1, batchnorm=True)
    images = make_images(4, seed=18)
    reference = run_attack(net, images, np.full(4, -1), spec({"method": "fgsm", "eps": "2/255"}), 4, "cpu")
    net.train()
    out = run_attack(net, images, np.full(4, -1), spec({"method": "fgsm", "eps": "2/255"}), 1, "cpu")
    assert net.training
    for key in reference:
        np.testing.assert_array_equal(out[key], reference[key], err_msg=key)


def test_perturbation_guard_refuses_out_of_ball(model, monkeypatch):
    real = attack_runner._to_uint8

    def widened(adv, spec):
        return (real(adv, spec).to(torch.int16) + 1).clamp(0, 255).to(torch.uint8)

    monkeypatch.setattr(attack_runner, "_to_uint8", widened)
    with pytest.raises(AttackError, match="exceeds eps"):
        run_attack(model, make_images(2, seed=19), np.full(2, -1), spec({"method": "noise", "eps": "1/255"}), 2, "cpu")


def test_empty_input(model):
    out = run_attack(
        model,
        np.zeros((0, 3, 16, 16), np.uint8),
        np.zeros(0, np.int64),
        spec({"method": "fgsm", "eps": "2/255"}),
        4,
        "cpu",
    )
    assert out["images"].shape == (0, 3, 16, 16) and out["linf"].shape == (0,)


# ----------------------------------------------------------------- shards and statistics


class FakeDataset:
    """The parts of BrodenDataset a shard writer uses."""

    def __init__(self, n=11, size=16):
        self.root = "fake"
        self.image_size = (size, size)
        self.images = make_images(n, seed=20, size=size).transpose(0, 2, 3, 1).copy()
        self.classes = np.array([i % N_CLASSES if i % 4 else -1 for i in range(n)])

    def load_image(self, row):
        return self.images[row]

    def class_index(self, row):
        return int(self.classes[row])


def fake_rows(dataset, plan, shard):
    rows = np.arange(len(dataset.images))[: plan.n_images]
    return rows[shard * plan.shard_size : (shard + 1) * plan.shard_size]


@pytest.fixture
def fake_inputs():
    """The dataset whose shards `write_shards` writes."""
    return FakeDataset()


IDENTITY = {"dataset": "syn", "model": "tiny", "attack": "fgsm2"}


def write_shards(tmp_path, settings, n_images=11, shard_size=4):
    """The shards of the first `n_images` rows of a `FakeDataset`, attacked on `Tiny()` as the
    shard writer attacks an opened dataset's rows."""
    dataset, model = FakeDataset(), Tiny()
    plan = ShardPlan("all", n_images, shard_size)
    paths = []
    for shard in range(plan.n_shards):
        path = tmp_path / f"{shard:04d}.h5"
        job = AttackShardJob(
            dataset_root="unused",
            plan=plan,
            shard=shard,
            model_spec={},
            weights_file=None,
            attack=attack_spec(IDENTITY["attack"], settings),
            identity=IDENTITY,
            batch_size=3,
        )
        write_attacked_rows(path, job, dataset, fake_rows(dataset, plan, shard), model, device="cpu")
        paths.append(path)
    return paths


def test_write_attack_shard_and_statistics(tmp_path, fake_inputs, model):
    settings = {"method": "fgsm", "eps": "2/255"}
    paths = write_shards(tmp_path, settings)
    with h5py.File(paths[1]) as f:
        assert f.attrs["kind"] == "images" and f.attrs["shard"] == 1 and f.attrs["attack"] == "fgsm2"
        np.testing.assert_array_equal(f["rows"][()], [4, 5, 6, 7])
        np.testing.assert_array_equal(f["labels"][()], fake_inputs.classes[4:8])
        images = f["images"][()]
        assert images.dtype == np.uint8 and images.shape == (4, 3, 16, 16)
        for key, dtype in [
            ("clean_pred", np.int64),
            ("clean_conf", np.float32),
            ("adv_pred", np.int64),
            ("adv_conf", np.float32),
            ("linf", np.float32),
            ("l2", np.float32),
        ]:
            assert f[key].dtype == dtype and f[key].shape == (4,)
    # The shard equals the attack of those rows done in one go.
    clean = fake_inputs.images[4:8].transpose(0, 3, 1, 2)
    x = as_float(np.ascontiguousarray(clean))
    expected = (ref_fgsm(model, x, predictions(model, x), 2 / 255) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(images, expected)

    identity = IDENTITY | {"attack_params": attack_spec(IDENTITY["attack"], settings).to_dict()}
    stats = attack_statistics(paths, identity)
    assert len(stats) == 1
    row = stats.iloc[0]
    # Brute force over the shards.
    data = {k: [] for k in ("labels", "clean_pred", "adv_pred", "linf", "l2")}
    for p in paths:
        with h5py.File(p) as f:
            for k in data:
                data[k] += list(f[k][()])
    n = len(data["labels"])
    agree = sum(a == c for a, c in zip(data["adv_pred"], data["clean_pred"])) / n
    labelled = [i for i in range(n) if data["labels"][i] >= 0]
    clean_acc = sum(data["clean_pred"][i] == data["labels"][i] for i in labelled) / len(labelled)
    adv_acc = sum(data["adv_pred"][i] == data["labels"][i] for i in labelled) / len(labelled)
    assert (row["dataset"], row["model"], row["attack"], row["method"]) == ("syn", "tiny", "fgsm2", "fgsm")
    assert row["n_images"] == n == 11
    assert row["eps"] == pytest.approx(2 / 255)
    assert row["agreement"] == pytest.approx(agree)
    assert row["success_rate"] == pytest.approx(1 - agree)
    assert row["linf_max"] == pytest.approx(max(data["linf"]))
    assert row["linf_max"] <= 2 / 255 + 1e-7
    assert row["l2_mean"] == pytest.approx(sum(data["l2"]) / n, rel=1e-6)
    assert row["linf_mean"] == pytest.approx(sum(data["linf"]) / n, rel=1e-6)
    assert row["l2_max"] == pytest.approx(max(data["l2"]), rel=1e-6)
    assert row["clean_accuracy"] == pytest.approx(clean_acc)
    assert row["adversarial_accuracy"] == pytest.approx(adv_acc)
    assert row["n_labelled"] == len(labelled)

    with pytest.raises(ArtifactError, match="attack"):
        attack_statistics(paths, IDENTITY | {"attack": "other"})
    with pytest.raises(ArtifactError, match="attack_params"):
        other = attack_spec("fgsm2", {"method": "fgsm", "eps": "4/255"}).to_dict()
        attack_statistics(paths, IDENTITY | {"attack_params": other})
    with pytest.raises(ArtifactError, match="not an attack spec"):  # shards from before specs
        params = {"method": "fgsm", "eps": "2/255"}
        attrs = IDENTITY | {"shard": 0, "attack_params": params}
        write_h5(
            tmp_path / "old.h5", "images", attrs, {"rows": np.arange(1), "images": np.zeros((1, 3, 2, 2), np.uint8)}
        )
        attack_statistics([tmp_path / "old.h5"], IDENTITY)


def test_shard_randomness_depends_on_shard_not_batches(tmp_path, fake_inputs):
    paths = write_shards(tmp_path, {"method": "noise", "eps": "1/255", "seed": 2})
    with h5py.File(paths[0]) as a, h5py.File(paths[1]) as b:
        da = a["images"][()].astype(int) - fake_inputs.images[0:4].transpose(0, 3, 1, 2)
        db = b["images"][()].astype(int) - fake_inputs.images[4:8].transpose(0, 3, 1, 2)
        assert not np.array_equal(da, db)  # each shard draws its own signs


@pytest.mark.parametrize(
    "settings",
    [{"method": "deepfool", "steps": 5}, {"method": "apgd", "eps": "2/255", "steps": 5}],
    ids=["deepfool", "apgd"],
)
def test_statistics_of_rounded_attacks(tmp_path, fake_inputs, settings):
    # DeepFool has no ε: attacks.csv leaves it empty and reports the stored images' L2 and L∞.
    paths = write_shards(tmp_path, settings)
    identity = IDENTITY | {"attack_params": attack_spec(IDENTITY["attack"], settings).to_dict()}
    row = attack_statistics(paths, identity).iloc[0]
    l2, linf = [], []
    for path in paths:
        with h5py.File(path) as f:
            rows = f["rows"][()]
            diff = f["images"][()].astype(np.float64) - fake_inputs.images[rows].transpose(0, 3, 1, 2)
            l2 += list(np.sqrt((diff.reshape(len(rows), -1) ** 2).sum(1)) / 255)
            linf += list(np.abs(diff).reshape(len(rows), -1).max(1) / 255)
    assert row["method"] == settings["method"] and row["labels"] == "prediction"
    assert row["l2_mean"] == pytest.approx(np.mean(l2), rel=1e-5) and row["l2_mean"] > 0
    assert row["linf_max"] == pytest.approx(max(linf), rel=1e-5)
    if settings["method"] == "deepfool":
        assert math.isnan(row["eps"]) and math.isnan(row["eps_255"])
    else:
        assert row["eps_255"] == 2 and row["linf_max"] <= 2 / 255 + 1e-7


def test_statistics_targeted_success_and_no_labels(tmp_path):
    n = 6
    base = {
        "rows": np.arange(n),
        "labels": np.full(n, -1),
        "images": np.zeros((n, 3, 2, 2), np.uint8),
        "clean_pred": np.array([0, 1, 2, 3, 4, 0]),
        "adv_pred": np.array([3, 1, 3, 3, 2, 3]),
        "target": np.array([3, 3, 3, 3, 3, 3]),
        "clean_conf": np.ones(n, np.float32),
        "adv_conf": np.ones(n, np.float32),
        "linf": np.full(n, 4 / 255, np.float32),
        "l2": np.arange(n, dtype=np.float32),
    }
    params = attack_spec("fgsm2", {"method": "fgsm", "eps": "4/255", "labels": "target", "target": 3}).to_dict()
    path = tmp_path / "0000.h5"
    write_h5(path, "images", IDENTITY | {"shard": 0, "attack_params": params}, base)
    row = attack_statistics([path], IDENTITY).iloc[0]
    assert row["agreement"] == pytest.approx(2 / 6)  # positions 1 and 3
    assert row["success_rate"] == pytest.approx(4 / 6)  # adv_pred == 3 at 0, 2, 3, 5
    assert math.isnan(row["clean_accuracy"]) and math.isnan(row["adversarial_accuracy"])
    assert row["l2_mean"] == pytest.approx(2.5)
    with pytest.raises(ArtifactError, match="no image shards"):
        attack_statistics([], IDENTITY)


# ----------------------------------------------------------------- real modules and scripts

SCRIPTS = Path(__file__).resolve().parents[1] / "workflow" / "scripts"


class _Names(dict):
    """Attribute access plus .get, like Snakemake's named lists."""

    __getattr__ = dict.__getitem__


def run_script(name: str, **fields) -> None:
    # `config` stays a dict, as Snakemake passes it; the other sections are attribute namespaces.
    snakemake = SimpleNamespace(
        **{k: _Names(v) if isinstance(v, dict) and k != "config" else v for k, v in fields.items()}
    )
    source = (SCRIPTS / name).read_text()
    saved = sys.stdout, sys.stderr
    try:
        exec(compile(source, str(SCRIPTS / name), "exec"), {"snakemake": snakemake, "__name__": "__main__"})
    finally:
        sys.stdout, sys.stderr = saved
        logging.getLogger().handlers.clear()


def test_scripts_on_synthetic_broden(tiny_broden, tmp_path, monkeypatch):
    from advdissect.data.broden import BrodenDataset
    from advdissect.nets.models import load_model

    monkeypatch.chdir(tmp_path)  # the GPU lock dir is relative to the working directory
    model_spec = {"arch": "resnet18", "num_classes": 20, "normalization": "imagenet", "seed": 0}
    attack = {"method": "pgd", "eps": "2/255", "step": "1/255", "steps": 2, "seed": 1}
    identity = {"dataset": "tiny", "model": "r18", "attack": "pgd2"}
    plan = {"split": "val", "n_images": 6, "shard_size": 4}
    shards = []
    for shard in ("0000", "0001"):
        out = tmp_path / "images" / f"{shard}.h5"
        run_script(
            "attack_shard.py",
            input={"dataset": str(tiny_broden / "index.csv")},
            output={"images": str(out)},
            params={
                "model_spec": model_spec,
                "attack": attack_spec("pgd2", attack).to_dict(),
                "plan": plan,
                "identity": identity,
            },
            config={"dissection": {"batch_size": 3}, "compute": {"gpus": []}},
            wildcards={"shard": shard},
            threads=1,
            log=[str(tmp_path / f"attack_{shard}.log")],
        )
        shards.append(out)
    dataset = BrodenDataset(tiny_broden)
    expected_rows = dataset.rows("val")[:6]
    with h5py.File(shards[1]) as f:
        assert f.attrs["shard"] == 1
        np.testing.assert_array_equal(f["rows"][()], expected_rows[4:])
        np.testing.assert_array_equal(f["labels"][()], [dataset.class_index(int(r)) for r in expected_rows[4:]])
        stored = f["images"][()]
        assert stored.shape == (2, 3) + dataset.image_size
    # Same as attacking those rows directly: an image's randomness comes from its row.
    clean_images = np.stack([dataset.load_image(int(r)).transpose(2, 0, 1) for r in expected_rows[4:]])
    direct = run_attack(
        load_model(**model_spec),
        clean_images,
        np.full(2, -1),
        attack_spec("pgd2", attack),
        2,
        "cpu",
        rows=expected_rows[4:],
    )
    np.testing.assert_array_equal(stored, direct["images"])

    stats_path = tmp_path / "stats.csv"
    run_script(
        "attack_stats.py",
        input={"shards": [str(p) for p in shards]},
        output={"stats": str(stats_path)},
        params={"identity": identity, "attack": attack_spec("pgd2", attack).to_dict()},
        log=[str(tmp_path / "stats.log")],
    )
    stats = pd.read_csv(stats_path)
    assert list(stats[["dataset", "model", "attack", "method", "n_images"]].iloc[0]) == [
        "tiny",
        "r18",
        "pgd2",
        "pgd",
        6,
    ]
    assert stats["linf_max"].iloc[0] <= 2 / 255 + 1e-7
    assert 0 <= stats["clean_accuracy"].iloc[0] <= 1  # the synthetic classes are labels


@pytest.mark.parametrize("config", BATCH_SPECS, ids=spec_id)
def test_results_do_not_depend_on_the_shard_split(model, config):
    # An image's randomness is keyed by its dataset row, so one call over ten rows equals two
    # calls over the halves (as two shards would make them).
    images, rows = make_images(10, seed=17), np.arange(30, 40)
    whole = run_attack(model, images, np.full(10, -1), spec(config), 4, "cpu", rows=rows)
    halves = [
        run_attack(model, images[s], np.full(5, -1), spec(config), 4, "cpu", rows=rows[s])
        for s in (slice(0, 5), slice(5, 10))
    ]
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key], err_msg=key)


def test_noise_differs_between_rows_and_seeds(model):
    images = np.repeat(make_images(1, seed=18), 2, axis=0)
    a = run_attack(model, images, np.full(2, -1), spec({"method": "noise", "eps": "2/255"}), 2, "cpu")
    b = run_attack(model, images, np.full(2, -1), spec({"method": "noise", "eps": "2/255", "seed": 1}), 2, "cpu")
    assert (a["images"][0] != a["images"][1]).any()  # same image, different rows
    assert (a["images"] != b["images"]).any()  # same rows, different seeds
