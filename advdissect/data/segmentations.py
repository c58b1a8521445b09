"""A dataset shard's segmentations, decoded once and cached.

Every count and bootstrap job of every model and attack needs the same label masks of its
shard; decoding the mask PNGs (and parsing a 63,305-row index.csv) in each of them costs more
than the counting. One job per dataset shard decodes them into one HDF5 file, losslessly:

    rows            (n,)                the dataset rows, in shard order
    pixel           (L, sh, sw)         every pixel-level layer of every image (color, object,
                                        each part layer, material), label numbers R + 256·G;
                                        uint16 when every number fits, else int32
    layer_offsets   (n + 1,)            image i owns pixel[layer_offsets[i]:layer_offsets[i+1]]
    layer_category  (L,)                each layer's category (index into CATEGORIES)
    image_labels    (K,)                image-level labels (scene without 0, then textures)
    label_offsets   (n + 1,)            image i owns image_labels[label_offsets[i]:...]
    label_category  (n_labels,)         each label's primary category (-1: none)

`ShardSegmentations` reads such a file back and offers what counting needs of a dataset
(load_segmentation, label_category, n_labels, seg_size) for the rows it holds.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from .. import store
from ..errors import ArtifactError
from ..specs import ShardPlan
from .broden import BrodenDataset, Segmentation, shard_rows

KIND = "segmentations"


def encode(segs: Sequence[Segmentation], seg_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """The arrays of a segmentations file for `segs` (one per image, in order)."""
    sh, sw = seg_size
    pixel = np.concatenate([s.pixel for s in segs]) if segs else np.zeros((0, sh, sw), np.int32)
    fits = pixel.size == 0 or (int(pixel.min()) >= 0 and int(pixel.max()) <= np.iinfo(np.uint16).max)
    labels = [np.asarray(s.image_labels, np.int64) for s in segs]
    return {
        "pixel": pixel.astype(np.uint16 if fits else np.int32),
        "layer_offsets": np.concatenate([[0], np.cumsum([len(s.pixel) for s in segs])]).astype(np.int64),
        "layer_category": np.concatenate([s.layer_category for s in segs] or [np.zeros(0)]).astype(np.int64),
        "image_labels": np.concatenate(labels or [np.zeros(0)]).astype(np.int64),
        "label_offsets": np.concatenate([[0], np.cumsum([len(x) for x in labels])]).astype(np.int64),
    }


def write_segmentations(
    out: str | os.PathLike,
    *,
    dataset_root: str | os.PathLike,
    plan: ShardPlan,
    shard: int,
    identity: Mapping[str, Any],
) -> None:
    """Decode the segmentations of one shard of a dataset and write kind "segmentations"."""
    dataset = BrodenDataset(dataset_root)
    rows = np.asarray(shard_rows(dataset, plan, shard), np.int64)
    segs = [
        dataset.load_segmentation(int(r))
        for r in tqdm(rows, desc="decode segmentations", unit="img", disable=None, file=sys.stderr)
    ]
    arrays = {"rows": rows, **encode(segs, dataset.seg_size)}
    arrays["label_category"] = np.asarray(dataset.label_category, np.int64)
    attrs = dict(identity, n_labels=int(dataset.n_labels), seg_size=list(dataset.seg_size))
    store.write_h5(out, KIND, attrs, arrays)


class ShardSegmentations:
    """The segmentations of one shard, read whole from its file; stands in for the dataset
    where counting asks for label_category, n_labels, seg_size and load_segmentation(row)."""

    def __init__(self, path: str | os.PathLike, expect: Mapping[str, Any] | None = None):
        self.path = path
        with store.open_h5(path, KIND, expect) as f:
            attrs = store.read_attrs(f)
            data = {name: f[name][()] for name in store.FORMATS[KIND]}
        self.n_labels = int(attrs["n_labels"])
        self.seg_size = tuple(int(x) for x in attrs["seg_size"])
        self.label_category = data["label_category"]
        self.rows = data["rows"]
        self._data = data
        self._position = {int(r): i for i, r in enumerate(self.rows)}

    def load_segmentation(self, row: int) -> Segmentation:
        i = self._position.get(int(row))
        if i is None:
            raise ArtifactError(f"{self.path}: holds no segmentation of row {int(row)}; it belongs to another shard")
        d = self._data
        a, b = d["layer_offsets"][i], d["layer_offsets"][i + 1]
        c, e = d["label_offsets"][i], d["label_offsets"][i + 1]
        return Segmentation(d["pixel"][a:b].astype(np.int32), d["layer_category"][a:b], d["image_labels"][c:e])
