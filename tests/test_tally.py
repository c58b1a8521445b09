"""IoU counting against a brute-force reference (plain loops, hand-written bilinear formula)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from advdissect import store
from advdissect.data.broden import CATEGORIES
from advdissect.dissect.counts import N_CAT, LabelTable, count_shard, iou, merge_counts
from advdissect.dissect.tally import (
    _best_overall,
    best_concepts,
    read_counts,
    tally_columns,
    units_table,
    write_iou,
    write_shard_counts,
    write_units_table,
)
from advdissect.errors import ArtifactError, ConfigError, DatasetError

from helpers import StandInDataset, ref_mask, write_shards

REAL = Path(__file__).resolve().parents[2] / "shared" / "broden-real"
COUNT_KEYS = ("intersection", "label_area", "activation_lite", "activation_original", "activation_total")


# ---------------------------------------------------------------- reference


def ref_counts(acts, thresholds, segs, label_category, n_labels, seg_size):
    n, c = acts.shape[:2]
    sh, sw = seg_size
    inter = np.zeros((c, n_labels), np.int64)
    area = np.zeros(n_labels, np.int64)
    lite = np.zeros((c, 6), np.int64)
    orig = np.zeros((c, 6), np.int64)
    total = np.zeros(c, np.int64)
    for img in range(n):
        pixel, image_labels = segs[img]
        labels_at = {}
        for i in range(sh):
            for j in range(sw):
                s = {int(pixel[k, i, j]) for k in range(pixel.shape[0])} | {int(x) for x in image_labels}
                s.discard(0)
                labels_at[i, j] = s
                for lab in s:
                    area[lab] += 1
        annotated = {int(label_category[lab]) for s in labels_at.values() for lab in s} - {-1}
        for u in range(c):
            mask = ref_mask(acts[img, u], float(thresholds[u]), sh, sw)
            total[u] += len(mask)
            inside = set()
            for pix in mask:
                for lab in labels_at[pix]:
                    inter[u, lab] += 1
                    if label_category[lab] >= 0:
                        inside.add(int(label_category[lab]))
            for cat in inside:
                lite[u, cat] += len(mask)
            for cat in annotated:
                orig[u, cat] += len(mask)
    return dict(
        intersection=inter, label_area=area, activation_lite=lite, activation_original=orig, activation_total=total
    )


def ref_iou(counts, label_category, denominator):
    act = counts[f"activation_{denominator}"]
    c, n_labels = counts["intersection"].shape
    out = np.zeros((c, n_labels))
    for u in range(c):
        for lab in range(1, n_labels):
            cat = label_category[lab]
            if cat < 0:
                continue
            i = counts["intersection"][u, lab]
            union = act[u, cat] + counts["label_area"][lab] - i
            out[u, lab] = i / union if union > 0 else 0.0
    return out


# ---------------------------------------------------------------- tiny random data


N_LABELS = 14
# label 0 none; 1-3 color, 4-6 object, 7-8 part, 9 material, 10-11 scene, 12 texture, 13 no category
LABEL_CATEGORY = np.array([-1, 0, 0, 0, 1, 1, 1, 2, 2, 3, 4, 4, 5, -1], np.int64)


def tiny_data(seed=0, n=5, c=6, map_size=(3, 3), seg_size=(8, 8)):
    rng = np.random.default_rng(seed)
    # quarter steps: ties between cells, thresholds equal to data values, constant regions
    acts = (rng.integers(-4, 12, size=(n, c) + map_size) / 4).astype(np.float32)
    acts[:, 1] = -5.0  # dead unit
    acts[1, 2] = 0.75  # constant map
    q = 0.15
    thresholds = np.quantile(acts.transpose(1, 0, 2, 3).reshape(c, -1).astype(np.float64), 1 - q, axis=1)
    thresholds[3] = -10.0  # above threshold everywhere
    thresholds[2] = 0.75  # equal to the constant map's value
    sh, sw = seg_size
    segs = []
    for img in range(n):
        n_layers = [2, 0, 1, 3, 2][img % 5]
        pixel = np.zeros((n_layers, sh, sw), np.int32)
        for k in range(n_layers):
            choices = [0, 1, 2, 3, 4, 5, 7, 8, 9, 13]  # label 6 appears nowhere
            pixel[k] = rng.choice(choices, size=(sh, sw))
        if n_layers >= 2:
            pixel[1, :2, :2] = pixel[0, :2, :2]  # same label on the same pixel in two layers
        image_labels = [[10, 12], [], [0], [11, 12, 12], [13]][img % 5]  # scene 0, repeats
        segs.append((pixel, np.array(image_labels, np.int64)))
    segs[4] = (np.zeros((2, sh, sw), np.int32), np.array([], np.int64))  # no label at all
    return acts, thresholds, segs


def assert_counts_equal(got, want):
    for key in COUNT_KEYS:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


# ---------------------------------------------------------------- counts


@pytest.mark.parametrize("map_size,seg_size", [((3, 3), (8, 8)), ((4, 2), (5, 9)), ((8, 8), (6, 6))])
def test_counts_equal_brute_force(map_size, seg_size):
    acts, thresholds, segs = tiny_data(map_size=map_size, seg_size=seg_size)
    want = ref_counts(acts, thresholds, segs, LABEL_CATEGORY, N_LABELS, seg_size)
    got = count_shard(acts, thresholds, segs, LabelTable(LABEL_CATEGORY, N_LABELS, seg_size))
    assert_counts_equal(got, want)
    assert int(got["n_images"]) == len(segs)
    # edge cases the data holds
    assert want["activation_total"][1] == 0  # dead unit
    assert want["activation_total"][3] == len(segs) * seg_size[0] * seg_size[1]  # active everywhere
    assert want["label_area"][6] == 0  # label in no image
    assert want["label_area"][0] == 0 and (want["intersection"][:, 0] == 0).all()
    for denominator in ("lite", "original"):
        np.testing.assert_array_equal(iou(got, denominator), ref_iou(want, LABEL_CATEGORY, denominator))


def test_counts_independent_of_chunks_and_shards():
    acts, thresholds, segs = tiny_data(seed=4, n=9)
    labels = LabelTable(LABEL_CATEGORY, N_LABELS, (8, 8))
    whole = count_shard(acts, thresholds, segs, labels)
    for chunk in (1, 2, 4, 100):
        assert_counts_equal(count_shard(acts, thresholds, segs, labels, chunk=chunk), whole)
    parts = [count_shard(acts[a:b], thresholds, segs[a:b], labels) for a, b in ((0, 2), (2, 7), (7, 9))]
    merged = merge_counts(parts)
    assert_counts_equal(merged, whole)
    assert int(merged["n_images"]) == 9
    np.testing.assert_array_equal(iou(merged, "lite"), iou(whole, "lite"))


def test_sorting_path_for_many_label_sets(monkeypatch):
    import advdissect.dissect.counts as counts

    acts, thresholds, segs = tiny_data(seed=6, n=6)
    want = count_shard(acts, thresholds, segs, LabelTable(LABEL_CATEGORY, N_LABELS, (8, 8)))
    monkeypatch.setattr(counts, "_dense_bins", lambda n_bins, n_keys: False)
    assert_counts_equal(count_shard(acts, thresholds, segs, LabelTable(LABEL_CATEGORY, N_LABELS, (8, 8))), want)


def test_segmentation_objects_accepted():
    acts, thresholds, segs = tiny_data()

    class Seg:
        def __init__(self, pixel, image_labels):
            self.pixel, self.image_labels = pixel, image_labels

    objs = [Seg(*s) for s in segs]
    a = count_shard(acts, thresholds, objs, LabelTable(LABEL_CATEGORY, N_LABELS, (8, 8)))
    b = count_shard(acts, thresholds, segs, LabelTable(LABEL_CATEGORY, N_LABELS, (8, 8)))
    assert_counts_equal(a, b)


def test_hand_computed_iou_2x2():
    # Two images, one unit, 2x2 maps on a 2x2 segmentation (no resize: S = A), T = 1.
    # labels: 1 object, 2 color, 3 scene.
    # image 0: pixel labels [[1, 1], [2, 0]], scene 3; A = [[5, 4], [0, 0]] -> M = top row (2 px)
    #   intersection: l1 2, l3 2 (scene covers every pixel); areas l1 2, l2 1, l3 4
    #   annotated: color, object, scene -> original += 2 each; inside M: object, scene -> lite += 2
    # image 1: pixel labels all 2, no scene; A = [[0, 0], [0, 9]] -> M = 1 px, carrying label 2
    #   intersection l2 1; area l2 4; original color += 1; lite color += 1
    # totals: inter l1 2, l2 1, l3 2; area l1 2, l2 5, l3 4
    #   lite: color 1, object 2, scene 2; original: color 3, object 2, scene 2
    # IoU lite:     l1 2/(2+2-2) = 1, l2 1/(1+5-1) = 0.2,  l3 2/(2+4-2) = 0.5
    # IoU original: l1 1,             l2 1/(3+5-1) = 1/7,  l3 0.5
    cat = np.array([-1, 1, 0, 4])
    acts = np.array([[[[5, 4], [0, 0]]], [[[0, 0], [0, 9]]]], np.float32)
    segs = [
        (np.array([[[1, 1], [2, 0]]], np.int32), np.array([3])),
        (np.full((1, 2, 2), 2, np.int32), np.array([], np.int64)),
    ]
    counts = count_shard(acts, np.array([1.0]), segs, LabelTable(cat, 4, (2, 2)))
    np.testing.assert_array_equal(counts["intersection"], [[0, 2, 1, 2]])
    np.testing.assert_array_equal(counts["label_area"], [0, 2, 5, 4])
    np.testing.assert_array_equal(counts["activation_lite"], [[1, 2, 0, 0, 2, 0]])
    np.testing.assert_array_equal(counts["activation_original"], [[3, 2, 0, 0, 2, 0]])
    np.testing.assert_allclose(iou(counts, "lite"), [[0, 1, 0.2, 0.5]])
    np.testing.assert_allclose(iou(counts, "original"), [[0, 1, 1 / 7, 0.5]])


def test_hand_computed_iou_4x4_upsampled():
    # A 2x2 map resized to 4x4. Per axis torch's weights on (cell 0, cell 1) are
    # [1, 0], [.75, .25], [.25, .75], [0, 1]. With A = [[8, 0], [0, 0]] the resized map is
    # 8 * outer([1, .75, .25, 0], [1, .75, .25, 0]):
    #   8   6   2   0
    #   6   4.5 1.5 0
    #   2   1.5 .5  0
    #   0   0   0   0
    # T = 1.9: M = {8, 6, 2, 6, 4.5, 2} = 6 pixels. Label 1 on the top-left 2x2 block (4 px,
    # all inside M): IoU = 4 / (6 + 4 - 4) = 2/3.
    acts = np.array([[[[8, 0], [0, 0]]]], np.float32)
    pixel = np.zeros((1, 4, 4), np.int32)
    pixel[0, :2, :2] = 1
    counts = count_shard(
        acts, np.array([1.9]), [(pixel, np.array([], np.int64))], LabelTable(np.array([-1, 1]), 2, (4, 4))
    )
    assert counts["activation_total"][0] == 6
    assert counts["intersection"][0, 1] == 4
    np.testing.assert_allclose(iou(counts, "lite")[0, 1], 2 / 3)


def test_image_level_label_also_in_pixels_counts_once():
    acts = np.ones((1, 1, 2, 2), np.float32)
    pixel = np.array([[[5, 0], [0, 0]]], np.int32)
    counts = count_shard(
        acts, np.array([0.0]), [(pixel, np.array([5]))], LabelTable(np.array([-1] * 5 + [4]), 6, (2, 2))
    )
    assert counts["label_area"][5] == 4
    assert counts["intersection"][0, 5] == 4


def test_bad_segmentations_rejected():
    acts = np.ones((1, 1, 2, 2), np.float32)
    cat = np.array([-1, 0])
    with pytest.raises(DatasetError, match="0..1"):
        count_shard(acts, np.array([0.0]), [(np.full((1, 2, 2), 7, np.int32), [])], LabelTable(cat, 2, (2, 2)))
    with pytest.raises(DatasetError, match="shape"):
        count_shard(acts, np.array([0.0]), [(np.zeros((1, 3, 2), np.int32), [])], LabelTable(cat, 2, (2, 2)))
    with pytest.raises(DatasetError, match="segmentations"):
        count_shard(acts, np.array([0.0]), [], LabelTable(cat, 2, (2, 2)))
    with pytest.raises(ArtifactError, match="thresholds"):
        count_shard(acts, np.array([0.0, 1.0]), [(np.zeros((1, 2, 2), np.int32), [])], LabelTable(cat, 2, (2, 2)))
    with pytest.raises(ConfigError, match="denominator"):
        iou(
            count_shard(acts, np.array([0.0]), [(np.zeros((1, 2, 2), np.int32), [])], LabelTable(cat, 2, (2, 2))), "bau"
        )


# ---------------------------------------------------------------- files and tables


def _write_inputs(tmp_path, acts, thresholds, rows):
    ident = {"dataset": "d", "model": "m", "attack": "clean", "layer": "layer4"}
    store.write_h5(tmp_path / "thr.h5", "thresholds", dict(ident, quantile=0.15), {"thresholds": thresholds})
    arrays = {"rows": np.arange(rows[-1][1]), store.layer_key("layer4"): acts}
    paths = write_shards(tmp_path, "activations", dict(ident, dtype="float32"), arrays, rows, name="act{shard}.h5")
    return ident, paths


def test_one_count_job_counts_every_layer_and_mode(tmp_path):
    # Two layers of one activations file, each under two threshold files (modes): every group
    # equals the brute-force counts of its layer and thresholds, segmentations decoded once.
    a1, t1, segs = tiny_data(seed=2, n=6)
    a2, t2, _ = tiny_data(seed=3, n=6, c=4, map_size=(2, 2))
    decoded = []

    class Counting(StandInDataset):
        def load_segmentation(self, row):
            decoded.append(row)
            return super().load_segmentation(row)

    data = Counting(segs, LABEL_CATEGORY, (8, 8))
    ident = {"dataset": "d", "model": "m", "attack": "fgsm", "shard": 0}
    store.write_h5(
        tmp_path / "act.h5",
        "activations",
        dict(ident, layers=["l1", "l2"]),
        {"rows": np.arange(6), store.layer_key("l1"): a1, store.layer_key("l2"): a2},
    )
    dissections, want = [], {}
    for mode, shift in (("self", 0.0), ("clean", 0.5)):
        for layer, acts, thr in (("l1", a1, t1), ("l2", a2, t2)):
            t_ident = {"dataset": "d", "model": "m", "attack": "fgsm" if mode == "self" else "clean", "layer": layer}
            path = tmp_path / f"thr_{mode}_{layer}.h5"
            store.write_h5(path, "thresholds", dict(t_ident, quantile=0.15), {"thresholds": thr + shift})
            dissections.append({"mode": mode, "layer": layer, "thresholds": path, "threshold_identity": t_ident})
            want[mode, layer] = ref_counts(acts, thr + shift, segs, LABEL_CATEGORY, N_LABELS, (8, 8))
    write_shard_counts(
        tmp_path / "counts.h5",
        activations_path=tmp_path / "act.h5",
        dissections=dissections,
        segmentations_path=None,
        identity=ident,
        dataset=data,
    )
    assert decoded == list(range(6))
    for (mode, layer), ref in want.items():
        got = read_counts(tmp_path / "counts.h5", dict(ident, mode=mode, layer=layer))
        assert int(got["n_images"]) == 6
        for key in COUNT_KEYS:
            np.testing.assert_array_equal(got[key], ref[key])
    with pytest.raises(ArtifactError, match="no counts of self/l3"):
        read_counts(tmp_path / "counts.h5", dict(ident, mode="self", layer="l3"))
    with pytest.raises(ArtifactError, match="attack"):
        read_counts(tmp_path / "counts.h5", dict(ident, attack="clean", mode="self", layer="l1"))


def test_files_tally_and_units(tmp_path):
    acts, thresholds, segs = tiny_data(seed=5, n=7)
    data = StandInDataset(segs, LABEL_CATEGORY, (8, 8))
    ident, act_paths = _write_inputs(tmp_path, acts, thresholds, [(0, 3), (3, 7)])
    count_paths = []
    cident = dict(ident, mode="self")
    for s, path in enumerate(act_paths):
        out = tmp_path / f"counts{s}.h5"
        write_shard_counts(
            out,
            activations_path=path,
            dissections=[
                {"mode": "self", "layer": "layer4", "thresholds": tmp_path / "thr.h5", "threshold_identity": ident}
            ],
            segmentations_path=None,
            identity={k: v for k, v in dict(ident, shard=s).items() if k != "layer"},
            dataset=data,
        )
        count_paths.append(out)
    write_iou(
        tmp_path / "iou.h5",
        tmp_path / "tally.csv",
        count_paths=count_paths,
        dataset_root=None,
        denominator="lite",
        identity=cident,
        dataset=data,
    )
    want = ref_counts(acts, thresholds, segs, LABEL_CATEGORY, N_LABELS, (8, 8))
    with store.open_h5(tmp_path / "iou.h5", "iou", expect=cident) as f:
        for key in COUNT_KEYS:
            np.testing.assert_array_equal(f[key][()], want[key])
        scores = f["iou"][()]
    np.testing.assert_array_equal(scores, ref_iou(want, LABEL_CATEGORY, "lite"))

    tally = pd.read_csv(tmp_path / "tally.csv", keep_default_na=False)
    assert list(tally.columns) == tally_columns()
    assert tally["unit"].tolist() == list(range(1, acts.shape[1] + 1))
    for u in range(acts.shape[1]):
        row = tally.iloc[u]
        best_score = 0.0
        for ci, cat in enumerate(CATEGORIES):
            labels = [lab for lab in range(1, N_LABELS) if LABEL_CATEGORY[lab] == ci]
            top = max(scores[u, labels])
            assert row[f"{cat}-iou"] == pytest.approx(top, abs=0)
            assert row[f"{cat}-activation"] == want["activation_lite"][u, ci]
            if top > 0:
                lab = labels[int(np.argmax(scores[u, labels]))]
                assert row[f"{cat}-label"] == f"label{lab}"
                assert row[f"{cat}-truth"] == want["label_area"][lab]
                assert row[f"{cat}-intersect"] == want["intersection"][u, lab]
            else:
                assert row[f"{cat}-label"] == ""
            best_score = max(best_score, top)
        assert row["score"] == pytest.approx(best_score, abs=0)
    # the dead unit has no concept; tally.csv still names a category, the last, as NetDissect-Lite does
    assert tally.iloc[1]["label"] == "" and tally.iloc[1]["score"] == 0
    assert tally.iloc[1]["category"] == CATEGORIES[-1]

    write_units_table(tmp_path / "units.csv", tmp_path / "iou.h5", 0.04)
    units = pd.read_csv(tmp_path / "units.csv", keep_default_na=False)
    assert list(units.columns) == ["unit", "label", "category", "iou", "detector"]
    assert units["label"].tolist() == tally["label"].tolist()
    alive = tally["score"] > 0
    assert units["category"][alive].tolist() == tally["category"][alive].tolist()
    assert (units["category"][~alive] == "").all()  # the tidy table says "no concept"
    np.testing.assert_array_equal(units["iou"], tally["score"])
    np.testing.assert_array_equal(units["detector"], tally["score"] > 0.04)
    assert units_table(tmp_path / "iou.h5", 0.5)["detector"].sum() == (tally["score"] > 0.5).sum()

    # a counts file from another attack is refused
    with pytest.raises(ArtifactError, match="attack"):
        write_iou(
            tmp_path / "x.h5",
            tmp_path / "x.csv",
            count_paths=count_paths,
            dataset_root=None,
            denominator="lite",
            identity=dict(cident, attack="fgsm"),
            dataset=data,
        )


def test_best_category_breaks_ties_as_netdissect_lite():
    # NetDissect-Lite: bestcat = score_pciou.argsort(axis=0)[::-1][0] over (category, unit) scores.
    rng = np.random.default_rng(3)
    score = rng.choice([0.0, 0.05, 0.1], size=(200, N_CAT))
    score[:4] = 0.0
    score[4:8] = 0.1
    best = np.tile(np.arange(N_CAT), (200, 1))
    label, ci, top = _best_overall(best, score)
    lite = score.T.argsort(axis=0, kind="stable")[::-1][0]
    alive = top > 0
    np.testing.assert_array_equal(ci[alive], lite[alive])
    np.testing.assert_array_equal(top, score.max(axis=1))
    assert (ci[~alive] == -1).all() and (label[~alive] == -1).all()
    assert (lite[~alive] == N_CAT - 1).all()  # what tally.csv names for a unit without a concept


def test_tally_header_equals_netdissect_lite():
    path = REAL / "tally_resnet18_places365_layer4.csv"
    if not path.is_file():
        pytest.skip(f"real NetDissect-Lite tally not found at {path}")
    header = path.read_text().splitlines()[0].split(",")
    assert tally_columns() == header


# ---------------------------------------------------------------- on a real Broden-format dataset


class FakeSnakemake:
    def __init__(self, log, threads=1, **sections):
        self.log = [str(log)]
        self.threads = threads
        for name, values in sections.items():
            setattr(self, name, type("Section", (), values)())


def _run_script(name, snakemake):
    """Run a rule's script with a stand-in `snakemake` object (scripts redirect stdout/stderr)."""
    import runpy
    import sys

    script = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / f"{name}.py"
    saved = sys.stdout, sys.stderr
    try:
        runpy.run_path(str(script), init_globals={"snakemake": snakemake})
    finally:
        sys.stdout, sys.stderr = saved


