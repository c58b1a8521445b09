"""Top-activating images of a layer's units: which images they are, their images and activation
maps read from the shards, and each unit's mask on them.

The unit pictures and the unit browser both show these; the masks are the ones the IoU counts
used (`unit_mask`), each image set cut at the thresholds it was dissected with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import store
from ..dissect.masks import upsample
from ..errors import ArtifactError, ConfigError
from ..store import PathLike

TOP_CHUNK = 256  # images read at once when looking for each unit's top images


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """One image set (clean or an attack) of a dissected layer: its image and activation shards,
    both in shard order, and the layer's thresholds on it."""

    dataset: str
    model: str
    layer: str
    attack: str
    images: tuple[PathLike, ...]
    activations: tuple[PathLike, ...]
    thresholds: PathLike

    @property
    def identity(self) -> dict[str, str]:
        """What the set's image and activation shards say they hold."""
        return {"dataset": self.dataset, "model": self.model, "attack": self.attack}

    @classmethod
    def from_named(cls, files: Mapping[str, Any], layer_id: Mapping[str, str], attack: str) -> ImageSet:
        """The set `attack` of a job's named files (`images_<attack>`, `activations_<attack>`,
        `thresholds_<attack>`, as `study.plan` names them); `layer_id` its dataset, model and layer."""
        return cls(
            dataset=layer_id["dataset"],
            model=layer_id["model"],
            layer=layer_id["layer"],
            attack=attack,
            images=tuple(files[f"images_{attack}"]),
            activations=tuple(files[f"activations_{attack}"]),
            thresholds=files[f"thresholds_{attack}"],
        )


@dataclasses.dataclass(frozen=True)
class TopImages:
    """Each unit's top-activating images in one image set, and the image and maps of each."""

    top: dict[int, list[tuple[int, float]]]  # unit (1-based): [(image row, peak activation)], best first
    images: dict[int, np.ndarray]  # image row: its (3, H, W) image
    maps: dict[int, np.ndarray]  # image row: the layer's (C, h, w) activation maps of it

    def mask(self, unit: int, row: int, threshold: float) -> np.ndarray:
        """The unit's mask on image `row` at image size."""
        return unit_mask(self.maps[row][unit - 1], threshold, self.images[row].shape[-2:])


def unit_mask(activation: np.ndarray, threshold: float, size: tuple[int, int]) -> np.ndarray:
    """The unit's binary mask at image size: the mask the IoU counts used (masks.upsample > threshold)."""
    # float64: against a Python float, NumPy would compare the float32 values in float32.
    return upsample(activation, size) > np.float64(threshold)


def top_activating(
    activation_paths: Sequence[PathLike], units: Sequence[int], n: int, expect: Mapping[str, Any]
) -> dict[int, list[tuple[int, float]]]:
    """For each unit (1-based): the n image rows with the largest max activation, best first."""
    channels = sorted({u - 1 for u in units})
    rows_all, maxima = [], []
    for p in activation_paths:
        with store.open_layer(p, expect) as (f, acts):
            if acts.ndim != 4:
                raise ArtifactError(f"{p}: activations must be (N, C, h, w), found shape {acts.shape}")
            if channels and channels[-1] >= acts.shape[1]:
                raise ConfigError(f"unit {channels[-1] + 1} does not exist: {p} has {acts.shape[1]} units")
            rows_all.append(np.asarray(f["rows"][:], dtype=np.int64))
            # A few images at a time, each image's maximum per unit kept (exact in float32).
            shard_max = np.zeros((acts.shape[0], len(channels)), np.float32)
            for lo in range(0, acts.shape[0] if channels else 0, TOP_CHUNK):
                block = np.asarray(acts[lo : lo + TOP_CHUNK], dtype=np.float32)[:, channels]
                shard_max[lo : lo + TOP_CHUNK] = block.max(axis=(2, 3))
            maxima.append(shard_max)
    rows = np.concatenate(rows_all) if rows_all else np.zeros(0, np.int64)
    peak = np.concatenate(maxima) if maxima else np.zeros((0, len(channels)))
    out = {}
    for k, ch in enumerate(channels):
        # Stable order: ties go to the smaller row number.
        order = np.lexsort((rows, -peak[:, k]))[:n]
        out[ch + 1] = [(int(rows[i]), float(peak[i, k])) for i in order]
    return out


def read_rows(
    paths: Sequence[PathLike], kind: str, expect: Mapping[str, Any], name: str, rows: set[int]
) -> dict[int, np.ndarray]:
    """{row: array} of dataset `name` for the wanted image rows, one read per shard.

    `paths` are the shards in order: shard s must say it is shard s."""
    out: dict[int, np.ndarray] = {}
    for shard, path in enumerate(paths):
        with store.open_h5(path, kind, dict(expect, shard=shard)) as f:
            shard_rows = f["rows"][()].astype(np.int64)
            at = np.flatnonzero(np.isin(shard_rows, list(rows)))
            if at.size:
                data = f[name][at]  # increasing positions: h5py reads them in one go
                out.update({int(shard_rows[i]): data[j] for j, i in enumerate(at)})
    missing = rows - set(out)
    if missing:
        raise ArtifactError(f"image rows {sorted(missing)[:5]} are in none of the '{kind}' shards given")
    return out


def read_top_images(image_set: ImageSet, units: Sequence[int], n: int) -> TopImages:
    """The n top-activating images of each unit (1-based) in `image_set`, with their images and maps."""
    ident = image_set.identity
    top = top_activating(image_set.activations, units, n, dict(ident, layer=image_set.layer))
    rows = {row for picks in top.values() for row, _ in picks}
    images = read_rows(image_set.images, "images", ident, "images", rows)
    maps = read_rows(image_set.activations, "activations", ident, store.layer_key(image_set.layer), rows)
    return TopImages(top, images, maps)


def set_thresholds(image_set: ImageSet) -> np.ndarray:
    """The layer's thresholds on `image_set`, one per unit."""
    with store.open_h5(image_set.thresholds, "thresholds", dict(image_set.identity, layer=image_set.layer)) as f:
        return np.asarray(f["thresholds"][:], dtype=np.float64)
