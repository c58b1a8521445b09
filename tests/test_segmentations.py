"""The segmentation cache: lossless against the dataset's own decoding."""

from __future__ import annotations

import numpy as np
import pytest

from advdissect import store
from advdissect.data.broden import BrodenDataset, Segmentation
from advdissect.data.segmentations import ShardSegmentations, encode, write_segmentations
from advdissect.errors import ArtifactError
from advdissect.specs import ShardPlan


def _same(a: Segmentation, b: Segmentation) -> None:
    np.testing.assert_array_equal(a.pixel, b.pixel)
    assert a.pixel.dtype == b.pixel.dtype == np.int32
    np.testing.assert_array_equal(a.layer_category, b.layer_category)
    np.testing.assert_array_equal(a.image_labels, b.image_labels)


def test_every_row_of_a_shard_reads_back_as_decoded(tiny_broden, tmp_path):
    dataset = BrodenDataset(tiny_broden)
    plan = ShardPlan(split="all", n_images=30, shard_size=12)
    ident = {"dataset": "tiny", "shard": 1}
    out = tmp_path / "0001.h5"
    write_segmentations(out, dataset_root=tiny_broden, plan=plan, shard=1, identity=ident)
    cached = ShardSegmentations(out, ident)
    rows = dataset.rows("all")[12:24]
    np.testing.assert_array_equal(cached.rows, rows)
    assert cached.n_labels == dataset.n_labels and cached.seg_size == tuple(dataset.seg_size)
    np.testing.assert_array_equal(cached.label_category, dataset.label_category)
    layers = []
    for row in rows:
        _same(cached.load_segmentation(int(row)), dataset.load_segmentation(int(row)))
        layers.append(len(dataset.load_segmentation(int(row)).pixel))
    assert max(layers) > min(layers)  # images with different numbers of part layers
    with store.open_h5(out, "segmentations") as f:
        assert f["pixel"].dtype == np.uint16
    with pytest.raises(ArtifactError, match="row"):
        cached.load_segmentation(int(dataset.rows("all")[0]))  # another shard's row
    with pytest.raises(ArtifactError, match="shard"):
        ShardSegmentations(out, {"dataset": "tiny", "shard": 0})


def test_encoding_keeps_large_numbers_empty_layers_and_image_labels(tmp_path):
    # label numbers past 255 (R + 256·G), one past uint16, an image without pixel layers
    segs = [
        Segmentation(np.full((2, 3, 3), 300, np.int32), np.array([0, 2]), np.array([7, 9], np.int64)),
        Segmentation(np.zeros((0, 3, 3), np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64)),
        Segmentation(np.arange(9, dtype=np.int32).reshape(1, 3, 3) + 1197, np.array([1]), np.array([5], np.int64)),
    ]
    arrays = encode(segs, (3, 3))
    assert arrays["pixel"].dtype == np.uint16
    big = [Segmentation(np.full((1, 3, 3), 70_000, np.int32), np.array([1]), np.zeros(0, np.int64))]
    assert encode(big, (3, 3))["pixel"].dtype == np.int32
    arrays |= {"rows": np.array([4, 5, 6]), "label_category": np.zeros(1300, np.int64)}
    store.write_h5(
        tmp_path / "s.h5", "segmentations", {"dataset": "d", "shard": 0, "n_labels": 1300, "seg_size": [3, 3]}, arrays
    )
    cached = ShardSegmentations(tmp_path / "s.h5")
    for row, seg in zip((4, 5, 6), segs):
        _same(cached.load_segmentation(row), seg)
