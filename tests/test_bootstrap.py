"""Bootstrap over images: each resample's counts against counting the resampled image list itself."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from advdissect import store
from advdissect.dissect.bootstrap import (
    DETECTOR_COLUMNS,
    ImageCounts,
    basic_interval,
    bootstrap_detectors,
    detectors,
    percentile_interval,
    read_bootstrap,
    resample_weights,
    write_bootstrap,
)
from advdissect.dissect.counts import LabelTable, count_shard, iou, merge_counts
from advdissect.dissect.tally import write_shard_counts
from advdissect.errors import ArtifactError
from advdissect.store import COUNT_KEYS

from helpers import StandInDataset, write_shards

N_LABELS = 12
LABEL_CATEGORY = np.array([-1, 0, 0, 1, 1, 1, 2, 3, 4, 4, 5, -1], np.int64)
SEG = (6, 6)


def random_shard(seed: int, n: int = 7, c: int = 5):
    rng = np.random.default_rng(seed)
    acts = (rng.integers(-4, 12, size=(n, c, 3, 3)) / 4).astype(np.float32)
    acts[:, 0] = -5.0  # dead unit
    thresholds = np.quantile(acts.transpose(1, 0, 2, 3).reshape(c, -1).astype(np.float64), 0.8, axis=1)
    segs = []
    for i in range(n):
        pixel = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 11], size=(1 + i % 3, *SEG)).astype(np.int32)
        image_labels = np.array([[8], [9, 10], [], [0, 8]][i % 4], np.int64)
        segs.append((pixel, image_labels))
    return acts, thresholds, segs


def counted(acts, thresholds, segs, per_image=True):
    return count_shard(acts, thresholds, segs, LabelTable(LABEL_CATEGORY, N_LABELS, SEG), chunk=3, per_image=per_image)


def test_records_add_up_to_the_counts():
    acts, thresholds, segs = random_shard(0)
    got = counted(acts, thresholds, segs)
    plain = counted(acts, thresholds, segs, per_image=False)
    for key in COUNT_KEYS:
        np.testing.assert_array_equal(got[key], plain[key], err_msg=key)
    ImageCounts.from_shards([got])  # raises when the records do not add up
    inter = got["per_image/intersection/count"]
    assert inter.sum() == plain["intersection"].sum() and inter.size > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resample_counts_equal_counting_the_resampled_images(seed):
    """The reference: duplicate each image as often as it is drawn and count that list."""
    acts, thresholds, segs = random_shard(seed)
    parts = [counted(acts[:4], thresholds, segs[:4]), counted(acts[4:], thresholds, segs[4:])]
    image_counts = ImageCounts.from_shards(parts)
    weights = resample_weights(len(segs), 5, seed)
    for w, got in zip(weights, image_counts.counts(weights)):
        order = np.repeat(np.arange(len(segs)), w)
        want = counted(acts[order], thresholds, [segs[i] for i in order], per_image=False)
        for key in COUNT_KEYS:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        for denominator in ("lite", "original"):
            np.testing.assert_array_equal(iou(got, denominator), iou(want, denominator))


def test_all_ones_reproduce_the_full_set():
    acts, thresholds, segs = random_shard(3)
    parts = [counted(acts[:2], thresholds, segs[:2]), counted(acts[2:], thresholds, segs[2:])]
    merged = merge_counts(parts)
    (got,) = ImageCounts.from_shards(parts).counts(np.ones((1, len(segs)), np.int64))
    for key in COUNT_KEYS:
        np.testing.assert_array_equal(got[key], merged[key], err_msg=key)


def test_detectors_follow_the_units_table_rules():
    acts, thresholds, segs = random_shard(4, n=12, c=8)
    counts = counted(acts, thresholds, segs, per_image=False)
    scores = iou(counts, "lite")
    # brute force: best label over labels with a category; ties to the lowest label within a
    # category and to the last category across categories
    want = dict.fromkeys(DETECTOR_COLUMNS, 0)
    for u in range(scores.shape[0]):
        best_cat, best = None, 0.0
        for c in range(6):
            labels = [lab for lab in range(1, N_LABELS) if LABEL_CATEGORY[lab] == c]
            top = max((scores[u, lab] for lab in labels), default=0.0)
            if top > 0 and top >= best:
                best_cat, best = c, top
        if best > 0.1:
            want[("color", "object", "part", "material", "scene", "texture")[best_cat]] += 1
            want["all"] += 1
    assert detectors(counts, "lite", 0.1) == want


def test_weights_are_seeded_and_shared():
    a = resample_weights(10, 4, seed=7)
    assert a.shape == (4, 10) and (a.sum(axis=1) == 10).all() and (a >= 0).all()
    np.testing.assert_array_equal(a, resample_weights(10, 4, seed=7))
    assert not np.array_equal(a, resample_weights(10, 4, seed=8))
    # resample k does not depend on how many are drawn
    np.testing.assert_array_equal(resample_weights(10, 9, seed=7)[:4], a)


def test_bootstrap_table_and_intervals():
    acts, thresholds, segs = random_shard(5, n=10)
    image_counts = ImageCounts.from_shards([counted(acts, thresholds, segs)])
    frame = bootstrap_detectors(image_counts, 20, 0, "lite", 0.05)
    assert list(frame.columns) == ["resample", "units", *DETECTOR_COLUMNS]
    assert frame["resample"].tolist() == list(range(1, 21))
    assert (frame[list(DETECTOR_COLUMNS[:-1])].sum(axis=1) == frame["all"]).all()
    pd.testing.assert_frame_equal(frame, bootstrap_detectors(image_counts, 20, 0, "lite", 0.05))
    lo, hi = percentile_interval(np.arange(101.0), 0.9)
    assert (lo, hi) == (5.0, 95.0)
    assert percentile_interval(np.arange(1001.0), 0.95) == (25.0, 975.0)


def test_basic_interval_reflects_the_resamples_around_the_point():
    values = np.arange(1001.0)  # 2.5 % and 97.5 % quantiles: 25 and 975
    assert basic_interval(500.0, values, 0.95) == (25.0, 975.0)  # symmetric: the percentile interval
    assert basic_interval(100.0, values, 0.95) == (-775.0, 175.0)
    assert basic_interval(100.0, values, 0.95, bounds=(0.0, 100.0)) == (0.0, 100.0)
    # resamples all above the point (a max over noisy IoUs inflates): the interval moves below it
    lo, hi = basic_interval(0.6, np.array([1.0, 2.0, 3.0, 6.2]), 0.5, bounds=(0.0, 100.0))
    assert hi <= 0.6 and lo == 0.0
    assert str(basic_interval(0.0, np.zeros(5), 0.95)) == "(0.0, 0.0)"  # no negative zero


def test_counts_without_records_are_refused(tmp_path):
    acts, thresholds, segs = random_shard(6)
    with pytest.raises(ArtifactError, match="per-image records"):
        ImageCounts.from_shards([counted(acts, thresholds, segs, per_image=False)])
    with pytest.raises(ArtifactError, match="no count shards"):
        ImageCounts.from_shards([])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("denominator", ["lite", "original"])
def test_resample_detectors_equal_scoring_each_resample_in_full(seed, denominator):
    """The sparse scorer against the dense reference: counts(weights), then detectors(counts)."""
    acts, thresholds, segs = random_shard(seed, n=11, c=9)
    parts = [counted(acts[:6], thresholds, segs[:6]), counted(acts[6:], thresholds, segs[6:])]
    image_counts = ImageCounts.from_shards(parts)
    weights = resample_weights(len(segs), 40, seed)
    for cut in (0.0, 0.05, 0.2):
        got = image_counts.detectors(weights, denominator, cut)
        want = [[detectors(c, denominator, cut)[k] for k in DETECTOR_COLUMNS] for c in image_counts.counts(weights)]
        np.testing.assert_array_equal(got, np.array(want))


def write_count_shards(tmp_path, acts, segs, thresholds, bounds, per_image=True):
    """Count files of shards [a, b) for dissections clean/l and self/l, as the count jobs write them."""
    dataset = StandInDataset(segs, LABEL_CATEGORY, SEG)
    identity = {"dataset": "d", "model": "m", "attack": "fgsm_8"}
    dissections = []
    for mode, attack in (("clean", "clean"), ("self", "fgsm_8")):
        t_identity = {"dataset": "d", "model": "m", "attack": attack, "layer": "l"}
        store.write_h5(tmp_path / f"t_{mode}.h5", "thresholds", t_identity, {"thresholds": thresholds[mode]})
        dissections.append(
            {"mode": mode, "layer": "l", "thresholds": tmp_path / f"t_{mode}.h5", "threshold_identity": t_identity}
        )
    arrays = {store.layer_key("l"): acts, "rows": np.arange(bounds[-1][1])}
    write_shards(tmp_path, "activations", identity, arrays, bounds, name="a{shard}.h5")
    paths = []
    for shard in range(len(bounds)):
        shard_identity = dict(identity, shard=shard)
        write_shard_counts(
            tmp_path / f"c{shard}.h5",
            activations_path=tmp_path / f"a{shard}.h5",
            dissections=dissections,
            segmentations_path=None,
            identity=shard_identity,
            dataset=dataset,
            per_image=per_image,
        )
        paths.append(tmp_path / f"c{shard}.h5")
    return paths, identity


def test_write_bootstrap_resamples_the_count_shards_records(tmp_path):
    acts, thresholds, segs = random_shard(7, n=9)
    both = {"self": thresholds, "clean": thresholds - 0.25}
    paths, identity = write_count_shards(tmp_path, acts, segs, both, ((0, 5), (5, 9)))
    kwargs = dict(
        count_paths=paths,
        identity=identity,
        dissections=[{"mode": "self", "layer": "l"}, {"mode": "clean", "layer": "l"}],
        resamples=6,
        seed=1,
        denominator="lite",
        iou_threshold=0.05,
    )
    write_bootstrap(tmp_path / "boot.csv", **kwargs)
    table = pd.read_csv(tmp_path / "boot.csv")
    assert list(table.columns) == ["mode", "layer", "resample", "units", *DETECTOR_COLUMNS]
    for mode in ("self", "clean"):
        whole = ImageCounts.from_shards([counted(acts, both[mode], segs)])
        want = bootstrap_detectors(whole, 6, 1, "lite", 0.05)
        got = read_bootstrap(tmp_path / "boot.csv", mode=mode, layer="l")
        assert (got["mode"] == mode).all() and (got["layer"] == "l").all()
        pd.testing.assert_frame_equal(got.drop(columns=["mode", "layer"]), want)
    with pytest.raises(ArtifactError, match="no resamples of self/l2"):
        read_bootstrap(tmp_path / "boot.csv", mode="self", layer="l2")

    # counts written without records (the bootstrap was off) are refused, naming the file
    plain, _ = write_count_shards(tmp_path / "plain", acts, segs, both, ((0, 9),), per_image=False)
    with pytest.raises(ArtifactError, match="without per_image/intersection/image"):
        write_bootstrap(tmp_path / "boot2.csv", **dict(kwargs, count_paths=plain))
    assert not (tmp_path / "boot2.csv").exists()


def test_records_that_do_not_add_up_are_refused():
    acts, thresholds, segs = random_shard(8)
    part = counted(acts, thresholds, segs)
    part["per_image/intersection/count"] = part["per_image/intersection/count"] + 1
    with pytest.raises(ArtifactError, match="do not add up to the counts' intersection"):
        ImageCounts.from_shards([part])
