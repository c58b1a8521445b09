"""The Broden-shaped generator: Broden's shape, read back by the reader, reproducible."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from advdissect.data import broden_shaped
from advdissect.data.broden import CATEGORIES, PIXEL_CATEGORIES, BrodenDataset
from advdissect.errors import ConfigError

N = 80


@pytest.fixture(scope="module")
def shaped(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shaped") / "set"
    broden_shaped.generate(root, n_train=10, n_val=N - 10, seed=0)
    return root


def _digest(root: Path) -> dict:
    names = ["index.csv", "label.csv", "c_object.csv", "images/generated/val_000003.jpg"]
    names += sorted(str(p.relative_to(root)) for p in (root / "images" / "generated").glob("val_00000*_*.png"))
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in names}


def test_brodens_sizes_and_concept_counts(shaped):
    ds = BrodenDataset(shaped)
    assert len(ds) == N and len(ds.rows("val")) == N - 10
    assert ds.image_size == (224, 224) and ds.seg_size == (112, 112)
    counts = {cat: len(pd.read_csv(shaped / f"c_{cat}.csv")) for cat in CATEGORIES}
    assert counts == {"color": 11, "object": 584, "part": 234, "material": 32, "scene": 468, "texture": 47}
    assert ds.n_labels == 1377  # 1,376 concepts and label 0
    category = pd.read_csv(shaped / "category.csv").set_index("name")
    assert category.loc["texture", "last"] == 1376 and category.loc["material", "first"] > 255


def test_masks_read_back_with_parts_in_layers(shaped):
    """Label numbers above 255 survive R + 256 G; a deeper part layer lies inside the one above."""
    ds = BrodenDataset(shaped)
    part = CATEGORIES.index("part")
    depths, high = [], 0
    for row in ds.rows():
        seg = ds.load_segmentation(int(row))
        assert seg.pixel.shape[1:] == (112, 112)
        high = max(high, int(seg.pixel.max()))
        parts = seg.pixel[seg.layer_category == part]
        depths.append(len(parts))
        for upper, lower in zip(parts[:-1], parts[1:]):
            assert not (lower.astype(bool) & ~upper.astype(bool)).any()
        objects = seg.pixel[seg.layer_category == CATEGORIES.index("object")]
        if len(parts):
            assert objects[0][parts[0] > 0].all()  # parts lie on objects
    assert high > 255 and max(depths) >= 2 and min(depths) == 0


def test_c_files_match_the_masks(shaped):
    """frequency and coverage in c_<cat>.csv recomputed from the masks, image by image."""
    ds = BrodenDataset(shaped)
    segs = [ds.load_segmentation(int(r)) for r in ds.rows()]
    for cat in CATEGORIES:
        table = pd.read_csv(shaped / f"c_{cat}.csv")
        table = table[table["frequency"] > 0].head(20)
        assert len(table) > 0, cat
        for number, freq, cov in zip(table["number"], table["frequency"], table["coverage"]):
            f, c = 0, 0.0
            for seg in segs:
                if cat in PIXEL_CATEGORIES:
                    pixels = int((seg.pixel[seg.layer_category == CATEGORIES.index(cat)] == number).sum())
                    f, c = f + (pixels > 0), c + pixels / 112**2
                else:
                    present = number in seg.image_labels.tolist()
                    f, c = f + present, c + present
            assert freq == f and cov == pytest.approx(c, abs=1e-5), (cat, number)


def test_same_arguments_same_bytes(shaped, tmp_path):
    again = tmp_path / "again"
    broden_shaped.generate(again, n_train=10, n_val=N - 10, seed=0)
    assert _digest(again) == _digest(shaped)
    other = tmp_path / "other"
    broden_shaped.generate(other, n_train=10, n_val=N - 10, seed=1)
    assert (other / "index.csv").read_bytes() != (shaped / "index.csv").read_bytes()


def test_image_kinds_in_brodens_proportions(tmp_path):
    """Texture images carry one texture and a colour mask only; most others a scene."""
    root = tmp_path / "kinds"
    broden_shaped.generate(root, n_train=0, n_val=400, seed=0)
    index = pd.read_csv(root / "index.csv", dtype=str, keep_default_na=False)
    textured = index["texture"] != ""
    assert 0.05 < textured.mean() < 0.15
    assert (index.loc[textured, ["object", "part", "material", "scene"]] == "").all().all()
    scenes = index.loc[~textured, "scene"] != ""
    assert 0.75 < scenes.mean() < 0.95
    layers = index.loc[~textured, "part"].map(lambda s: len([x for x in s.split(";") if x]))
    share = np.bincount(layers, minlength=4)[:4] / len(layers)
    assert share[0] > share[1] > share[2] > 0  # Broden's 0 > 1 > 2 part layers


@pytest.mark.parametrize("key, value", [("n_train", -1), ("n_val", 1.5), ("seed", -2)])
def test_bad_arguments(tmp_path, key, value):
    args = {"n_train": 1, "n_val": 1, "seed": 0, key: value}
    with pytest.raises(ConfigError, match=key):
        broden_shaped.generate(tmp_path / "x", **args)
    with pytest.raises(ConfigError, match="at least 1"):
        broden_shaped.generate(tmp_path / "y", n_train=0, n_val=0)
