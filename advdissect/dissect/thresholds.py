"""Exact per-unit activation thresholds, computed shard by shard.

Definition (Bau et al. 2017, step 2): T_k is the level that unit k exceeds on a fraction q of
all its values, pooled over every spatial position of every image. Precisely,

    T_k = numpy.quantile(A_k.astype(float64), 1 - q, method="linear")

over the n = N·h·w values A_k of unit k (Hyndman & Fan type 7, numpy's default): with the
values sorted ascending v_0 <= ... <= v_{n-1}, p = 1 - q and x = (n - 1)·p (both in float64,
as numpy computes them), i = floor(x), g = x - i, a = v_i, b = v_{i+1}:
T_k = a + (b - a)·g, or b - (b - a)·(1 - g) when g >= 0.5 (numpy's `_lerp`, same float64
operations); x >= n - 1 gives v_{n-1}. Only v_i .. v_{n-1}, i.e. the
top n - i <= ceil(q·n) + 1 values, decide T_k, so each shard keeps its own top values per unit
and a merge keeps the top of the union: the result equals numpy.quantile on the concatenated
activations bit for bit, whatever the shard sizes, while memory holds one shard plus the kept
values. (NetDissect-Lite's streaming quantile sketch is approximate; its level is 994/999.)

Thresholds are float64: rounding T_k to float32 could move it onto one of the two order
statistics it lies between and change which values exceed it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import store
from ..errors import ArtifactError, ConfigError
from ..specs import schema_defaults

METHOD = "linear"
# q of `dissection.quantile` when none is given: the schema's default.
DEFAULT_QUANTILE: float = schema_defaults("dissection")["quantile"]


def _virtual_index(n_total: int, q: float) -> float:
    # numpy's virtual index for method="linear", with the same float64 operations.
    p = np.float64(1.0) - np.float64(q)
    return float(np.float64(n_total - 1) * p)


def _check_q(q: float) -> None:
    if not (isinstance(q, (int, float, np.floating)) and 0.0 < float(q) < 1.0):
        raise ConfigError(f"dissection.quantile: must be a number in (0, 1), got {q!r}")


def top_count(n_total: int, q: float) -> int:
    """How many of the largest values per unit decide the threshold of `n_total` values.

    This is n - floor(x) for numpy's virtual index x, at most ceil(q·n) + 1 (and >= 1).
    """
    _check_q(q)
    if n_total < 1:
        raise ArtifactError("thresholds: no activation values (empty shards)")
    x = _virtual_index(n_total, q)
    if x >= n_total - 1:
        return 1
    if x < 0:
        return n_total
    return int(n_total - math.floor(x))


def top_values(acts: np.ndarray, k: int) -> np.ndarray:
    """The k largest values of each unit of `acts` (N, C, h, w), sorted descending: (C, min(k, N·h·w)).

    Values are returned as float32 (float16 activations widen exactly).
    """
    acts = np.asarray(acts)
    if acts.ndim != 4:
        raise ArtifactError(f"activations must be (N, C, h, w), got shape {acts.shape}")
    n, c = acts.shape[:2]
    flat = np.ascontiguousarray(acts.transpose(1, 0, 2, 3), dtype=np.float32).reshape(c, -1)
    if np.isnan(flat).any():
        raise ArtifactError("activations contain NaN; the network or its weights are broken")
    m = flat.shape[1]
    k = min(int(k), m)
    if k <= 0:
        return np.empty((c, 0), np.float32)
    if k < m:
        flat = np.partition(flat, m - k, axis=1)[:, m - k :]
    return -np.sort(-flat, axis=1)


def merge_top(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """The k largest per row (sorted descending) of the union of two kept tops (C, ka), (C, kb)."""
    if a.shape[0] != b.shape[0]:
        raise ArtifactError(f"cannot merge top values of {a.shape[0]} and {b.shape[0]} units")
    both = np.concatenate([a, b], axis=1)
    m = both.shape[1]
    k = min(int(k), m)
    if k < m:
        both = np.partition(both, m - k, axis=1)[:, m - k :]
    return -np.sort(-both, axis=1)


def threshold_from_top(top: np.ndarray, n_total: int, q: float) -> np.ndarray:
    """T (C,) float64 from the kept top values (C, k) sorted descending, of n_total values per unit.

    Equals numpy.quantile(all values as float64, 1 - q, method="linear") exactly, provided
    k >= top_count(n_total, q).
    """
    need = top_count(n_total, q)
    top = np.asarray(top, dtype=np.float64)
    if top.ndim != 2 or top.shape[1] < need:
        raise ArtifactError(
            f"thresholds: {need} top values per unit are needed for {n_total} values at q={q}, "
            f"got an array of shape {top.shape}"
        )
    x = _virtual_index(n_total, q)
    if x >= n_total - 1:
        lo = hi = n_total - 1
        gamma = x + 1.0  # numpy's gamma here; a == b makes it irrelevant
    elif x < 0:
        lo = hi = 0
        gamma = x
    else:
        lo = math.floor(x)
        hi = lo + 1
        gamma = x - lo
    # ascending index i is descending index n - 1 - i
    a = top[:, n_total - 1 - lo]
    b = top[:, n_total - 1 - hi]
    diff = b - a
    if gamma >= 0.5:
        return b - diff * (1.0 - gamma)
    return a + diff * gamma


def _shard_shape(path: str | os.PathLike, identity: Mapping[str, Any]) -> tuple[int, ...]:
    with store.open_layer(path, identity) as (_, acts):
        return tuple(acts.shape)


def compute_thresholds(
    shard_paths: Sequence[str | os.PathLike], q: float, identity: Mapping[str, Any]
) -> tuple[np.ndarray, int]:
    """Exact thresholds (C,) float64 and the number of values per unit, reading a block of one
    shard's rows at a time (the top values of a union are the top of the blocks' tops).

    Every shard must be an "activations" file whose attributes match `identity`.
    """
    _check_q(q)
    if not shard_paths:
        raise ArtifactError("thresholds: no activation shards given")
    shapes = [_shard_shape(p, identity) for p in shard_paths]
    for path, shape in zip(shard_paths, shapes):
        if len(shape) != 4 or shape[1:] != shapes[0][1:]:
            raise ArtifactError(
                f"{path}: activations of shape {shape}, but {shard_paths[0]} has {shapes[0]}; "
                "all shards of a layer must have the same (C, h, w)"
            )
    n_total = sum(s[0] * s[2] * s[3] for s in shapes)
    k = top_count(n_total, q)
    top = None
    for path in shard_paths:
        with store.open_layer(path, identity) as (_, acts):
            for start, stop in store.row_blocks(acts.shape, 4, BLOCK_BYTES):
                block_top = top_values(acts[start:stop], k)
                top = block_top if top is None else merge_top(top, block_top, k)
    return threshold_from_top(top, n_total, q), n_total


# Activations read at once (as float32): a job's memory does not grow with the shard or the layer's maps.
BLOCK_BYTES = 256 * 2**20


def write_thresholds(
    out: str | os.PathLike,
    shard_paths: Sequence[str | os.PathLike],
    q: float,
    identity: Mapping[str, Any],
) -> None:
    """Compute the thresholds of a layer from its activation shards and write kind "thresholds"."""
    thresholds, n_values = compute_thresholds(shard_paths, q, identity)
    attrs = dict(identity, quantile=float(q), n_values=int(n_values), method=METHOD)
    store.write_h5(out, "thresholds", attrs, {"thresholds": thresholds})
