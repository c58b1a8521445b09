"""A unit's mask on the segmentation grid (advdissect.dissect.masks) and the label masks it is compared
with (R + 256·G label numbers, advdissect.data.broden; several part layers per image), against
hand-computed values, torch and pixel-by-pixel references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from advdissect import store
from advdissect.data.broden import CATEGORIES, Segmentation, decode_mask, encode_mask
from advdissect.data.segmentations import ShardSegmentations, encode
from advdissect.dissect.masks import UpsamplePlan, active_pixels, axis_weights, rounded_threshold, upsample
from advdissect.errors import ArtifactError

from helpers import ref_mask, ref_upsample

# ---------------------------------------------------------------- the bilinear rule


def test_axis_weights_by_hand():
    # 2 -> 4: src = 0.5·(i + 0.5) - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25
    i0, i1, l0, l1 = axis_weights(2, 4)
    assert i0.tolist() == [0, 0, 0, 1] and i1.tolist() == [1, 1, 1, 1]
    assert l1.tolist() == [0.0, 0.25, 0.75, 0.25] and l0.tolist() == [1.0, 0.75, 0.25, 0.75]
    # 4 -> 2: src = 2·(i + 0.5) - 0.5 = 0.5, 2.5: the mean of two neighbouring cells
    i0, i1, l0, l1 = axis_weights(4, 2)
    assert i0.tolist() == [0, 2] and i1.tolist() == [1, 3] and l0.tolist() == l1.tolist() == [0.5, 0.5]
    # same size: each output reads its own cell with weight 1
    i0, i1, l0, l1 = axis_weights(5, 5)
    assert i0.tolist() == list(range(5)) and l0.tolist() == [1.0] * 5 and l1.tolist() == [0.0] * 5
    # one cell: every output reads it
    i0, i1, l0, l1 = axis_weights(1, 3)
    assert i0.tolist() == i1.tolist() == [0, 0, 0]
    for bad in ((0, 4), (4, 0), (-1, 3)):
        with pytest.raises(ValueError, match="sizes must be positive"):
            axis_weights(*bad)


def test_upsample_by_hand():
    a = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
    # value 2·Y + X with Y, X the interpolated positions 0, 0.25, 0.75, 1 of each axis
    want = np.array([[0, 0.25, 0.75, 1], [0.5, 0.75, 1.25, 1.5], [1.5, 1.75, 2.25, 2.5], [2, 2.25, 2.75, 3]])
    got = upsample(a, (4, 4))
    assert got.dtype == np.float32 and got.shape == (4, 4)
    np.testing.assert_array_equal(got, want)
    # 4 x 4 -> 2 x 2 averages 2 x 2 blocks
    b = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(upsample(b, (2, 2)), [[2.5, 4.5], [10.5, 12.5]])
    # leading axes are kept: (2, 3, h, w) maps are resized one by one
    maps = np.random.default_rng(0).normal(size=(2, 3, 3, 5)).astype(np.float32)
    stacked = upsample(maps, (7, 4))
    assert stacked.shape == (2, 3, 7, 4)
    for i in range(2):
        for u in range(3):
            np.testing.assert_array_equal(stacked[i, u], upsample(maps[i, u], (7, 4)))
            np.testing.assert_array_equal(stacked[i, u], ref_upsample(maps[i, u], 7, 4).astype(np.float32))


def test_upsample_stays_within_the_maps_range():
    maps = np.random.default_rng(5).normal(size=(4, 6, 5, 5)).astype(np.float32) * 100
    up = upsample(maps, (37, 41))
    assert (up <= maps.max(axis=(2, 3), keepdims=True)).all()
    assert (up >= maps.min(axis=(2, 3), keepdims=True)).all()


@pytest.mark.parametrize(
    "map_size,seg_size",
    [
        ((3, 3), (8, 8)),
        ((4, 5), (7, 9)),
        ((5, 5), (3, 3)),
        ((1, 1), (4, 4)),
        ((7, 7), (112, 112)),
        ((6, 6), (6, 6)),
        ((2, 3), (113, 113)),
    ],
)
def test_upsample_matches_reference_and_torch(map_size, seg_size):
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(2, 3) + map_size).astype(np.float32)
    got = upsample(maps, seg_size)
    torch64 = F.interpolate(
        torch.from_numpy(maps).double(), size=seg_size, mode="bilinear", align_corners=False
    ).numpy()
    np.testing.assert_allclose(got, torch64, rtol=1e-6, atol=1e-6)
    torch32 = F.interpolate(torch.from_numpy(maps), size=seg_size, mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(got, torch32, rtol=1e-5, atol=1e-5)
    # the rounded float64 result equals torch's float64 result rounded to float32, but for
    # (rare) ties of the rounding
    assert (got == torch64.astype(np.float32)).mean() > 0.999
    t = 0.3
    ref = ref_mask(maps[1, 2], t, *seg_size)
    dense = set(zip(*np.nonzero(got[1, 2] > t)))
    assert dense == ref


def test_upsample_keeps_constant_maps_exact():
    maps = np.full((1, 1, 7, 7), 0.1, np.float32)
    assert (upsample(maps, (113, 113)) == np.float32(0.1)).all()


@pytest.mark.parametrize(
    "map_size,seg_size",
    [
        ((3, 3), (8, 8)),
        ((4, 5), (7, 9)),
        ((5, 5), (3, 3)),
        ((1, 1), (4, 4)),
        ((7, 7), (112, 112)),
        ((6, 6), (6, 6)),
        ((14, 14), (113, 113)),
    ],
)
def test_active_pixels_equal_dense_mask(map_size, seg_size):
    rng = np.random.default_rng(2)
    maps = (rng.integers(-8, 9, size=(3, 4) + map_size) / 8).astype(np.float32)
    thresholds = np.array([0.5, 0.875, -2.0, 0.25 + 1e-9])
    pair, pixel = active_pixels(maps, thresholds, UpsamplePlan(map_size, seg_size))
    dense = upsample(maps, seg_size).reshape(3 * 4, -1) > np.tile(thresholds, 3)[:, None]
    want_pair, want_pixel = np.nonzero(dense)
    order = np.lexsort((pixel, pair))
    np.testing.assert_array_equal(pair[order], want_pair)
    np.testing.assert_array_equal(pixel[order], want_pixel)


def test_rounded_threshold_matches_float32_rounding():
    rng = np.random.default_rng(3)
    t = np.concatenate(
        [
            rng.normal(size=200),
            rng.normal(size=100).astype(np.float32).astype(np.float64),
            [0.0, -0.0, 1e-45, -1e-45, 1e-40, 3.0, -3.0, 1e38],
        ]
    )
    eff = rounded_threshold(t)
    for ti, ei in zip(t, eff):
        t32 = np.float32(ti) if np.float32(ti) > ti else np.nextafter(np.float32(ti), np.float32(np.inf))
        p32 = np.nextafter(t32, np.float32(-np.inf))
        mid = (float(t32) + float(p32)) / 2
        candidates = [
            mid,
            np.nextafter(mid, np.inf),
            np.nextafter(mid, -np.inf),
            float(t32),
            float(p32),
            ti,
            np.nextafter(ti, np.inf),
            np.nextafter(ti, -np.inf),
        ]
        for s in candidates:
            assert (np.float32(s) > ti) == (s > ei), (ti, s)


def test_rounded_threshold_special_values():
    assert rounded_threshold(np.array([np.inf]))[0] == np.inf  # nothing is above +inf
    with np.errstate(over="ignore"):  # the float32 below the lowest one is -inf
        assert rounded_threshold(np.array([-np.inf]))[0] == -np.inf  # everything finite is above -inf
    # a float32 threshold: a value is above it exactly when its float32 rounding is
    t = float(np.float32(0.1))
    eff = rounded_threshold(np.array([t]))[0]
    above = float(np.nextafter(np.float32(t), np.float32(np.inf)))
    mid = (t + above) / 2  # rounds to even: one of t and above
    assert (np.float32(mid) > t) == (mid > eff)
    assert not (t > eff) and above > eff
    with pytest.raises(ArtifactError, match="NaN"):
        rounded_threshold(np.array([0.5, np.nan]))


# ---------------------------------------------------------------- active pixels


def test_active_pixels_of_a_hand_computed_mask():
    # the 4 x 4 upsample of [[0, 1], [2, 3]] (test_upsample_by_hand) is above 1.5 on row 2 but
    # its first pixel (1.5 itself), and on all of row 3
    maps = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32).reshape(1, 1, 2, 2)
    pair, pixel = active_pixels(maps, np.array([1.5]), UpsamplePlan((2, 2), (4, 4)))
    assert pair.tolist() == [0] * 7
    assert sorted(pixel.tolist()) == [9, 10, 11, 12, 13, 14, 15]
    # a threshold at or above the maximum leaves nothing active
    for t in (3.0, 10.0):
        pair, pixel = active_pixels(maps, np.array([t]), UpsamplePlan((2, 2), (4, 4)))
        assert pair.size == pixel.size == 0 and pair.dtype == pixel.dtype == np.int64


def test_active_pixels_refuse_maps_of_another_size():
    with pytest.raises(ArtifactError, match=r"plan made for \(3, 3\)"):
        active_pixels(np.zeros((1, 2, 4, 4), np.float32), np.zeros(2), UpsamplePlan((3, 3), (8, 8)))


def test_active_pixels_of_few_hot_cells_among_many_units():
    # 2 maps x 3000 units at 14 x 14 -> 113 x 113 (15 x 15 tiles) with a handful of cells above
    # the threshold: the candidate tiles are too few to mark in a table of all 1.35 M (tile,
    # map, unit), and are sorted instead
    rng = np.random.default_rng(7)
    maps = np.full((2, 3000, 14, 14), -1.0, np.float32)
    hot = [(0, 3, 0, 0), (0, 3, 13, 13), (1, 2999, 6, 7), (1, 450, 0, 13), (0, 12, 7, 7)]
    for i, u, y, x in hot:
        maps[i, u, y, x] = rng.uniform(0.5, 2.0)
    thresholds = np.zeros(3000)
    thresholds[12] = float(maps[0, 12, 7, 7])  # its only hot cell equals the threshold: nothing active
    pair, pixel = active_pixels(maps, thresholds, UpsamplePlan((14, 14), (113, 113)))
    got = {}
    for p, q in zip(pair.tolist(), pixel.tolist()):
        got.setdefault(p, set()).add(divmod(q, 113))
    want = {}
    for i, u, _, _ in hot:
        mask = ref_mask(maps[i, u], float(thresholds[u]), 113, 113)
        if mask:
            want[i * 3000 + u] = mask
    assert set(want) == {3, 3000 + 2999, 3000 + 450}
    assert got == want


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    sh=st.integers(1, 20),
    sw=st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
def test_active_pixels_equal_the_pixel_by_pixel_mask(h, w, sh, sw, seed):
    # quarter steps: ties between cells and thresholds equal to map values
    rng = np.random.default_rng(seed)
    maps = (rng.integers(-4, 5, size=(2, 3, h, w)) / 4).astype(np.float32)
    thresholds = rng.choice(np.unique(maps), 3).astype(np.float64) - rng.choice([0.0, 1e-9, 0.125], 3)
    pair, pixel = active_pixels(maps, thresholds, UpsamplePlan((h, w), (sh, sw)))
    got = set(zip(pair.tolist(), pixel.tolist()))
    want = {
        (i * 3 + u, y * sw + x)
        for i in range(2)
        for u in range(3)
        for y, x in ref_mask(maps[i, u], float(thresholds[u]), sh, sw)
    }
    assert got == want
    assert len(got) == len(pair)  # no pixel twice


def test_plan_tiles_cover_the_grid_once():
    for map_size, seg_size in (((3, 3), (8, 8)), ((7, 7), (112, 112)), ((5, 2), (3, 9)), ((1, 1), (4, 4))):
        plan = UpsamplePlan(map_size, seg_size)
        assert plan.rows.size.sum() == seg_size[0] and plan.cols.size.sum() == seg_size[1]
        covered = np.zeros(seg_size, int)
        for t in range(plan.n_tiles):
            r, c = plan.tile_by[t], plan.tile_bx[t]
            y, x = plan.rows.start[r], plan.cols.start[c]
            covered[y : y + plan.rows.size[r], x : x + plan.cols.size[c]] += 1
            assert plan.tile_origin[t] == y * seg_size[1] + x
            # every pixel of the tile reads the tile's four corner cells
            i0, i1, _, _ = axis_weights(map_size[0], seg_size[0])
            j0, j1, _, _ = axis_weights(map_size[1], seg_size[1])
            rows = slice(y, y + plan.rows.size[r])
            cols = slice(x, x + plan.cols.size[c])
            (y0,), (y1,) = set(i0[rows].tolist()), set(i1[rows].tolist())
            (x0,), (x1,) = set(j0[cols].tolist()), set(j1[cols].tolist())
            w = map_size[1]
            assert plan.corners[:, t].tolist() == [y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1]
        assert (covered == 1).all()


# ---------------------------------------------------------------- label masks: R + 256·G


def test_label_numbers_are_red_plus_256_green():
    rgb = np.array([[[44, 1, 200], [255, 255, 0], [0, 0, 9]]], np.uint8)  # blue is not part of the number
    np.testing.assert_array_equal(decode_mask(rgb), [[44 + 256, 65535, 0]])
    rgba = np.concatenate([rgb, np.full((1, 3, 1), 128, np.uint8)], axis=2)
    np.testing.assert_array_equal(decode_mask(rgba), decode_mask(rgb))
    assert encode_mask(np.array([[300, 65535, 0, 256]])).tolist() == [[[44, 1, 0], [255, 255, 0], [0, 0, 0], [0, 1, 0]]]
    with pytest.raises(ValueError, match="H, W, 3"):
        decode_mask(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="2-D"):
        encode_mask(np.zeros((1, 4, 4), int))
    with pytest.raises(ValueError, match="0..65535"):
        encode_mask(np.array([[-1, 3]]))


def test_label_masks_round_trip_through_png_files(tmp_path):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 65536, size=(9, 13))
    labels[0, :4] = [0, 255, 256, 65535]
    Image.fromarray(encode_mask(labels)).save(tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(decode_mask(np.asarray(im)), labels)


def test_several_part_layers_keep_their_order_and_categories(tmp_path):
    # two images: object + two part layers + material; then one part layer only
    part = CATEGORIES.index("part")
    obj, mat = CATEGORIES.index("object"), CATEGORIES.index("material")
    layers = np.arange(4 * 3 * 3, dtype=np.int32).reshape(4, 3, 3) + 250  # numbers across 256
    segs = [
        Segmentation(layers, np.array([obj, part, part, mat]), np.array([5, 7], np.int64)),
        Segmentation(layers[1:2] + 1000, np.array([part]), np.zeros(0, np.int64)),
    ]
    arrays = encode(segs, (3, 3))
    assert arrays["layer_offsets"].tolist() == [0, 4, 5]
    assert arrays["layer_category"].tolist() == [obj, part, part, mat, part]
    assert arrays["label_offsets"].tolist() == [0, 2, 2]
    np.testing.assert_array_equal(arrays["pixel"][4], layers[1] + 1000)
    arrays |= {"rows": np.array([10, 11]), "label_category": np.zeros(1300, np.int64)}
    attrs = {"dataset": "d", "shard": 0, "n_labels": 1300, "seg_size": [3, 3]}
    store.write_h5(tmp_path / "s.h5", "segmentations", attrs, arrays)
    cached = ShardSegmentations(tmp_path / "s.h5")
    for row, seg in zip((10, 11), segs):
        back = cached.load_segmentation(row)
        np.testing.assert_array_equal(back.pixel, seg.pixel)
        np.testing.assert_array_equal(back.layer_category, seg.layer_category)
        np.testing.assert_array_equal(back.image_labels, seg.image_labels)
