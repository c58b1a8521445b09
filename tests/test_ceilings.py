"""Ideal units: area weights, maps, IoU against brute force, and every category reachable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from advdissect.data.broden import CATEGORIES, BrodenDataset, Segmentation
from advdissect.data.synthetic import generate
from advdissect.dissect import ceilings
from advdissect.dissect.masks import upsample

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("n_in,n_out", [(56, 4), (56, 6), (56, 7), (5, 3), (3, 5)])
def test_area_weights_average_by_overlap(n_in, n_out):
    rng = np.random.default_rng(0)
    x = rng.random(n_in)
    # Brute force: split every input cell into n_out pieces, then average n_in pieces per output.
    fine = np.repeat(x, n_out)
    expected = fine.reshape(n_out, n_in).mean(axis=1)
    np.testing.assert_allclose(ceilings.area_weights(n_in, n_out) @ x, expected, rtol=1e-12)


def test_ideal_maps_hand_case():
    # 4x4 segmentation, 2x2 map: label 7 fills the top-left quarter and one more pixel;
    # label 9 is image-level.
    pixel = np.zeros((1, 4, 4), np.int32)
    pixel[0, :2, :2] = 7
    pixel[0, 3, 3] = 7
    seg = Segmentation(pixel, np.array([0]), np.array([9]))
    maps = ceilings.ideal_maps([seg], np.array([7, 9]), (4, 4), (2, 2))
    bump = 1.0 + ceilings.TIE_BREAK * (1.0 - 2 * 0.25**2)  # every cell of a 2x2 map is off-centre alike
    np.testing.assert_allclose(maps[0, 0], np.array([[1.0, 0.0], [0.0, 0.25]]) * bump, rtol=1e-6)
    np.testing.assert_allclose(maps[0, 1], np.full((2, 2), bump), rtol=1e-6)


def _brute_force_iou(ds: BrodenDataset, rows, map_size, q) -> dict[int, float]:
    """The original (Bau et al.) IoU of each ideal unit, one image and one concept at a time."""
    segs = [ds.load_segmentation(int(r)) for r in rows]
    result = {}
    concepts = sorted(
        {int(v) for s in segs for v in np.unique(s.pixel)} | {int(v) for s in segs for v in s.image_labels}
    )
    concepts = [c for c in concepts if c > 0 and ds.label_category[c] >= 0]
    maps = ceilings.ideal_maps(segs, np.array(concepts), ds.seg_size, map_size)
    for j, c in enumerate(concepts):
        t = np.quantile(maps[:, j].astype(np.float64), 1 - q, method="linear")
        cat = ds.label_category[c]
        inter = act = area = 0
        for i, seg in enumerate(segs):
            mask = upsample(maps[i, j], ds.seg_size) > t
            if c in seg.image_labels:
                label = np.ones(ds.seg_size, bool)
            else:
                label = (seg.pixel == c).any(axis=0)
            annotated = (cat in seg.layer_category) or any(ds.label_category[v] == cat for v in seg.image_labels)
            inter += int((mask & label).sum())
            area += int(label.sum())
            act += int(mask.sum()) if annotated else 0
        result[c] = inter / (act + area - inter) if act + area - inter else 0.0
    return result


def test_ideal_unit_iou_matches_brute_force(tiny_broden):
    ds = BrodenDataset(tiny_broden)
    rows = ds.rows()
    got = ceilings.ideal_unit_iou(ds, rows, (4, 4), quantile=0.02, denominator="original")
    expected = _brute_force_iou(ds, rows, (4, 4), 0.02)
    assert sorted(got["label"]) == sorted(expected)
    for label, value in zip(got["label"], got["iou"]):
        assert value == pytest.approx(expected[label], abs=1e-12), label
    assert set(got["category"]) == set(CATEGORIES)


DEMO = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def _deepest_layers():
    """(model, dataset) of every model of the demo config, dissected at its deepest layer."""
    return [
        (name, dataset)
        for name, spec in DEMO["models"].items()
        for dataset in spec.get("datasets", list(DEMO["datasets"]))
    ]


@pytest.fixture(scope="module")
def demo_sets(tmp_path_factory):
    """The demo's held-out images, made by each demo dataset's generator settings."""
    made = {}
    for name, spec in DEMO["datasets"].items():
        root = tmp_path_factory.mktemp("demo") / name
        generate(root, **{**spec["synthetic"], "n_train": 1})
        ds = BrodenDataset(root)
        made[name] = (ds, ds.rows(spec["split"])[: spec["n_images"]])
    return made


@pytest.mark.parametrize("model,dataset", _deepest_layers())
def test_every_category_can_host_a_detector(demo_sets, model, dataset):
    """An ideal unit at the deepest dissected layer's resolution reaches IoU >= 0.3 for at least
    one concept of every category: the data leave every category reachable."""
    ds, rows = demo_sets[dataset]
    spec = DEMO["models"][model]
    size = ceilings.map_size(spec["arch"], spec["num_classes"], spec["layers"][-1], ds.image_size)
    frame = ceilings.ideal_unit_iou(ds, rows, size, DEMO["dissection"]["quantile"], DEMO["dissection"]["denominator"])
    best = frame.groupby("category")["iou"].max()
    assert set(best.index) == set(CATEGORIES)
    assert (best >= 0.3).all(), (size, best.to_dict())


def test_ideal_units_streamed_in_chunks_equal_one_pass(tiny_broden):
    # thresholds from merged top values and summed counts: any chunking gives the same table
    ds = BrodenDataset(tiny_broden)
    rows = ds.rows()
    whole = ceilings.ideal_unit_iou(ds, rows, (4, 4), 0.02, "lite", chunks=ceilings.row_chunks(ds, rows, len(rows)))
    for size in (1, 7):
        parts = ceilings.ideal_unit_iou(ds, rows, (4, 4), 0.02, "lite", chunks=ceilings.row_chunks(ds, rows, size))
        pd.testing.assert_frame_equal(parts, whole)


def test_a_shard_file_is_read_in_chunks_of_rows(tiny_broden, tmp_path):
    """Rule ceilings reads each segmentations file a few hundred rows at a time; any chunk size
    gives the table of one pass over the decoded dataset."""
    from advdissect.data.segmentations import write_segmentations
    from advdissect.specs import ShardPlan

    ds = BrodenDataset(tiny_broden)
    rows = ds.rows()[:30]
    plan = ShardPlan(split="all", n_images=30, shard_size=15)
    paths = []
    for shard in (0, 1):
        paths.append(tmp_path / f"{shard}.h5")
        write_segmentations(
            paths[-1], dataset_root=tiny_broden, plan=plan, shard=shard, identity={"dataset": "t", "shard": shard}
        )
    whole = ceilings.ideal_unit_iou(ds, rows, (4, 4), 0.02, "lite")
    for size in (4, 15, 500):
        chunks = [
            load
            for shard, p in enumerate(paths)
            for load in ceilings.shard_chunks(p, {"dataset": "t", "shard": shard}, size)
        ]
        assert len(chunks) == 2 * -(-15 // size)
        pd.testing.assert_frame_equal(ceilings.ideal_unit_iou(ds, rows, (4, 4), 0.02, "lite", chunks=chunks), whole)
