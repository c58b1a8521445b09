"""Attack statistics: one row per attack from its image shards (no torch: the shards hold the
predictions and perturbation sizes that the attack job measured)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from os import PathLike
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ArtifactError, ConfigError
from ..specs import GRADIENT_METHODS, L2_METHODS, ROUNDED_METHODS, AttackSpec
from ..store import open_h5, read_attrs, write_csv

_STAT_ARRAYS = ("labels", "clean_pred", "clean_conf", "adv_pred", "adv_conf", "linf", "l2", "target")


def _read_shards(paths: list, identity: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], Any, dict[str, Any]]:
    """(the statistics' arrays over all shards, their attack_params, the last shard's attributes);
    ArtifactError when the shards disagree on attack_params."""
    columns: dict[str, list[np.ndarray]] = {key: [] for key in _STAT_ARRAYS}
    params = attrs = None
    for path in paths:
        with open_h5(path, "images", expect=identity) as f:
            attrs = read_attrs(f)
            if params is None:
                params = attrs.get("attack_params")
            elif attrs.get("attack_params") != params:
                raise ArtifactError(
                    f"{path}: made with attack_params={attrs.get('attack_params')!r}, but "
                    f"{paths[0]} with {params!r}; delete the stale shards and re-run"
                )
            n = f["rows"].shape[0]
            for key in _STAT_ARRAYS:
                columns[key].append(f[key][()] if key in f else np.full(n, -1, np.int64))
    return {key: np.concatenate(value) for key, value in columns.items()}, params, attrs


def _shards_spec(params: Any, path) -> AttackSpec:
    """The attack spec the shards were made with, from their attack_params."""
    if not isinstance(params, Mapping):
        raise ArtifactError(f"{path}: attribute 'attack_params' is missing")
    try:
        return AttackSpec(**params)
    except (TypeError, ConfigError):
        raise ArtifactError(
            f"{path}: attribute 'attack_params' ({params!r}) is not an attack spec; the shards "
            "predate this version: delete them and re-run"
        ) from None


def attack_statistics(shard_paths: Iterable[str | PathLike], identity: Mapping[str, Any]) -> pd.DataFrame:
    """One row summarising an attack over its image shards.

    agreement: share of images whose adversarial prediction equals the clean prediction.
    success_rate: untargeted attacks (and noise, clean): 1 − agreement (the flip rate);
    targeted attacks: share of images predicted as their target.
    clean_accuracy / adversarial_accuracy: against the class labels, over the images that
    have one (NaN when none has). eps is NaN for the L2 attacks (deepfool, cw), which have none.
    """
    paths = list(shard_paths)
    if not paths:
        raise ArtifactError(f"attack {identity.get('attack')!r}: no image shards to summarise")
    data, params, attrs = _read_shards(paths, identity)
    name = identity.get("attack", attrs.get("attack"))
    spec = _shards_spec(params, paths[0])

    n = data["clean_pred"].shape[0]
    agree = data["adv_pred"] == data["clean_pred"]
    agreement = float(agree.mean()) if n else math.nan
    if spec.targeted:
        success = float((data["adv_pred"] == data["target"]).mean()) if n else math.nan
    else:
        success = 1.0 - agreement
    has_label = data["labels"] >= 0
    n_labelled = int(has_label.sum())

    def accuracy(pred: np.ndarray) -> float:
        return float((pred[has_label] == data["labels"][has_label]).mean()) if n_labelled else math.nan

    def mean_max(key: str) -> tuple[float, float]:
        return (float(data[key].mean()), float(data[key].max())) if n else (math.nan, math.nan)

    (linf_mean, linf_max), (l2_mean, l2_max) = mean_max("linf"), mean_max("l2")
    row = {
        "dataset": identity.get("dataset", attrs.get("dataset")),
        "model": identity.get("model", attrs.get("model")),
        "attack": name,
        "method": spec.method,
        # DeepFool and C&W have no ε: their size is in the L2 and L∞ columns.
        "eps": math.nan if spec.method in L2_METHODS else spec.eps,
        "eps_255": math.nan if spec.method in L2_METHODS else round(spec.eps * 255, 6),
        "labels": spec.labels if spec.method in (*GRADIENT_METHODS, *ROUNDED_METHODS) else "",
        "n_images": n,
        "agreement": agreement,
        "success_rate": success,
        "linf_mean": linf_mean,
        "linf_max": linf_max,
        "l2_mean": l2_mean,
        "l2_max": l2_max,
        "clean_accuracy": accuracy(data["clean_pred"]),
        "adversarial_accuracy": accuracy(data["adv_pred"]),
        "n_labelled": n_labelled,
        "clean_conf_mean": float(data["clean_conf"].mean()) if n else math.nan,
        "adv_conf_mean": float(data["adv_conf"].mean()) if n else math.nan,
    }
    return pd.DataFrame([row])


def write_attack_statistics(
    out_path: str | PathLike, shard_paths: Iterable[str | PathLike], identity: Mapping[str, Any]
) -> pd.DataFrame:
    """`attack_statistics` written as a one-row CSV."""
    frame = attack_statistics(shard_paths, identity)
    write_csv(out_path, frame)
    return frame
