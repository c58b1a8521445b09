"""Synthetic Broden generator: reproducible, read back by the reader, every concept small."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from advdissect.data import synthetic
from advdissect.data.broden import CATEGORIES, PIXEL_CATEGORIES, BrodenDataset
from advdissect.data.synthetic import generate
from advdissect.errors import ConfigError

SAMPLES = [
    "index.csv",
    "label.csv",
    "c_part.csv",
    "images/synthetic/train_00000.jpg",
    "images/synthetic/train_00003_object.png",
    "images/synthetic/val_00002_material.png",
]


def _digest(root: Path) -> dict:
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in SAMPLES}


def _all_segmentations(ds: BrodenDataset):
    return [ds.load_segmentation(r) for r in ds.rows()]


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> BrodenDataset:
    """Large enough for stable pixel shares: 360 images at the default 112 px."""
    root = tmp_path_factory.mktemp("synthetic") / "medium"
    generate(root, n_train=240, n_val=120, seed=3)
    return BrodenDataset(root)


def test_same_seed_same_bytes_other_seed_differs(tmp_path, tiny_broden, tiny_broden_spec):
    TINY = tiny_broden_spec
    again = tmp_path / "again"
    generate(again, **TINY)
    assert _digest(again) == _digest(tiny_broden)
    other = tmp_path / "other"
    generate(other, **{**TINY, "seed": 1})
    a, b = _digest(other), _digest(tiny_broden)
    assert a["index.csv"] != b["index.csv"]
    assert a["images/synthetic/train_00000.jpg"] != b["images/synthetic/train_00000.jpg"]


def test_reader_reads_every_category_back(tiny_broden):
    ds = BrodenDataset(tiny_broden)
    assert len(ds) == 40 and len(ds.rows("train")) == 24 and len(ds.rows("val")) == 16
    assert ds.image_size == (64, 64) and ds.seg_size == (32, 32)
    seen = set()
    for seg in _all_segmentations(ds):
        seen.update(CATEGORIES[c] for c in seg.layer_category)
        seen.update(CATEGORIES[ds.label_category[n]] for n in seg.image_labels)
    assert seen == set(CATEGORIES)
    for r in ds.rows():
        assert ds.load_image(r).shape == (64, 64, 3)


def test_label_numbers_and_dual_category(tiny_broden, tiny_broden_spec):
    ds = BrodenDataset(tiny_broden)
    labels = pd.read_csv(tiny_broden / "label.csv")
    listed = set(labels["number"])
    used = set()
    for seg in _all_segmentations(ds):
        used.update(np.unique(seg.pixel).tolist())
        used.update(seg.image_labels.tolist())
    used.discard(0)
    assert used <= listed, "label.csv must list every number used"
    assert max(used) >= 256  # masks need the G channel
    # Rows with two part layers and with two textures exist.
    assert (ds.index["part"].str.count(";") == 1).any()
    assert (ds.index["texture"].str.count(";") == 1).any()
    # knob is an object and a part; its primary category is the c_ file with more coverage.
    coverage = {cat: pd.read_csv(tiny_broden / f"c_{cat}.csv").set_index("number")["coverage"] for cat in CATEGORIES}
    knob = synthetic.vocabulary(tiny_broden_spec["n_classes"]).object["knob"]
    holders = {cat: float(cov[knob]) for cat, cov in coverage.items() if knob in cov.index}
    assert set(holders) == {"object", "part"} and holders["object"] != holders["part"]
    assert CATEGORIES[ds.label_category[knob]] == max(holders, key=holders.get)
    assert "object(" in labels.set_index("number").at[knob, "category"]


def test_c_files_match_the_masks(tiny_broden):
    """frequency / coverage in c_<cat>.csv recomputed from the masks, one image at a time."""
    ds = BrodenDataset(tiny_broden)
    sh, sw = ds.seg_size
    segs = _all_segmentations(ds)
    for cat in CATEGORIES:
        table = pd.read_csv(tiny_broden / f"c_{cat}.csv")
        for number, freq, cov in zip(table["number"], table["frequency"], table["coverage"]):
            f, c = 0, 0.0
            for seg in segs:
                if cat in PIXEL_CATEGORIES:
                    layers = seg.pixel[seg.layer_category == CATEGORIES.index(cat)]
                    pixels = int((layers == number).sum())
                    f += pixels > 0
                    c += pixels / (sh * sw)
                else:
                    present = number in seg.image_labels.tolist()
                    f += present
                    c += present
            assert freq == f and cov == pytest.approx(c, abs=1e-5), (cat, number)


def test_colour_only_on_objects(tiny_broden):
    ds = BrodenDataset(tiny_broden)
    for seg in _all_segmentations(ds):
        cats = seg.layer_category.tolist()
        if CATEGORIES.index("color") in cats:
            color = seg.pixel[cats.index(CATEGORIES.index("color"))]
            obj = seg.pixel[cats.index(CATEGORIES.index("object"))]
            assert not ((color > 0) & (obj == 0)).any()


def test_every_row_is_a_labelled_object_image(medium):
    """No out-of-distribution rows: every image has a class, a scene and its main object."""
    vocab = synthetic.vocabulary(synthetic.MAX_CLASSES)
    class_labels = [vocab.object[c.name] for c in synthetic.CLASSES]
    assert medium.classes().tolist() == class_labels
    for split in ("train", "val"):
        y = medium.class_indices(medium.rows(split))
        assert (y >= 0).all()
        counts = np.bincount(y, minlength=len(class_labels))
        assert counts.max() - counts.min() <= 1  # balanced classes
    for r in medium.rows()[:60]:
        seg = medium.load_segmentation(int(r))
        main = medium.classes()[medium.class_index(int(r))]
        assert (seg.pixel == main).any(), "the class's object is drawn and labelled"
        assert medium.table.scene[r] > 0


def test_classes_differ_in_material_not_only_shape():
    """Every shape signs two classes that differ in material, so the material is needed."""
    by_shape = {}
    for c in synthetic.CLASSES:
        by_shape.setdefault(c.shape, []).append(c)
    assert all(len(v) == 2 and v[0].material != v[1].material for v in by_shape.values())
    assert len({(c.shape, c.material) for c in synthetic.CLASSES}) == len(synthetic.CLASSES)


def test_scene_correlates_with_class_without_defining_it(medium):
    y = medium.class_indices()
    scene = medium.table.scene
    home = np.array([synthetic.SCENE_START + c % synthetic.HOME_SCENES for c in y])
    share = float((scene == home).mean())
    assert 0.5 < share < 0.8  # P_HOME plus chance draws of the home scene
    # every scene seen often enough shows up with several classes
    for s in np.unique(scene):
        if (scene == s).sum() >= 5:
            assert len(np.unique(y[scene == s])) >= 3


def test_regenerate_replaces_and_failure_leaves_nothing(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    small = dict(n_train=4, n_val=2, image_size=32, n_classes=3, seed=0)
    generate(root, **small)
    generate(root, **{**small, "n_train": 5})
    assert len(pd.read_csv(root / "index.csv")) == 7

    def boom(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(synthetic, "write_labels", boom)
    with pytest.raises(RuntimeError):
        generate(tmp_path / "new", **small)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.mark.parametrize(
    "key,value", [("n_train", 0), ("image_size", 16), ("n_classes", 17), ("n_classes", 1), ("seed", -1)]
)
def test_bad_arguments(tmp_path, tiny_broden_spec, key, value):
    with pytest.raises(ConfigError, match=f"synthetic.{key}"):
        generate(tmp_path / "x", **{**tiny_broden_spec, key: value})


def test_refuses_to_replace_a_folder_with_other_files(tmp_path, tiny_broden_spec):
    from advdissect.errors import DatasetError

    root = tmp_path / "mine"
    root.mkdir()
    (root / "thesis.tex").write_text("keep me")
    with pytest.raises(DatasetError, match="thesis.tex"):
        generate(root, **tiny_broden_spec)
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and (root / "thesis.tex").exists()
