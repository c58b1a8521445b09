"""Exact sharded thresholds against numpy.quantile on the concatenated activations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advdissect import store
from advdissect.dissect import thresholds
from advdissect.dissect.thresholds import (
    compute_thresholds,
    merge_top,
    threshold_from_top,
    top_count,
    top_values,
    write_thresholds,
)
from advdissect.errors import ArtifactError, ConfigError

from helpers import write_shards


def reference(acts, q):
    """numpy.quantile per unit over every position of every image (float64, linear)."""
    c = acts.shape[1]
    values = np.asarray(acts, np.float64).transpose(1, 0, 2, 3).reshape(c, -1)
    return np.quantile(values, 1 - q, axis=1, method="linear")


def sharded(acts, q, cuts):
    """Thresholds from shards acts[cuts[i]:cuts[i+1]], kept tops merged one shard at a time."""
    n_total = acts.shape[0] * acts.shape[2] * acts.shape[3]
    k = top_count(n_total, q)
    top = None
    for a, b in zip(cuts[:-1], cuts[1:]):
        t = top_values(acts[a:b], k)
        top = t if top is None else merge_top(top, t, k)
    return threshold_from_top(top, n_total, q)


@pytest.mark.parametrize("q", [0.005, 0.1, 0.5, 0.37, 0.999])
def test_equals_numpy_quantile_whatever_the_split(q):
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(23, 4, 3, 5)).astype(np.float32)
    want = reference(acts, q)
    for cuts in ([0, 23], [0, 1, 2, 23], [0, 10, 11, 20, 23], list(range(24))):
        np.testing.assert_array_equal(sharded(acts, q, cuts), want)


def test_ties_and_relu_zeros():
    rng = np.random.default_rng(1)
    acts = np.maximum(rng.integers(-6, 4, size=(40, 3, 2, 2)), 0).astype(np.float32)  # mostly 0, few levels
    acts[:, 2] = 1.5  # one constant unit
    for q in (0.005, 0.05, 0.2, 0.6):
        np.testing.assert_array_equal(sharded(acts, q, [0, 7, 8, 40]), reference(acts, q))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_tiny_n(n):
    rng = np.random.default_rng(n)
    acts = rng.normal(size=(n, 2, 1, 1)).astype(np.float32)
    for q in (0.005, 0.25, 0.5, 0.75, 0.999):
        np.testing.assert_array_equal(sharded(acts, q, [0, n]), reference(acts, q))
        np.testing.assert_array_equal(sharded(acts, q, list(range(n + 1))), reference(acts, q))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 12),
    hw=st.integers(1, 3),
    q=st.floats(0.001, 0.999),
    seed=st.integers(0, 2**16),
    n_cuts=st.integers(0, 4),
    levels=st.sampled_from([3, 50, 0]),
)
def test_property_sharded_equals_quantile(n, hw, q, seed, n_cuts, levels):
    rng = np.random.default_rng(seed)
    if levels:
        acts = (rng.integers(0, levels, size=(n, 2, hw, hw)) / 7).astype(np.float32)
    else:
        acts = (rng.standard_cauchy(size=(n, 2, hw, hw))).astype(np.float16).astype(np.float32)
    cuts = sorted({0, n, *rng.integers(0, n + 1, size=n_cuts).tolist()})
    np.testing.assert_array_equal(sharded(acts, q, cuts), reference(acts, q))


def test_top_count_is_small():
    for n in (1, 2, 10, 199, 200, 201, 10**6, 63305 * 49):
        for q in (0.005, 0.01, 0.5):
            k = top_count(n, q)
            assert 1 <= k <= min(n, math.ceil(q * n) + 1)
    with pytest.raises(ArtifactError):
        threshold_from_top(np.zeros((2, 1)), 1000, 0.005)
    with pytest.raises(ConfigError):
        top_count(10, 1.5)


def test_top_values_sorted_and_nan_refused():
    acts = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    top = top_values(acts, 3)
    np.testing.assert_array_equal(top, [[15, 14, 13], [19, 18, 17], [23, 22, 21]])
    assert top_values(acts, 100).shape == (3, 8)
    acts[0, 0, 0, 0] = np.nan
    with pytest.raises(ArtifactError, match="NaN"):
        top_values(acts, 3)


def _write_shards(tmp_path, acts, cuts, ident, dtype=np.float32):
    arrays = {"rows": np.arange(cuts[-1]), store.layer_key(ident["layer"]): acts.astype(dtype)}
    bounds = list(zip(cuts[:-1], cuts[1:]))
    return write_shards(tmp_path, "activations", dict(ident, dtype=np.dtype(dtype).name), arrays, bounds)


def test_files(tmp_path):
    ident = {"dataset": "d", "model": "m", "attack": "clean", "layer": "layer4"}
    acts = np.random.default_rng(2).normal(size=(17, 5, 2, 3)).astype(np.float16)
    paths = _write_shards(tmp_path, acts, [0, 6, 12, 17], ident, np.float16)
    t, n_values = compute_thresholds(paths, 0.005, ident)
    assert n_values == 17 * 6
    np.testing.assert_array_equal(t, reference(acts.astype(np.float32), 0.005))
    write_thresholds(tmp_path / "thr.h5", paths, 0.005, ident)
    with store.open_h5(tmp_path / "thr.h5", "thresholds", expect=dict(ident, quantile=0.005)) as f:
        np.testing.assert_array_equal(f["thresholds"][()], t)
        assert f["thresholds"].dtype == np.float64
        assert store.read_attrs(f)["n_values"] == 17 * 6
    with pytest.raises(ArtifactError, match="layer"):
        compute_thresholds(paths, 0.005, dict(ident, layer="layer3"))
    odd = _write_shards(tmp_path / "odd", np.zeros((2, 4, 2, 3), np.float32), [0, 2], ident)
    with pytest.raises(ArtifactError, match="same"):
        compute_thresholds(paths + odd, 0.005, ident)


@pytest.mark.parametrize("rows_per_block", [1, 4, 100])
def test_files_read_in_blocks_of_rows_give_the_same_thresholds(tmp_path, monkeypatch, rows_per_block):
    # A shard is read a block of rows at a time; the thresholds are numpy's quantile whatever
    # the blocks, down to one image per block.
    ident = {"dataset": "d", "model": "m", "attack": "clean", "layer": "layer4"}
    acts = np.random.default_rng(5).normal(size=(23, 4, 3, 3)).astype(np.float32)
    acts[acts < 0] = 0  # ReLU ties
    paths = _write_shards(tmp_path, acts, [0, 10, 23], ident)
    monkeypatch.setattr(thresholds, "BLOCK_BYTES", rows_per_block * 4 * 4 * 3 * 3)
    assert store.row_blocks((10, 4, 3, 3), 4, thresholds.BLOCK_BYTES)[0] == (0, min(rows_per_block, 10))
    for q in (0.005, 0.2):
        t, _ = compute_thresholds(paths, q, ident)
        np.testing.assert_array_equal(t, reference(acts, q))