def test_chain_on_synthetic_broden_through_the_scripts(tiny_broden, tmp_path):
    from advdissect.data import broden

    data = broden.BrodenDataset(tiny_broden)
    rows = data.rows("all")[:12]
    rng = np.random.default_rng(7)
    acts = np.maximum(rng.normal(size=(len(rows), 6, 4, 4)), 0).astype(np.float32)
    ident = {"dataset": "tiny", "model": "m", "attack": "clean", "layer": "conv"}
    paths = []
    for s, (a, b) in enumerate([(0, 7), (7, 12)]):
        path = tmp_path / "acts" / f"{s:04d}.h5"
        store.write_h5(
            path,
            "activations",
            dict(ident, shard=s, dtype="float32"),
            {"rows": rows[a:b], store.layer_key("conv"): acts[a:b]},
        )
        paths.append(path)
    index = tiny_broden / "index.csv"
    log = tmp_path / "log.txt"
    thr = tmp_path / "thr.h5"
    _run_script(
        "thresholds",
        FakeSnakemake(
            log, input={"shards": paths}, output={"thresholds": thr}, params={"quantile": 0.05, "identity": ident}
        ),
    )
    cident = dict(ident, mode="self")
    counts = []
    for s, path in enumerate(paths):
        segs = tmp_path / "segmentations" / f"{s:04d}.h5"
        _run_script(
            "segmentations",
            FakeSnakemake(
                log,
                input={"dataset": index},
                output={"segmentations": segs},
                params={
                    "plan": {"split": "all", "n_images": 12, "shard_size": 7},
                    "identity": {"dataset": "tiny", "shard": s},
                },
                wildcards={"shard": f"{s:04d}"},
            ),
        )
        out = tmp_path / "counts" / f"{s:04d}.h5"
        _run_script(
            "count_shard",
            FakeSnakemake(
                log,
                input={"activations": path, "thresholds": [thr], "segmentations": segs},
                output={"counts": out},
                params={
                    "identity": {"dataset": "tiny", "model": "m", "attack": "clean", "shard": s},
                    "dissections": [{"mode": "self", "layer": "conv", "thresholds": thr, "threshold_identity": ident}],
                    "per_image": s == 0,  # records in one shard only: they are extra arrays, not other counts
                },
            ),
        )
        counts.append(out)
    iou_path, tally_path, units_path = tmp_path / "iou.h5", tmp_path / "tally.csv", tmp_path / "units.csv"
    _run_script(
        "merge_counts",
        FakeSnakemake(
            log,
            input={"counts": counts, "dataset": index},
            output={"iou": iou_path, "tally": tally_path, "units": units_path},
            params={"denominator": "original", "iou_threshold": 0.04, "identity": cident},
        ),
    )

    with store.open_h5(thr, "thresholds", expect=ident) as f:
        thresholds = f["thresholds"][()]
    segs = [data.load_segmentation(int(r)) for r in rows]
    segs = [(s.pixel, s.image_labels) for s in segs]
    want = ref_counts(acts, thresholds, segs, data.label_category, data.n_labels, data.seg_size)
    with store.open_h5(iou_path, "iou", expect=cident) as f:
        for key in COUNT_KEYS:
            np.testing.assert_array_equal(f[key][()], want[key])
        np.testing.assert_array_equal(f["iou"][()], ref_iou(want, data.label_category, "original"))
    tally = pd.read_csv(tally_path, keep_default_na=False)
    assert list(tally.columns) == tally_columns() and len(tally) == 6
    units = pd.read_csv(units_path, keep_default_na=False)
    assert units["label"].tolist() == tally["label"].tolist()


def test_best_concepts_against_brute_force():
    rng = np.random.default_rng(5)
    cat = rng.integers(-1, N_CAT, 40)
    scores = rng.choice([0.0, 0.1, 0.2, 0.3], size=(30, 40))  # many ties
    label, ci, top = best_concepts(scores, cat)
    for u in range(30):
        best = (-1, -1, 0.0)  # label, category, IoU
        for c in range(N_CAT):  # a later category wins a tie across categories (Lite)
            labels = [j for j in range(1, 40) if cat[j] == c]
            if labels:
                j = max(labels, key=lambda j: (scores[u, j], -j))  # the lowest label wins inside one
                if scores[u, j] > 0 and scores[u, j] >= best[2]:
                    best = (j, c, scores[u, j])
        assert (label[u], ci[u], top[u]) == best, u
