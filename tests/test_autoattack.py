"""APGD-T, Square, FAB-T and AutoAttack against torchattacks 3.5.1, and as the shard writer runs them.

torchattacks draws its randomness from torch's global generator for a whole batch (Square even
shares one square per iteration across the batch); ours draws each image's from its own
generator. Run one image at a time from a global generator seeded like ours, torchattacks makes
the same draws in the same order, so each comparison below attacks image by image. FAB-T with
one restart draws nothing and is compared on the whole batch. FAB casts images to float32, so its
comparisons (and AutoAttack's, which runs it) use a float32 copy of the tiny net.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from test_attacks import (  # the tiny net and image helpers of the other attacks' tests
    N_CLASSES,
    Tiny,
    as_float,
    fake_inputs,  # noqa: F401 (a fixture)
    make_images,
    predictions,
    spec,
    write_shards,
)

from advdissect.errors import AttackError, ConfigError
from advdissect.nets.attack_draws import apgd_starts, image_generator, square_draws
from advdissect.nets.attack_runner import run_attack
from advdissect.nets.attacks import AutoAttackSettings, _apgd_run, apgd, apgd_t, dlr_targeted_loss
from advdissect.nets.autoattack import AUTOATTACK_COMPONENTS, _fab_run, autoattack, fab_t, square
from advdissect.specs import AttackSpec, attack_spec

torch.set_num_threads(1)
EPS = 4 / 255


@pytest.fixture(scope="module")
def model():
    return Tiny()


@pytest.fixture(scope="module")
def model32():
    return Tiny().float()


@pytest.fixture(scope="module")
def ta():
    return pytest.importorskip("torchattacks", minversion="3.5")


def one_by_one(attack, x, y):
    return torch.cat([attack(x[i : i + 1], y[i : i + 1]) for i in range(x.shape[0])])


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def assert_fooled_equal(ours, theirs, x, y, model, atol):
    """Where torchattacks fooled the model ours holds the same image; elsewhere torchattacks
    returns x (ours keeps its attacked point). Both kinds must occur for the test to mean much."""
    fooled = predictions(model, theirs) != y
    assert bool(fooled.any()) and bool((~fooled).any()), fooled
    torch.testing.assert_close(ours[fooled], theirs[fooled], rtol=0, atol=atol)
    assert torch.equal(theirs[~fooled], x[~fooled])
    assert torch.equal(predictions(model, ours) != y, fooled)


# ----------------------------------------------------------------- specs


def test_specs_defaults_as_autoattack():
    a = attack_spec("a", {"method": "apgd_t", "eps": "8/255"})
    assert (a.steps, a.restarts, a.targets, a.seed, a.loss) == (100, 1, 9, 0, None)
    s = attack_spec("s", {"method": "square", "eps": "8/255", "p_init": "1/2"})
    assert (s.queries, s.restarts, s.p_init, s.steps) == (5000, 1, 0.5, None)
    f = attack_spec("f", {"method": "fab_t", "eps": "8/255", "restarts": 2})
    assert (f.steps, f.restarts, f.targets) == (100, 2, 9)
    auto = attack_spec("aa", {"method": "autoattack", "eps": "8/255", "seed": 3})
    assert (auto.steps, auto.targets, auto.queries, auto.seed, auto.restarts) == (100, 9, 5000, 3, None)
    for one in (a, s, f, auto):
        assert AttackSpec(**one.to_dict()) == one and one.eps == pytest.approx(8 / 255)
    assert "queries" not in a.to_dict() and "targets" not in s.to_dict()
    # The new fields stay out of the older methods' params.
    assert "targets" not in attack_spec("p", {"method": "apgd", "eps": "2/255"}).to_dict()


@pytest.mark.parametrize(
    "config, key",
    [
        ({"method": "apgd_t"}, "eps"),
        ({"method": "apgd_t", "eps": "4/255", "targets": 0}, "targets"),
        ({"method": "apgd_t", "eps": "4/255", "loss": "ce"}, "loss"),
        ({"method": "apgd_t", "eps": "4/255", "queries": 10}, "queries"),
        ({"method": "square", "eps": "4/255", "queries": 0}, "queries"),
        ({"method": "square", "eps": "4/255", "p_init": 0}, "p_init"),
        ({"method": "square", "eps": "4/255", "p_init": 1.5}, "p_init"),
        ({"method": "square", "eps": "4/255", "steps": 10}, "steps"),
        ({"method": "square", "eps": 0.01}, "eps"),
        ({"method": "fab_t", "eps": "4/255", "restarts": 0}, "restarts"),
        ({"method": "fab_t", "eps": "4/255", "labels": "target", "target": 1}, "labels"),
        ({"method": "autoattack", "eps": "4/255", "restarts": 2}, "restarts"),
        ({"method": "autoattack", "eps": "4/255", "steps": 0}, "steps"),
        ({"method": "autoattack", "eps": "4/255", "p_init": 0.5}, "p_init"),
        ({"method": "pgd", "eps": "4/255", "targets": 3}, "targets"),
    ],
)
def test_specs_refuse(config, key):
    with pytest.raises(ConfigError) as info:
        attack_spec("myattack", config)
    assert "myattack" in str(info.value) and key in str(info.value)


def test_spec_fields_of_other_methods_refused():
    with pytest.raises(ConfigError, match="queries"):
        AttackSpec(method="apgd", eps=EPS, steps=10, restarts=1, loss="ce", queries=5)


# ----------------------------------------------------------------- APGD-T


def test_dlr_targeted_loss_as_torchattacks(model, ta):
    logits = torch.randn(7, N_CLASSES, generator=seeded(1), dtype=torch.float64)
    y, target = logits.argmax(1), logits.sort(1)[1][:, -2]
    atk = ta.APGDT(model, n_classes=N_CLASSES)
    torch.testing.assert_close(dlr_targeted_loss(logits, y, target), atk.dlr_loss_targeted(logits, y, target))


def test_torchattacks_apgd_t_single_run(model, ta):
    # One run towards the class of clean-logit rank 3, from the same uniforms: compared whole.
    x = as_float(make_images(8, seed=3))
    y = predictions(model, x)
    atk = ta.APGDT(model, eps=EPS, steps=12, n_restarts=1, seed=0, n_classes=N_CLASSES)
    atk.target_class = 3
    torch.manual_seed(0)
    expected = atk.attack_single_run(x, y)
    u = torch.rand(x.shape, generator=seeded(0))
    target = model(x).sort(1)[1][:, -3]
    ours = _apgd_run(model, x, y, EPS, 12, lambda z, t: dlr_targeted_loss(z, t, target), u)
    for mine, theirs in zip(ours, expected):
        if mine.dtype == torch.bool:
            assert torch.equal(mine, theirs)
        else:
            torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-12)


def test_torchattacks_apgd_t(model, ta):
    # Every target class (the net has 5: 4 targets), image by image from a generator seeded as
    # torchattacks seeds the global one: the same starts, the same images. Observed: identical.
    x = as_float(make_images(8, seed=5))
    y = predictions(model, x)
    theirs = one_by_one(ta.APGDT(model, eps=2 / 255, steps=10, n_restarts=1, seed=0, n_classes=N_CLASSES), x, y)
    starts = torch.stack([torch.rand((4, *x.shape[1:]), generator=seeded(0)) for _ in range(8)], 1)
    ours = apgd_t(model, x, y, AutoAttackSettings(2 / 255, steps=10), starts=starts)  # 9 targets: all 4 the net has
    assert_fooled_equal(ours, theirs, x, y, model, atol=1e-12)
    assert float((ours - x).abs().max()) <= 2 / 255 + 1e-12 and float(ours.min()) >= 0 and float(ours.max()) <= 1
    # Fewer targets try fewer classes: never more successes.
    one = apgd_t(model, x, y, AutoAttackSettings(2 / 255, steps=10, targets=1), starts=starts[:1])
    assert int((predictions(model, one) != y).sum()) <= int((predictions(model, ours) != y).sum())


def test_apgd_t_needs_four_classes():
    small = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3)).double()
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    with pytest.raises(AttackError, match="4 classes"):
        apgd_t(small, x, predictions(small, x), AutoAttackSettings(EPS, steps=2))


# ----------------------------------------------------------------- Square


def square_draws_seeded(n, c, w, queries, restarts, seed=0):
    """Per image, restart by restart: the init's and the steps' uniforms, as torchattacks draws
    them for one image from a global generator seeded with `seed`."""
    init, steps = torch.empty((restarts, n, c, 1, w)), torch.empty((restarts, n, queries, 2 + c))
    for i in range(n):
        g = seeded(seed)
        for r in range(restarts):
            init[r, i] = torch.rand((c, 1, w), generator=g)
            steps[r, i] = torch.rand((queries, 2 + c), generator=g)
    return init, steps


@pytest.mark.parametrize("restarts", [1, 2])
def test_torchattacks_square(model, ta, restarts):
    # 60 queries: the schedule's first halvings of p happen (at 1/1000, 5/1000 and 2/100 of them).
    # On these images one run fools 3, two runs 5. Observed differences: 0.
    x = as_float(make_images(8, seed=9))
    y = predictions(model, x)
    atk = ta.Square(model, eps=EPS, n_queries=60, n_restarts=restarts, p_init=0.8, seed=0)
    theirs = one_by_one(atk, x, y)
    ours = square(
        model, x, y, AutoAttackSettings(EPS, queries=60, restarts=restarts), square_draws_seeded(8, 3, 16, 60, restarts)
    )
    assert_fooled_equal(ours, theirs, x, y, model, atol=1e-12)
    assert float((ours - x).abs().max()) <= EPS + 1e-7 and float(ours.min()) >= 0 and float(ours.max()) <= 1


def test_square_keeps_an_attacked_point_for_the_unfooled(model):
    # An image no run fools keeps its lowest-margin point (torchattacks returns x): inside the
    # ε-ball and not x, every pixel moved by the initial stripes.
    x = as_float(make_images(8, seed=7))
    y = predictions(model, x)
    ours = square(model, x, y, AutoAttackSettings(1 / 255, queries=20), square_draws_seeded(8, 3, 16, 20, 1))
    kept = predictions(model, ours) == y
    assert bool(kept.any())
    moved = (ours[kept] - x[kept]).abs()
    assert float(moved.max()) <= 1 / 255 + 1e-7 and bool((moved.flatten(1).amax(1) > 0).all())


def test_square_draws_per_image_from_its_row():
    a = attack_spec("s", {"method": "square", "eps": EPS, "queries": 7, "restarts": 2, "seed": 4})
    init, steps = square_draws(a, (3, 3, 5, 6), np.array([9, 2, 9]), 7, 2)
    assert init.shape == (2, 3, 3, 1, 6) and steps.shape == (2, 3, 7, 5)
    assert torch.equal(init[:, 0], init[:, 2]) and not torch.equal(init[:, 0], init[:, 1])
    g = image_generator(4, 2)
    for r in range(2):
        assert torch.equal(init[r, 1], torch.rand((3, 1, 6), generator=g))
        assert torch.equal(steps[r, 1], torch.rand((7, 5), generator=g))


# ----------------------------------------------------------------- FAB-T


def test_torchattacks_fab_t(model32, ta):
    # One restart draws nothing: the whole batch at once. float32; observed differences 0.
    x = as_float(make_images(8, seed=11)).float()
    y = predictions(model32, x)
    atk = ta.FAB(model32, eps=6 / 255, steps=10, n_restarts=1, multi_targeted=True, n_classes=N_CLASSES, seed=0)
    theirs = atk(x, y)
    ours = fab_t(model32, x, y, AutoAttackSettings(6 / 255, steps=10))
    assert_fooled_equal(ours, theirs, x, y, model32, atol=1e-6)
    assert torch.equal(ours[predictions(model32, ours) == y], x[predictions(model32, ours) == y])
    assert float((ours - x).abs().max()) <= 6 / 255 + 1e-6


def test_torchattacks_fab_t_restarts(model32, ta):
    # A second restart per target starts at a random point: image by image, the same draws. (On
    # this net the second restarts fool nothing the first did not, so the random start is also
    # compared on its own below.) Observed differences: 6e-7, float32 rounding across batches.
    x = as_float(make_images(6, seed=12)).float()
    y = predictions(model32, x)
    atk = ta.FAB(model32, eps=3 / 255, steps=6, n_restarts=2, multi_targeted=True, n_classes=N_CLASSES, seed=0)
    theirs = one_by_one(atk, x, y)
    starts = torch.stack([torch.rand((4, *x.shape[1:]), generator=seeded(0)) for _ in range(6)], 1)
    ours = fab_t(model32, x, y, AutoAttackSettings(3 / 255, steps=6, restarts=2), starts=starts)
    assert_fooled_equal(ours, theirs, x, y, model32, atol=1e-6)


def test_torchattacks_fab_t_random_start_run(model32, ta):
    # One run from a random start towards the runner-up class: the nearest fooling point found
    # (of any size), or x.
    x = as_float(make_images(8, seed=12)).float()
    y = predictions(model32, x)
    atk = ta.FAB(model32, eps=3 / 255, steps=6, multi_targeted=True, n_classes=N_CLASSES)
    atk.target_class = 2
    torch.manual_seed(0)
    theirs = atk.attack_single_run_targeted(x, y, use_rand_start=True)
    u = torch.rand(x.shape, generator=seeded(0))
    ours, dist = _fab_run(model32, x, y, model32(x).sort(1)[1][:, -2], 3 / 255, 6, u)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    found = dist < 1e10
    assert bool(found.any()) and torch.equal(ours[~found], x[~found])
    assert bool((predictions(model32, ours[found]) != y[found]).all())


# ----------------------------------------------------------------- AutoAttack


def test_torchattacks_autoattack(model32, ta):
    # torchattacks' standard AutoAttack runs its components with their own defaults (10 steps,
    # every other class as a target, 5000 queries), all seeded with `seed`: ours with those
    # settings and each component's draws from a generator seeded the same, image by image.
    # Here APGD-CE fools 5 images, APGD-T 1, and 2 resist FAB-T and all 5000 queries of Square.
    # Observed differences: 0.
    x = as_float(make_images(8, seed=13)).float()
    y = predictions(model32, x)
    eps = 3 / 255
    theirs = one_by_one(ta.AutoAttack(model32, eps=eps, n_classes=N_CLASSES, seed=0), x, y)
    ours, firsts = [], []
    for i in range(8):
        draws = {
            "apgd-ce": torch.rand((1, 1, *x.shape[1:]), generator=seeded(0)),
            "apgd-t": torch.rand((4, 1, *x.shape[1:]), generator=seeded(0)),
            "square": square_draws_seeded(1, 3, 16, 5000, 1),
        }
        adv, first = autoattack(model32, x[i : i + 1], y[i : i + 1], AutoAttackSettings(eps, steps=10), draws)
        ours.append(adv)
        firsts.append(first)
    ours, first = torch.cat(ours), torch.cat(firsts)
    fooled = predictions(model32, theirs) != y
    torch.testing.assert_close(ours[fooled], theirs[fooled], rtol=0, atol=1e-6)
    assert torch.equal(first > 0, fooled) and bool(fooled.any()) and bool((first == 2).any())


def test_autoattack_first_success_names_the_first_component_that_fools(model):
    # Each component run alone on each image: the recorded one fools it, the earlier ones do not,
    # and the image is that component's result. At ε = 1/255 APGD-CE fools 5 of these 16 images
    # and APGD-T 2 more; FAB-T and Square fool none of the rest on this net.
    x = as_float(make_images(16, seed=14))
    y = predictions(model, x)
    eps, steps, queries = 1 / 255, 3, 100
    ce = torch.rand((1, *x.shape), generator=seeded(1))
    t = torch.rand((4, *x.shape), generator=seeded(2))
    sq = square_draws_seeded(16, 3, 16, queries, 1, seed=3)
    settings = AutoAttackSettings(eps, steps=steps, queries=queries)
    adv, first = autoattack(model, x, y, settings, {"apgd-ce": ce, "apgd-t": t, "square": sq})
    alone = [
        apgd(model, x, y, settings, starts=ce),
        apgd_t(model, x, y, settings, starts=t),
        fab_t(model, x, y, settings),
        square(model, x, y, settings, sq),
    ]
    fools = torch.stack([predictions(model, a) != y for a in alone], 1)
    assert first.dtype == torch.int8 and len(AUTOATTACK_COMPONENTS) == 4
    for i in range(16):
        k = int(first[i])
        expected = int(fools[i].nonzero()[0]) + 1 if bool(fools[i].any()) else 0
        assert k == expected, (i, fools[i])
        torch.testing.assert_close(adv[i], alone[max(k, 1) - 1][i], rtol=0, atol=1e-12)
    assert int((first == 1).sum()) > 0 and int((first > 1).sum()) > 0, first


# ----------------------------------------------------------------- shards

SHARD_SPECS = [
    {"method": "apgd_t", "eps": "2/255", "steps": 5, "targets": 3, "seed": 1},
    {"method": "square", "eps": "2/255", "queries": 25, "restarts": 2, "seed": 1},
    {"method": "fab_t", "eps": "3/255", "steps": 5, "restarts": 2, "targets": 2, "seed": 1},
    {"method": "autoattack", "eps": "2/255", "steps": 5, "targets": 3, "queries": 25, "seed": 1},
]


@pytest.mark.parametrize("config", SHARD_SPECS, ids=lambda c: c["method"])
def test_shards_do_not_depend_on_batch_or_shard_size(model, config):
    images, rows = make_images(10, seed=15), np.arange(20, 30)
    a = spec(config)
    results = [run_attack(model, images, np.full(10, -1), a, bs, "cpu", rows=rows) for bs in (1, 4, 10)]
    halves = [
        run_attack(model, images[s], np.full(5, -1), a, 3, "cpu", rows=rows[s]) for s in (slice(0, 5), slice(5, 10))
    ]
    results.append({key: np.concatenate([h[key] for h in halves]) for key in halves[0]})
    for other in results[1:]:
        assert other.keys() == results[0].keys()
        for key in results[0]:
            np.testing.assert_array_equal(other[key], results[0][key], err_msg=key)
    out = results[0]
    diff = out["images"].astype(int) - images.astype(int)
    assert int(np.abs(diff).max()) <= round(a.eps * 255)
    np.testing.assert_allclose(out["linf"], np.abs(diff).reshape(10, -1).max(1) / 255, rtol=1e-6)
    np.testing.assert_allclose(out["l2"], np.sqrt((diff.reshape(10, -1) ** 2).sum(1)) / 255, rtol=1e-6)
    assert (out["target"] == -1).all()
    assert ("first_success" in out) == (a.method == "autoattack")


@pytest.mark.parametrize("config", SHARD_SPECS[:3], ids=lambda c: c["method"])
def test_shards_hold_the_rounded_result_of_the_functions(model, config):
    # The shard writer runs the functions compared with torchattacks above, with each image's
    # draws from its row, and stores their results rounded.
    images, rows = make_images(6, seed=16), np.arange(6)
    a = spec(config)
    out = run_attack(model, images, np.full(6, -1), a, 6, "cpu", rows=rows)
    x = as_float(images)
    y = predictions(model, x)
    if a.method == "apgd_t":
        adv = apgd_t(model, x, y, AutoAttackSettings.of(a), starts=apgd_starts(a, images.shape, rows, 3))
    elif a.method == "square":
        adv = square(model, x, y, AutoAttackSettings.of(a), square_draws(a, images.shape, rows, 25, 2))
    else:
        starts = apgd_starts(a, images.shape, rows, 2)
        adv = fab_t(model, x, y, AutoAttackSettings.of(a), starts=starts)
    np.testing.assert_array_equal(out["images"], (adv * 255).round().to(torch.uint8).numpy())


def test_square_differs_between_rows(model):
    images = np.repeat(make_images(1, seed=18), 2, axis=0)
    a = spec({"method": "square", "eps": "2/255", "queries": 5})
    out = run_attack(model, images, np.full(2, -1), a, 2, "cpu", rows=np.array([3, 4]))
    assert (out["images"][0] != out["images"][1]).any()


def test_autoattack_shard_records_first_success(tmp_path, fake_inputs, model):  # noqa: F811
    # Success is judged on the rounded images, so a recorded component means a stored image that
    # fools the model, and 0 one that does not.
    settings = {"method": "autoattack", "eps": "2/255", "steps": 5, "targets": 3, "queries": 20}
    paths = write_shards(tmp_path, settings)
    first, changed = [], []
    for path in paths:
        with h5py.File(path) as f:
            assert f["first_success"].dtype == np.int8
            first.append(f["first_success"][()])
            changed.append(f["adv_pred"][()] != f["clean_pred"][()])
    first, changed = np.concatenate(first), np.concatenate(changed)
    assert set(np.unique(first)) <= {0, 1, 2, 3, 4} and len(first) == 11
    np.testing.assert_array_equal(first > 0, changed)
    assert changed.any()
