"""Broden reader: real index.csv facts, mask decoding, label categories, and every error."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from advdissect.data.broden import (
    CATEGORIES,
    BrodenDataset,
    decode_mask,
    encode_mask,
    install_dataset_dir,
    parse_index,
    shard_rows,
)
from advdissect.errors import ConfigError, DatasetError
from advdissect.specs import ShardPlan

REAL = Path(__file__).resolve().parents[2] / "shared" / "broden-real"
REAL_INDEX = REAL / "index_ade20k_224.csv"
needs_real = pytest.mark.skipif(not REAL_INDEX.is_file(), reason=f"real Broden sample {REAL_INDEX} is absent")

IH, SH = 8, 4


# ---------------------------------------------------------------- a hand-made dataset
def _png(path: Path, labels: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(encode_mask(labels)).save(path)
    return path.name


def _labels(numbers_names: dict[int, str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "number": list(numbers_names),
            "name": list(numbers_names.values()),
            "category": "",
            "frequency": 1,
            "coverage": 1.0,
            "syns": "",
        }
    )


@pytest.fixture
def handmade(tmp_path) -> tuple[Path, dict]:
    """Three rows: one with every kind of layer (labels >= 256, two part layers, two
    textures), one with scene 0 and nothing else, one with an empty scene."""
    root = tmp_path / "ds"
    img_dir = root / "images" / "sub"
    img_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (IH, IH, 3), dtype=np.uint8)).save(img_dir / f"im{i}.png")
    color = np.zeros((SH, SH), int)
    color[0, :2] = 1
    obj = np.zeros((SH, SH), int)
    obj[1:, 1:] = 300
    obj[0, 3] = 21
    part1 = np.zeros((SH, SH), int)
    part1[1, 1] = 20
    part2 = np.zeros((SH, SH), int)
    part2[2, 2] = 41
    part2[3, 3] = 20
    material = np.zeros((IH, IH), int)
    material[:, :4] = 513  # image-size mask: resized to (SH, SH)
    for name, arr in (("c", color), ("o", obj), ("p1", part1), ("p2", part2), ("m", material)):
        _png(img_dir / f"im0_{name}.png", arr)
    index = pd.DataFrame(
        [
            [
                "sub/im0.png",
                "train",
                IH,
                IH,
                SH,
                SH,
                "sub/im0_c.png",
                "sub/im0_o.png",
                "sub/im0_p1.png;sub/im0_p2.png",
                "sub/im0_m.png",
                "5",
                "7;8",
            ],
            ["sub/im1.png", "val", IH, IH, SH, SH, "", "", "", "", "0", ""],
            ["sub/im2.png", "train", IH, IH, SH, SH, "", "", "", "", "", "7"],
        ],
        columns=["image", "split", "ih", "iw", "sh", "sw", *CATEGORIES],
    )
    index.to_csv(root / "index.csv", index=False)
    labels = {
        1: "red",
        5: "street",
        7: "striped",
        8: "dotted",
        20: "wheel",
        21: "door",
        41: "leg",
        300: "car",
        513: "wood",
    }
    _labels(labels).to_csv(root / "label.csv", index=False)
    # wheel (20) is in object and part, mostly a part; door (21) mostly an object.
    c_files = {
        "color": [(1, 0.3)],
        "object": [(20, 0.5), (21, 3.0), (300, 1.0)],
        "part": [(20, 2.0), (21, 0.1), (41, 0.2)],
        "material": [(513, 0.7)],
        "scene": [(5, 1.0)],
        "texture": [(7, 2.0), (8, 1.0)],
    }
    for cat, entries in c_files.items():
        pd.DataFrame(
            {
                "code": range(1, len(entries) + 1),
                "number": [n for n, _ in entries],
                "name": [labels[n] for n, _ in entries],
                "frequency": 1,
                "coverage": [c for _, c in entries],
            }
        ).to_csv(root / f"c_{cat}.csv", index=False)
    pd.DataFrame({"name": list(c_files), "first": 0, "last": 0, "count": 1, "frequency": 1}).to_csv(
        root / "category.csv", index=False
    )
    truth = {"color": color, "object": obj, "part1": part1, "part2": part2, "material": material[::2, ::2]}
    return root, truth


def _edit_index(root: Path, row: int, column: str, value) -> None:
    index = pd.read_csv(root / "index.csv", dtype=str, keep_default_na=False)
    index.loc[row, column] = value
    index.to_csv(root / "index.csv", index=False)


# ---------------------------------------------------------------- real index facts
@needs_real
def test_real_ade20k_index_facts():
    start = time.perf_counter()
    table = parse_index(REAL_INDEX)
    elapsed = time.perf_counter() - start
    assert len(table) == 22_210
    assert (table.scene > 0).sum() == 17_746
    assert (table.scene == 0).sum() == 1_987
    assert (table.scene == -1).sum() == 2_477
    assert np.bincount(table.n_layers["part"]).tolist() == [10_650, 7_307, 4_079, 174]
    assert len(np.unique(table.scene[table.scene > 0])) == 468
    assert table.image_size == (224, 224) and table.seg_size == (112, 112)
    assert elapsed < 10  # about 0.4 s here; generous for a busy machine


@needs_real
def test_real_index_through_dataset(tmp_path):
    shutil.copy(REAL_INDEX, tmp_path / "index.csv")
    scenes = np.unique(parse_index(REAL_INDEX).scene)
    scenes = scenes[scenes > 0]
    _labels({int(n): f"s{n}" for n in scenes}).to_csv(tmp_path / "label.csv", index=False)
    pd.DataFrame({"name": ["scene"], "first": 0, "last": 0, "count": 1, "frequency": 1}).to_csv(
        tmp_path / "category.csv", index=False
    )
    pd.DataFrame(
        {"code": range(1, len(scenes) + 1), "number": scenes, "name": "", "frequency": 1, "coverage": 1.0}
    ).to_csv(tmp_path / "c_scene.csv", index=False)
    ds = BrodenDataset(tmp_path)
    assert len(ds.classes()) == 468
    classes = ds.class_indices()
    assert (classes >= 0).sum() == 17_746
    assert (ds.label_category[scenes] == CATEGORIES.index("scene")).all()
    assert len(ds.rows("train")) + len(ds.rows("val")) == len(ds) == 22_210
    # Row paths are relative to <root>/images: ADE20K images live in images/ade20k/.
    with pytest.raises(DatasetError, match=r"images/ade20k/ADE_train_00003891\.jpg is missing"):
        ds.load_image(0)


# ---------------------------------------------------------------- masks
def test_decode_mask_matches_brute_force_and_round_trips():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 65536, size=(5, 7))
    labels[0, 0] = 256
    labels[0, 1] = 255
    rgb = encode_mask(labels)
    assert rgb.dtype == np.uint8 and rgb.shape == (5, 7, 3)
    brute = np.array([[int(rgb[i, j, 0]) + 256 * int(rgb[i, j, 1]) for j in range(7)] for i in range(5)])
    np.testing.assert_array_equal(decode_mask(rgb), brute)
    np.testing.assert_array_equal(decode_mask(rgb), labels)
    assert decode_mask(rgb).dtype == np.int32
    assert tuple(rgb[0, 0]) == (0, 1, 0)
    with pytest.raises(ValueError):
        encode_mask(np.array([[65536]]))


def test_segmentation_layers_and_image_labels(handmade):
    root, truth = handmade
    ds = BrodenDataset(root)
    assert ds.n_labels == 514
    assert ds.image_size == (IH, IH) and ds.seg_size == (SH, SH)
    seg = ds.load_segmentation(0)
    assert seg.pixel.dtype == np.int32 and seg.pixel.shape == (5, SH, SH)
    assert [CATEGORIES[c] for c in seg.layer_category] == ["color", "object", "part", "part", "material"]
    for layer, key in zip(seg.pixel, ("color", "object", "part1", "part2", "material")):
        np.testing.assert_array_equal(layer, truth[key])
    assert seg.image_labels.dtype == np.int64
    assert seg.image_labels.tolist() == [5, 7, 8]  # scene, then both textures
    empty = ds.load_segmentation(1)
    assert empty.pixel.shape == (0, SH, SH) and empty.image_labels.tolist() == []  # scene 0 dropped
    assert ds.load_segmentation(2).image_labels.tolist() == [7]
    assert ds.load_image(0).shape == (IH, IH, 3)


def test_classes_and_rows(handmade):
    ds = BrodenDataset(handmade[0])
    assert ds.classes().tolist() == [5]  # no class column: the scene is the class
    assert [ds.class_index(r) for r in range(3)] == [0, -1, -1]
    assert ds.rows("train").tolist() == [0, 2]
    assert ds.rows("val").tolist() == [1]
    assert ds.rows().tolist() == [0, 1, 2]
    with pytest.raises(ConfigError, match="split must be one of"):
        ds.rows("test")


def test_class_column_gives_the_classes(handmade):
    root = handmade[0]
    index = pd.read_csv(root / "index.csv", dtype=str, keep_default_na=False)
    index["class"] = ["300", "", "21"]  # object labels; the val row has no class
    index.to_csv(root / "index.csv", index=False)
    ds = BrodenDataset(root)
    assert ds.classes().tolist() == [21, 300]
    assert ds.class_indices().tolist() == [1, -1, 0]
    index["class"] = ["300", "", "999"]
    index.to_csv(root / "index.csv", index=False)
    with pytest.raises(DatasetError, match="class 999 is not in"):
        BrodenDataset(root)


def test_primary_category_is_largest_coverage(handmade):
    ds = BrodenDataset(handmade[0])
    cat = {name: CATEGORIES[c] if c >= 0 else None for name, c in zip(ds.label_names, ds.label_category)}
    assert cat["wheel"] == "part"  # object 0.5 < part 2.0
    assert cat["door"] == "object"  # object 3.0 > part 0.1
    assert cat["car"] == "object" and cat["wood"] == "material" and cat["striped"] == "texture"
    assert ds.label_category[0] == -1 and ds.label_category[2] == -1  # unlabelled / unused number
    assert ds.label_names[300] == "car" and ds.label_names[2] == ""


def test_image_resized_to_index_size(handmade):
    root, _ = handmade
    Image.fromarray(np.full((5, 11, 3), 77, np.uint8)).save(root / "images" / "sub" / "im1.png")
    img = BrodenDataset(root).load_image(1)
    assert img.shape == (IH, IH, 3) and (img == 77).all()


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("name", ["index.csv", "label.csv", "category.csv", "c_object.csv"])
def test_missing_csv(handmade, name):
    root, _ = handmade
    (root / name).unlink()
    with pytest.raises(DatasetError, match=rf"{name}: missing"):
        BrodenDataset(root)


def test_missing_image_and_mask(handmade):
    root, _ = handmade
    (root / "images" / "sub" / "im2.png").unlink()
    (root / "images" / "sub" / "im0_p2.png").unlink()
    ds = BrodenDataset(root)
    with pytest.raises(DatasetError, match=r"row 2 \(line 4, image 'sub/im2.png'\): file .*im2.png is missing"):
        ds.load_image(2)
    with pytest.raises(DatasetError, match=r"row 0 .*im0_p2.png is missing"):
        ds.load_segmentation(0)


def test_truncated_image_and_mask(handmade):
    root, _ = handmade
    for name in ("im0.png", "im0_o.png"):
        path = root / "images" / "sub" / name
        path.write_bytes(path.read_bytes()[:40])
    ds = BrodenDataset(root)
    with pytest.raises(DatasetError, match=r"row 0 .*image .*im0.png cannot be read"):
        ds.load_image(0)
    with pytest.raises(DatasetError, match=r"row 0 .*mask .*im0_o.png cannot be read"):
        ds.load_segmentation(0)


def test_truncated_jpeg(handmade):
    root, _ = handmade
    path = root / "images" / "sub" / "t.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-300])
    _edit_index(root, 2, "image", "sub/t.jpg")
    with pytest.raises(DatasetError, match=r"t.jpg cannot be read"):
        BrodenDataset(root).load_image(2)


def test_a_jpeg_with_its_second_half_zeroed_is_refused(handmade):
    root, _ = handmade
    path = root / "images" / "sub" / "z.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + bytes(len(data) - len(data) // 2))
    with Image.open(path) as im:
        im.load()  # PIL itself decodes it, making up the second half
    _edit_index(root, 2, "image", "sub/z.jpg")
    with pytest.raises(
        DatasetError, match=r"row 2 \(line 4, image 'sub/z.jpg'\): image .*z.jpg cannot be read \(.*end-of-image"
    ):
        BrodenDataset(root).load_image(2)


def test_a_whole_jpeg_is_read(handmade):
    root, _ = handmade
    pixels = np.random.default_rng(0).integers(0, 255, (IH, IH, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "images" / "sub" / "w.jpg", quality=95)
    _edit_index(root, 2, "image", "sub/w.jpg")
    with Image.open(root / "images" / "sub" / "w.jpg") as im:
        assert np.array_equal(BrodenDataset(root).load_image(2), np.asarray(im.convert("RGB")))


def test_a_decoder_warning_is_an_error_naming_row_and_file(handmade, monkeypatch):
    root, _ = handmade
    # PIL warns (DecompressionBombWarning) above MAX_IMAGE_PIXELS and refuses above twice that.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", IH * IH - 1)
    ds = BrodenDataset(root)
    with pytest.raises(DatasetError, match=r"row 0 \(line 2, image 'sub/im0.png'\): image .*im0.png cannot be read"):
        ds.load_image(0)
    with pytest.raises(DatasetError, match=r"row 0 .*: mask .*im0_m.png cannot be read \(Image size"):
        ds.load_segmentation(0)


def test_mask_of_wrong_size(handmade):
    root, _ = handmade
    _png(root / "images" / "sub" / "im0_c.png", np.zeros((SH, SH + 1), int))
    with pytest.raises(
        DatasetError,
        match=r"im0_c.png is 5x4 .*expected the segmentation size 4x4 "
        r"or the image size 8x8",
    ):
        BrodenDataset(root).load_segmentation(0)


def test_label_absent_from_label_csv(handmade):
    root, _ = handmade
    obj = np.zeros((SH, SH), int)
    obj[0, 0] = 999
    _png(root / "images" / "sub" / "im0_o.png", obj)
    with pytest.raises(DatasetError, match=r"im0_o.png holds label number 999, which is not in .*label.csv"):
        BrodenDataset(root).load_segmentation(0)
    _edit_index(root, 2, "texture", "7;77")
    with pytest.raises(DatasetError, match=r"row 2 .*label number 77 is not in .*label.csv"):
        BrodenDataset(root)


def test_empty_index(handmade):
    root, _ = handmade
    (root / "index.csv").write_text("image,split,ih,iw,sh,sw,color,object,part,material,scene,texture\n")
    with pytest.raises(DatasetError, match=r"index.csv: the index has no rows"):
        BrodenDataset(root)


@pytest.mark.parametrize(
    "column,value",
    [
        ("image", "../outside.png"),
        ("image", "/etc/passwd"),
        ("part", "sub/im0_p1.png;sub/../../x.png"),
        ("color", "C:\\x.png"),
    ],
)
def test_paths_that_escape_are_refused(handmade, column, value):
    root, _ = handmade
    _edit_index(root, 1, column, value)
    with pytest.raises(DatasetError, match=r"row 1 .*leaves the dataset's images/ folder"):
        BrodenDataset(root)


def test_malformed_cells(handmade):
    root, _ = handmade
    _edit_index(root, 1, "scene", "3;4")
    with pytest.raises(DatasetError, match="a scene cell holds at most one number"):
        BrodenDataset(root)
    _edit_index(root, 1, "scene", "x.png")
    with pytest.raises(DatasetError, match="scene items must be label numbers"):
        BrodenDataset(root)
    _edit_index(root, 1, "scene", "")
    _edit_index(root, 1, "sh", "5")
    with pytest.raises(DatasetError, match=r"row 1 .*\(sh, sw\) = \(5, 4\) differs"):
        BrodenDataset(root)


# ---------------------------------------------------------------- shards
def test_shard_plan_covers_rows_exactly_once(handmade):
    ds = BrodenDataset(handmade[0])
    parts = [shard_rows(ds, ShardPlan("all", 3, 2), s) for s in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), ds.rows("all"))
    assert shard_rows(ds, ShardPlan("all", 2, 1), 1).tolist() == ds.rows("all")[1:2].tolist()
    assert shard_rows(ds, ShardPlan("all", 2, 3), 0).tolist() == ds.rows("all")[:2].tolist()
    with pytest.raises(ConfigError, match="shard 2 does not exist"):
        shard_rows(ds, ShardPlan("all", 3, 2), 2)
    with pytest.raises(ConfigError, match="has 3 images, fewer than its n_images=4"):
        shard_rows(ds, ShardPlan("all", 4, 2), 0)


def test_install_dataset_dir_replaces_only_dataset_dirs(tmp_path):
    dest = tmp_path / "data"
    for i in range(2):
        built = tmp_path / f"b{i}"
        (built / "images").mkdir(parents=True)
        (built / "index.csv").write_text(str(i))
        install_dataset_dir(built, dest)
        assert (dest / "index.csv").read_text() == str(i) and not built.exists()
    (dest / "notes.txt").write_text("mine")
    built = tmp_path / "b2"
    built.mkdir()
    with pytest.raises(DatasetError, match="notes.txt"):
        install_dataset_dir(built, dest)
    assert (dest / "notes.txt").exists()


def test_numeric_items_in_pixel_categories_and_messy_cells(handmade):
    root, truth = handmade
    _edit_index(root, 1, "object", "21")  # a number in a pixel category labels the whole image
    _edit_index(root, 0, "part", " sub/im0_p1.png; ;sub/im0_p2.png; ")
    ds = BrodenDataset(root)
    seg = ds.load_segmentation(1)
    assert seg.pixel.shape == (1, SH, SH) and (seg.pixel == 21).all()
    assert ds.table.n_layers["part"].tolist() == [2, 0, 0]
    np.testing.assert_array_equal(ds.load_segmentation(0).pixel[3], truth["part2"])
    _edit_index(root, 1, "object", "21;999")
    with pytest.raises(DatasetError, match=r"row 1 .*label number 999 is not in"):
        BrodenDataset(root)
