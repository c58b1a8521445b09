"""Domain-adaptation and consistency losses against plain-loop transcriptions of their formulas."""

import math

import numpy as np
import pytest
import torch

from advdissect.nets import losses


def _coral_ref(d: np.ndarray, a: np.ndarray) -> float:
    n, k = d.shape

    def cov(x):
        mean = [sum(x[r, i] for r in range(n)) / n for i in range(k)]
        c = np.zeros((k, k))
        for i in range(k):
            for j in range(k):
                c[i, j] = sum((x[r, i] - mean[i]) * (x[r, j] - mean[j]) for r in range(n)) / n
        return c

    cd, ca = cov(d), cov(a)
    return sum(abs(cd[i, j] - ca[i, j]) for i in range(k) for j in range(k)) / k**2


def _mmd_ref(d: np.ndarray, a: np.ndarray) -> float:
    n, k = d.shape
    return sum(abs(sum(d[r, i] for r in range(n)) / n - sum(a[r, i] for r in range(n)) / n) for i in range(k)) / k


def _consistency_ref(d: np.ndarray, a: np.ndarray) -> float:
    n, k = d.shape
    return sum(sum((d[r, i] - a[r, i]) ** 2 for i in range(k)) for r in range(n)) / n


def _margin_ref(d: np.ndarray, a: np.ndarray, labels: np.ndarray) -> float:
    feats = np.concatenate([d, a])
    y = np.concatenate([labels, labels])
    classes = sorted(set(y.tolist()))
    centres = {c: feats[y == c].mean(axis=0) for c in classes}
    total = 0.0
    for j in range(len(feats)):
        own = np.abs(feats[j] - centres[y[j]]).sum()
        for c in classes:
            if c != y[j]:
                total += math.log1p(math.exp(own - np.abs(feats[j] - centres[c]).sum()))
    return total / (len(feats) * (len(classes) - 1))


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(7, 5))
    a = d + rng.normal(scale=0.5, size=(7, 5)) + 0.3
    return d, a


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_coral_matches_loops(pair):
    d, a = pair
    assert losses.coral(_t(d), _t(a)).item() == pytest.approx(_coral_ref(d, a), rel=1e-10)


def test_covariance_matches_numpy_biased(pair):
    d, _ = pair
    np.testing.assert_allclose(losses.covariance(_t(d)).numpy(), np.cov(d, rowvar=False, bias=True), rtol=1e-10)


def test_mmd_matches_loops(pair):
    d, a = pair
    assert losses.mmd(_t(d), _t(a)).item() == pytest.approx(_mmd_ref(d, a), rel=1e-10)


def test_consistency_matches_loops(pair):
    d, a = pair
    assert losses.consistency(_t(d), _t(a)).item() == pytest.approx(_consistency_ref(d, a), rel=1e-10)


def test_margin_matches_loops(pair):
    d, a = pair
    labels = np.array([0, 1, 2, 0, 1, 2, 2])
    got = losses.margin_loss(_t(d), _t(a), torch.tensor(labels)).item()
    assert got == pytest.approx(_margin_ref(d, a, labels), rel=1e-10)


def test_margin_single_class_is_zero(pair):
    d, a = pair
    assert losses.margin_loss(_t(d), _t(a), torch.zeros(7, dtype=torch.long)).item() == 0.0


def test_conv_maps_are_flattened():
    rng = np.random.default_rng(1)
    d = rng.normal(size=(4, 2, 2, 2))
    a = rng.normal(size=(4, 2, 2, 2))
    assert losses.coral(_t(d), _t(a)).item() == pytest.approx(_coral_ref(d.reshape(4, -1), a.reshape(4, -1)))
    assert losses.mmd(_t(d), _t(a)).item() == pytest.approx(_mmd_ref(d.reshape(4, -1), a.reshape(4, -1)))


def test_identical_batches_give_zero(pair):
    d, _ = pair
    for fn in (losses.coral, losses.mmd, losses.consistency):
        assert fn(_t(d), _t(d)).item() == 0.0


def test_coral_grows_with_scale_and_ignores_shift(pair):
    d, _ = pair
    values = [losses.coral(_t(d), _t(d * s)).item() for s in (1.0, 1.2, 1.5, 2.0, 3.0)]
    assert values[0] == 0.0
    assert all(b > a for a, b in zip(values, values[1:]))
    assert losses.coral(_t(d), _t(d + 5.0)).item() == pytest.approx(0.0, abs=1e-12)


def test_mmd_and_consistency_grow_with_shift(pair):
    d, _ = pair
    for fn in (losses.mmd, losses.consistency):
        values = [fn(_t(d), _t(d + t)).item() for t in (0.0, 0.1, 0.5, 1.0, 4.0)]
        assert values[0] == 0.0
        assert all(b > a for a, b in zip(values, values[1:]))


def test_gradients_flow(pair):
    d, a = pair
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    for name, fn in [
        ("coral", losses.coral),
        ("mmd", losses.mmd),
        ("consistency", losses.consistency),
        ("margin", lambda x, y: losses.margin_loss(x, y, labels)),
    ]:
        fd = _t(d).requires_grad_()
        fa = _t(a).requires_grad_()
        fn(fd, fa).backward()
        for g in (fd.grad, fa.grad):
            assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_mismatched_feature_sizes_raise():
    with pytest.raises(ValueError, match="feature sizes differ"):
        losses.coral(torch.zeros(3, 4), torch.zeros(3, 5))
