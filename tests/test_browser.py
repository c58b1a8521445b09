"""The unit browser: its table, its pictures and, where Chromium is installed, the page in a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from advdissect import store
from advdissect.report import browser
from advdissect.report.top_images import ImageSet, unit_mask

from helpers import write_shards

UNITS = 4
N = 6
SIZE = 16


def units_frame(labels, ious, cut=0.04):
    return pd.DataFrame(
        {
            "unit": np.arange(1, len(labels) + 1),
            "label": labels,
            "category": ["object" if x else "" for x in labels],
            "iou": ious,
            "detector": [i > cut for i in ious],
        }
    )


def test_browser_table_columns_and_status():
    clean = units_frame(["dog", "cat", "sky", ""], [0.2, 0.1, 0.03, 0.0])
    attacked = units_frame(["dog", "car", "sky", "cat"], [0.3, 0.05, 0.05, 0.01])
    frame = browser.browser_table({("clean", "self"): clean, ("fgsm_8", "self"): attacked}, "clean")
    assert list(frame.columns) == [
        "unit",
        "clean label",
        "clean category",
        "clean IoU",
        "clean detector",
        "fgsm_8 self label",
        "fgsm_8 self IoU",
        "fgsm_8 self status",
    ]
    assert frame["fgsm_8 self status"].tolist() == ["kept", "changed", "gained", "none"]


def test_thumbnail_tints_and_outlines_the_mask():
    image = np.zeros((3, 8, 8), np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    pic = np.asarray(browser.thumbnail(image, mask, 8))
    assert pic.shape == (8, 8, 3)
    assert tuple(pic[2, 2]) == tuple(browser.MASK_COLOR.astype(np.uint8))  # outline
    assert pic[3, 3, 0] == round(0.45 * browser.MASK_COLOR[0])  # inside: tinted
    assert (pic[0, 0] == 0).all()  # outside: untouched


def write_set(tmp_path, attack, rng):
    ident = {"dataset": "d", "model": "m", "attack": attack}
    images = rng.integers(0, 256, size=(N, 3, SIZE, SIZE), dtype=np.uint8)
    acts = rng.normal(size=(N, UNITS, 2, 2)).astype(np.float32)
    rows = np.arange(N)
    bounds = [(0, 4), (4, N)]
    img_paths = write_shards(
        tmp_path, "images", ident, {"images": images, "rows": rows}, bounds, name=f"{attack}_img{{shard}}.h5"
    )
    act_paths = write_shards(
        tmp_path,
        "activations",
        ident,
        {store.layer_key("l"): acts, "rows": rows},
        bounds,
        name=f"{attack}_act{{shard}}.h5",
    )
    thr = tmp_path / f"{attack}_thr.h5"
    store.write_h5(thr, "thresholds", dict(ident, layer="l"), {"thresholds": np.quantile(acts, 0.7, axis=(0, 2, 3))})
    return ImageSet("d", "m", "l", attack, tuple(img_paths), tuple(act_paths), thr), acts, images


class Rows(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.imgs, self.in_body = [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "tbody":
            self.in_body = True
        elif tag == "tr" and self.in_body:
            self.rows.append([])
        elif tag == "img":
            self.imgs.append(dict(attrs)["src"])

    def handle_data(self, data):
        if self.in_body and self.rows and data.strip():
            self.rows[-1].append(data.strip())


@pytest.fixture
def page(tmp_path):
    rng = np.random.default_rng(0)
    clean, clean_acts, clean_images = write_set(tmp_path, "clean", rng)
    attacked, _, _ = write_set(tmp_path, "fgsm_8", rng)
    units = {}
    for key, ious in ((("clean", "self"), [0.2, 0.1, 0.05, 0.0]), (("fgsm_8", "self"), [0.1, 0.3, 0.02, 0.06])):
        path = tmp_path / f"{key[0]}_units.csv"
        store.write_csv(path, units_frame(["dog", "cat", "sky", "car"], ious))
        units[key] = path
    out = tmp_path / "browser"
    browser.write_browser(out, [clean, attacked], units, clean_attack="clean", n_images=2, thumb=10)
    return out, clean_acts, clean_images


def test_page_lists_every_unit_with_its_picture(page):
    out, clean_acts, clean_images = page
    parser = Rows()
    parser.feed((out / "index.html").read_text())
    assert [r[0] for r in parser.rows] == ["1", "2", "3", "4"]
    assert parser.imgs == [f"units/{u:04d}.jpg" for u in range(1, UNITS + 1)]
    for src in parser.imgs:
        with Image.open(out / src) as pic:
            assert pic.size == (2 * 2 * 10 + browser.GAP, 10)
    # unit 1's first picture is its top image (largest peak activation) with its mask
    top = int(np.argmax(clean_acts[:, 0].max(axis=(1, 2))))
    with Image.open(out / "units/0001.jpg") as pic:
        first = np.asarray(pic.convert("RGB"), np.float64)[:, :10]
    threshold = np.quantile(clean_acts, 0.7, axis=(0, 2, 3))[0]
    distances = [
        np.abs(first - np.asarray(browser.thumbnail(img, unit_mask(a[0], threshold, (SIZE, SIZE)), 10))).mean()
        for img, a in zip(clean_images, clean_acts)
    ]
    assert int(np.argmin(distances)) == top
    assert not list(out.parent.glob(".browser.*.tmp"))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed")
def test_page_sorts_in_a_real_browser(page):
    out = page[0]
    url = (out / "index.html").as_uri() + "#sort=fgsm_8%20self%20IoU"
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    parser = Rows()
    parser.feed(dom)
    # fgsm_8 IoUs 0.1, 0.3, 0.02, 0.06: sorted largest first by the page's script
    assert [r[0] for r in parser.rows] == ["2", "1", "4", "3"]
    assert re.search(r'data-column="fgsm_8 self IoU"[^>]*aria-sort="descending"', dom)


def test_an_image_set_from_a_jobs_named_files():
    files = {
        "images_fgsm": ["i0.h5", "i1.h5"],
        "activations_fgsm": ["a0.h5", "a1.h5"],
        "thresholds_fgsm": "t.h5",
        "images_clean": ["c.h5"],
    }
    found = ImageSet.from_named(files, {"dataset": "d", "model": "m", "layer": "l", "shard": "0"}, "fgsm")
    assert found == ImageSet("d", "m", "l", "fgsm", ("i0.h5", "i1.h5"), ("a0.h5", "a1.h5"), "t.h5")
    assert found.identity == {"dataset": "d", "model": "m", "attack": "fgsm"}
