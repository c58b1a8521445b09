"""Figures on tiny synthetic inputs: each writes a non-empty PNG (and SVG); formulas vs brute force."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from advdissect import store
from advdissect.dissect import ablation, tally
from advdissect.errors import ConfigError
from advdissect.report import eps_sweep, figures, style, tables, top_images, training_figures
from advdissect.report import unit_pictures as pictures
from advdissect.report.top_images import ImageSet

from helpers import ref_upsample, write_shards

REPO = Path(__file__).resolve().parents[1]

# The hand-built units of test_tables, loaded by path so this works under any pytest import mode.
_spec = importlib.util.spec_from_file_location("_tables_examples", Path(__file__).with_name("test_tables.py"))
_examples = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_examples)
CLEAN_UNITS, FGSM_CLEAN_UNITS, FGSM_SELF_UNITS = (
    _examples.CLEAN_UNITS,
    _examples.FGSM_CLEAN_UNITS,
    _examples.FGSM_SELF_UNITS,
)
training_inputs, write_units = _examples.training_inputs, _examples.write_units
entries = _examples.entries  # the same three hand-built units tables, as a fixture
STYLE = {"dpi": 60}


def assert_images(*paths):
    for p in paths:
        p = Path(p)
        assert p.exists() and p.stat().st_size > 0, p
        head = p.read_bytes()[:8]
        if p.suffix == ".png":
            assert head == b"\x89PNG\r\n\x1a\n"
        else:
            assert b"<svg" in p.read_bytes()[:2000]
    # Atomic writes leave no temporary files behind.
    assert not list(Path(paths[0]).parent.glob(".*.tmp"))


# --------------------------------------------------------------------------- colours


def test_category_palette_covers_every_category_with_distinct_colours():
    assert set(style.CATEGORY_COLORS) == set(tables.CATEGORY_ORDER)
    assert len(set(style.CATEGORY_COLORS.values())) == 6
    assert style.category_color("object") == style.CATEGORY_COLORS["object"]


def test_every_category_colour_in_figures_comes_from_the_one_dict():
    # No report code may spell a category colour itself: each goes through category_color().
    sources = [p.read_text() for p in sorted((REPO / "advdissect" / "report").glob("*.py"))]
    dicts = [
        n
        for source in sources
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Dict)
        and {getattr(k, "value", None) for k in n.keys} >= {"object", "scene"}
        and any(str(getattr(v, "value", "")).startswith("#") for v in n.values)
    ]
    assert len(dicts) == 1
    assert sum(source.count("CATEGORY_COLORS.get(") for source in sources) == 1


def test_detector_bars_use_category_colours(entries, tmp_path):
    seen = {}
    orig = figures.save_figure

    def spy(fig, png=None, svg=None, dpi=150):
        seen["fig"] = fig
        orig(fig, png, svg, dpi)

    figures.save_figure = spy
    try:
        figures.detector_figure(entries, tmp_path / "d.png", tmp_path / "d.svg", STYLE)
    finally:
        figures.save_figure = orig
    allowed = {style.CATEGORY_COLORS[c].lower() for c in style.CATEGORY_COLORS}
    import matplotlib.colors as mcolors

    bars = [p for ax in seen["fig"].axes for p in ax.patches]
    assert bars
    assert {mcolors.to_hex(p.get_facecolor()).lower() for p in bars} <= allowed


# --------------------------------------------------------------------------- detector figure


def test_detector_figure_writes_png_and_svg(entries, tmp_path):
    counts = figures.detector_figure(entries, tmp_path / "det.png", tmp_path / "det.svg", STYLE)
    assert_images(tmp_path / "det.png", tmp_path / "det.svg")
    # The clean set is drawn under both threshold modes.
    assert set(counts.loc[counts.attack == "clean", "threshold_mode"]) == {"self", "clean"}
    dog = counts[(counts.attack == "clean") & (counts.label == "dog")]
    assert set(dog.detectors) == {2}


def test_detector_figure_top_concepts_and_many_labels(tmp_path):
    rows = [
        (u, f"concept number {u:03d} with a long name", tables.CATEGORY_ORDER[u % 6], 0.1, True) for u in range(1, 81)
    ]
    e = [
        {
            "dataset": "syn",
            "model": "m",
            "layer": "l",
            "attack": "clean",
            "mode": "self",
            "path": write_units(tmp_path / "many.csv", rows),
        }
    ]
    order, n_all = figures._concept_order(figures.detector_counts(e), 40)
    assert n_all == 80 and len(order) == 40
    cats = [c for _, c in order]
    assert cats == sorted(cats, key=tables.CATEGORY_ORDER.index)
    figures.detector_figure(e, tmp_path / "m.png", tmp_path / "m.svg", STYLE, top_n=40)
    assert_images(tmp_path / "m.png", tmp_path / "m.svg")
    assert "top 40 of 80 concepts" in (tmp_path / "m.svg").read_text()


def test_detector_figure_without_detectors(tmp_path):
    e = [
        {
            "dataset": "syn",
            "model": "m",
            "layer": "l",
            "attack": "clean",
            "mode": "self",
            "path": write_units(tmp_path / "none.csv", [(1, "", "", 0.0, False)]),
        }
    ]
    figures.detector_figure(e, tmp_path / "n.png", tmp_path / "n.svg", STYLE)
    assert_images(tmp_path / "n.png", tmp_path / "n.svg")


def test_style_keys_are_checked():
    with pytest.raises(ConfigError, match="colour"):
        style.resolve_style({"colour": "red"})


# --------------------------------------------------------------------------- drift figure


def test_concept_drift_outputs(entries, tmp_path):
    summary = figures.write_concept_drift(
        entries, tmp_path / "u.csv", tmp_path / "s.csv", tmp_path / "dr.png", tmp_path / "dr.svg", STYLE
    )
    assert len(summary) == 2
    assert_images(tmp_path / "dr.png", tmp_path / "dr.svg")
    assert len(pd.read_csv(tmp_path / "u.csv")) == 10


# --------------------------------------------------------------------------- ε sweep


def sweep_inputs(tmp_path):
    stats = [
        ("clean", "clean", 0.0, 1.0, 0.8),
        ("fgsm_2", "fgsm", 2 / 255, 0.3, 0.25),
        ("fgsm_4", "fgsm", 4 / 255, 0.1, 0.1),
        ("noise_2", "noise", 2 / 255, 0.99, 0.79),
        ("noise_4", "noise", 4 / 255, 0.95, 0.77),
    ]
    attacks = pd.DataFrame(
        [
            {
                "dataset": "syn",
                "model": "r18",
                "attack": a,
                "method": m,
                "eps": e,
                "n_images": 10,
                "agreement": ag,
                "success_rate": 1 - ag,
                "linf_max": e,
                "l2_mean": e,
                "clean_accuracy": 0.8,
                "adversarial_accuracy": acc,
            }
            for a, m, e, ag, acc in stats
        ]
    )
    t2 = []
    for i, (a, *_rest) in enumerate(stats):
        for mode in ("self", "clean"):
            t2.append(
                {
                    "dataset": "syn",
                    "model": "r18",
                    "layer": "layer3",
                    "attack": a,
                    "threshold_mode": mode,
                    "category": "all",
                    "units": 10,
                    "detectors": 5 - i,
                    "ratio_percent": 10.0 * (5 - i),
                    "concepts": 2,
                    "ci_low_percent": 10.0 * (5 - i) - 5.0,
                    "ci_high_percent": 10.0 * (5 - i) + 5.0,
                }
            )
    attacks.to_csv(tmp_path / "attacks.csv", index=False)
    pd.DataFrame(t2).to_csv(tmp_path / "table2.csv", index=False)
    return pd.DataFrame(t2), attacks


def test_eps_sweep_data_puts_clean_at_zero_in_every_family(tmp_path):
    t2, attacks = sweep_inputs(tmp_path)
    data = eps_sweep.eps_sweep_data(t2, attacks, "syn", "r18", "layer3")
    assert set(data.family) == {"fgsm", "noise"}
    for fam in ("fgsm", "noise"):
        zero = data[(data.family == fam) & (data.eps == 0.0)]
        assert set(zero.attack) == {"clean"} and set(zero.threshold_mode) == {"self", "clean"}
    fgsm = data[(data.family == "fgsm") & (data.threshold_mode == "self")]
    assert list(fgsm.eps_255.round(6)) == [0.0, 2.0, 4.0]
    assert list(fgsm.ratio_percent) == [50.0, 40.0, 30.0]


def test_eps_sweep_leaves_out_attacks_without_eps(tmp_path):
    # DeepFool and C&W have no ε: attacks.csv leaves it empty, and the sweep leaves them out.
    t2, attacks = sweep_inputs(tmp_path)
    extra = attacks.iloc[[1]].assign(attack="deepfool", method="deepfool", eps=np.nan)
    attacks = pd.concat([attacks, extra], ignore_index=True)
    t2 = pd.concat([t2, t2.loc[t2.attack == "fgsm_2"].assign(attack="deepfool")], ignore_index=True)
    attacks.to_csv(tmp_path / "attacks.csv", index=False)
    t2.to_csv(tmp_path / "table2.csv", index=False)
    data = eps_sweep.eps_sweep_data(t2, pd.read_csv(tmp_path / "attacks.csv"), "syn", "r18", "layer3")
    assert set(data.family) == {"fgsm", "noise"} and "deepfool" not in set(data.attack)
    only_l2 = attacks.loc[attacks.method.isin(["clean", "deepfool"])]
    alone = eps_sweep.eps_sweep_data(t2.loc[t2.attack.isin(only_l2.attack)], only_l2, "syn", "r18", "layer3")
    assert set(alone.family) == {"clean"} and set(alone.attack) == {"clean"}
    eps_sweep.write_eps_sweeps(
        tmp_path / "table2.csv",
        tmp_path / "attacks.csv",
        [("syn", "r18", "layer3")],
        [tmp_path / "eps.png"],
        [tmp_path / "eps.svg"],
        STYLE,
    )
    assert_images(tmp_path / "eps.png", tmp_path / "eps.svg")


def test_eps_sweep_figure(tmp_path):
    sweep_inputs(tmp_path)
    eps_sweep.write_eps_sweeps(
        tmp_path / "table2.csv",
        tmp_path / "attacks.csv",
        [("syn", "r18", "layer3")],
        [tmp_path / "eps.png"],
        [tmp_path / "eps.svg"],
        STYLE,
    )
    assert_images(tmp_path / "eps.png", tmp_path / "eps.svg")


def test_iou_sweep_table_and_figure(tmp_path):
    rng = np.random.default_rng(0)
    entries = []
    for attack, mode in (("clean", "self"), ("fgsm_2", "self"), ("fgsm_2", "clean")):
        path = tmp_path / f"{attack}_{mode}.csv"
        iou = rng.uniform(0.0, 0.25, 20)
        units = pd.DataFrame(
            {"unit": range(1, 21), "label": "dog", "category": "object", "iou": iou, "detector": iou > 0.04}
        )
        store.write_csv(path, units)
        entries.append(
            {"dataset": "syn", "model": "r18", "layer": "layer3", "attack": attack, "mode": mode, "path": path}
        )
    sweep = figures.write_iou_sweep(
        entries, tmp_path / "s.csv", tmp_path / "s.png", tmp_path / "s.svg", iou_threshold=0.04, style=STYLE
    )
    assert_images(tmp_path / "s.png", tmp_path / "s.svg")
    assert len(sweep) == 4 * len(tables.IOU_CUTS)  # clean under both modes
    pd.testing.assert_frame_equal(tables.read_summary_csv(tmp_path / "s.csv"), sweep, check_dtype=False)


# --------------------------------------------------------------------------- training figures


def test_training_summary_outputs(tmp_path):
    models_df, attacks_df, t2 = training_inputs()
    models_df.to_csv(tmp_path / "models.csv", index=False)
    attacks_df.to_csv(tmp_path / "attacks.csv", index=False)
    t2.to_csv(tmp_path / "table2.csv", index=False)
    hist = []
    for name, terms in (("std", ["ce_clean"]), ("atda", ["ce_clean", "ce_adv", "coral", "mmd"])):
        h = pd.DataFrame({"epoch": [1, 2, 3]})
        for t in terms:
            h[t] = [1.0, 0.7, 0.5]
        h["train_accuracy"] = [0.3, 0.5, 0.6]
        h["val_accuracy"] = [0.2, 0.4, 0.5]
        h["seconds"] = [1.0, 1.0, 1.0]
        h.to_csv(tmp_path / f"{name}.csv", index=False)
        hist.append(tmp_path / f"{name}.csv")
    spec = {"std": {"arch": "resnet18", "method": "standard"}, "atda": {"arch": "resnet18", "method": "atda"}}
    out = {k: tmp_path / f"{k}" for k in ("table.csv", "cmp.png", "cmp.svg", "lc.png", "lc.svg")}
    inputs = training_figures.TrainingInputs(
        models_csv=tmp_path / "models.csv",
        attacks_csv=tmp_path / "attacks.csv",
        table2_csv=tmp_path / "table2.csv",
        histories=tuple(hist),
    )
    outputs = training_figures.TrainingOutputs(
        table=out["table.csv"],
        png=out["cmp.png"],
        svg=out["cmp.svg"],
        curves_png=out["lc.png"],
        curves_svg=out["lc.svg"],
    )
    frame = training_figures.write_training_summary(inputs, spec, outputs, style=STYLE)
    assert len(frame) == 2
    assert_images(out["cmp.png"], out["cmp.svg"], out["lc.png"], out["lc.svg"])
    back = pd.read_csv(out["table.csv"])
    assert list(back.columns[:5]) == ["arch", "method", "clean_accuracy", "attack", "adversarial_accuracy"]
    assert "coral" in out["lc.svg"].read_text()
    with pytest.raises(ConfigError, match="order"):
        training_figures.write_training_summary(dataclasses.replace(inputs, histories=tuple(hist[:1])), spec, outputs)


def test_training_figure_without_rows(tmp_path):
    empty = pd.DataFrame(columns=tables.TRAINING_COLUMNS)
    training_figures.training_figure(empty, tmp_path / "e.png", tmp_path / "e.svg", STYLE)
    training_figures.learning_curves_figure({}, tmp_path / "l.png", tmp_path / "l.svg", STYLE)
    assert_images(tmp_path / "e.png", tmp_path / "e.svg", tmp_path / "l.png", tmp_path / "l.svg")


# --------------------------------------------------------------------------- upsampling and masks


def test_unit_mask_is_thresholded_upsample():
    a = np.array([[0.0, 1.0], [2.0, 3.0]])
    mask = top_images.unit_mask(a, 1.5, (4, 4))
    np.testing.assert_array_equal(mask, ref_upsample(a, 4, 4) > 1.5)


def test_unit_mask_is_the_counted_mask():
    # The pictures show the pixels the IoU counts used, to the last pixel.
    from advdissect.dissect.masks import UpsamplePlan, active_pixels

    rng = np.random.default_rng(4)
    maps = rng.normal(size=(6, 5, 7, 7)).astype(np.float32)
    thresholds = np.quantile(maps, 0.8, axis=(0, 2, 3)).astype(np.float64)
    # Thresholds just under an upsampled value: float64 says active, the float32 count may not.
    from advdissect.dissect.masks import axis_weights

    i0, i1, l0, l1 = axis_weights(7, 112)
    for u in range(5):
        row = l0[50] * maps[0, u, i0[50]] + l1[50] * maps[0, u, i1[50]]
        thresholds[u] = l0[61] * row[i0[61]] + l1[61] * row[i1[61]] - 1e-12
    plan = UpsamplePlan((7, 7), (112, 112))
    pairs, pixels = active_pixels(maps, thresholds, plan)
    counted = np.zeros((6 * 5, 112 * 112), bool)
    counted[pairs, pixels] = True
    for i in range(6):
        for u in range(5):
            shown = top_images.unit_mask(maps[i, u], float(thresholds[u]), (112, 112))
            np.testing.assert_array_equal(shown.ravel(), counted[i * 5 + u], err_msg=f"image {i}, unit {u}")


# --------------------------------------------------------------------------- unit pictures

N, C, H, W, h, w = 6, 5, 16, 16, 4, 4


def make_shards(tmp_path, attack, seed):
    rng = np.random.default_rng(seed)
    base = tmp_path / attack
    rows_all = np.arange(10, 10 + N)
    acts_all = rng.normal(size=(N, C, h, w)).astype(np.float32)
    bounds = [(0, 4), (4, N)]
    images = np.concatenate([rng.integers(0, 256, size=(b - a, 3, H, W), dtype=np.uint8) for a, b in bounds])
    ident = {"dataset": "syn", "model": "r18", "attack": attack}
    arrays = {"images": images, "rows": rows_all, "labels": np.zeros(N, np.int64)}
    img_paths = write_shards(base, "images", ident, arrays, bounds, name="images/{shard:04d}.h5")
    arrays = {store.layer_key("layer3"): acts_all, "rows": rows_all}
    act_paths = write_shards(base, "activations", ident, arrays, bounds, name="activations/{shard:04d}.h5")
    thr = base / "thresholds/layer3.h5"
    store.write_h5(
        thr,
        "thresholds",
        {"dataset": "syn", "model": "r18", "attack": attack, "layer": "layer3"},
        {"thresholds": np.full(C, 0.5, np.float32)},
        chunk_rows=False,
    )
    return [str(p) for p in img_paths], [str(p) for p in act_paths], str(thr), rows_all, acts_all


def test_top_activating_matches_brute_force(tmp_path):
    _, acts, _, rows, values = make_shards(tmp_path, "clean", 0)
    top = top_images.top_activating(
        acts, [2, 5], 3, {"dataset": "syn", "model": "r18", "attack": "clean", "layer": "layer3"}
    )
    for unit in (2, 5):
        peaks = values[:, unit - 1].max(axis=(1, 2))
        want = [int(rows[i]) for i in np.argsort(-peaks, kind="stable")[:3]]
        assert [r for r, _ in top[unit]] == want
        assert top[unit][0][1] == pytest.approx(float(peaks.max()))


def test_pick_units_named_first_then_largest_change(tmp_path):
    clean = tally.read_units(write_units(tmp_path / "c.csv", CLEAN_UNITS))
    adv = tally.read_units(write_units(tmp_path / "a.csv", FGSM_CLEAN_UNITS))
    # IoU changes: 0.10, 0.02, 0.02, 0.02, 0.01 (NaN counts as 0).
    assert pictures.pick_units(clean, adv, 2, [4]) == [4, 1, 2]
    with pytest.raises(ConfigError, match="1-based"):
        pictures.pick_units(clean, adv, 1, [0])


def image_set(attack, images, activations, thresholds):
    return ImageSet("syn", "r18", "layer3", attack, tuple(images), tuple(activations), thresholds)


def shard_set(tmp_path, attack, seed):
    return image_set(attack, *make_shards(tmp_path, attack, seed)[:3])


@pytest.mark.parametrize("mode", ["self", "clean"])
def test_unit_pictures_on_tiny_shards(tmp_path, mode):
    inputs = pictures.PictureInputs(
        clean=shard_set(tmp_path, "clean", 0),
        attacked=(shard_set(tmp_path, "fgsm_2", 1),),
        units={
            "clean": write_units(tmp_path / "cu.csv", CLEAN_UNITS),
            "fgsm_2": write_units(tmp_path / "au.csv", FGSM_SELF_UNITS),
        },
    )
    spec = pictures.PictureSpec(threshold_mode=mode, units=(5,), k=2, n_images=3, style=STYLE)
    chosen = pictures.unit_pictures(spec, inputs, tmp_path / f"units_{mode}")
    assert chosen["fgsm_2"][0] == 5 and len(chosen["fgsm_2"]) == 3
    assert_images(tmp_path / f"units_{mode}" / "fgsm_2.png")


def test_unit_pictures_of_several_attacks_read_the_clean_set_once(tmp_path, monkeypatch):
    inputs = pictures.PictureInputs(
        clean=shard_set(tmp_path, "clean", 0),
        attacked=(shard_set(tmp_path, "fgsm_2", 1), shard_set(tmp_path, "pgd_4", 2)),
        units={
            "clean": write_units(tmp_path / "cu.csv", CLEAN_UNITS),
            "fgsm_2": write_units(tmp_path / "fu.csv", FGSM_SELF_UNITS),
            "pgd_4": write_units(tmp_path / "pu.csv", FGSM_CLEAN_UNITS),
        },
    )
    spec = pictures.PictureSpec(k=2, n_images=3, style=STYLE)
    reads = []

    def counted(image_set, units, n):
        reads.append(image_set.attack)
        return top_images.read_top_images(image_set, units, n)

    monkeypatch.setattr(pictures, "read_top_images", counted)
    chosen = pictures.unit_pictures(spec, inputs, tmp_path / "together")
    assert reads == ["clean", "fgsm_2", "pgd_4"]
    assert chosen["fgsm_2"] != chosen["pgd_4"]  # the clean side shows different units in each
    # Each picture is the one an attack drawn on its own gives, byte for byte.
    for attacked in inputs.attacked:
        alone = dataclasses.replace(inputs, attacked=(attacked,))
        pictures.unit_pictures(spec, alone, tmp_path / "alone")
        name = f"{attacked.attack}.png"
        assert (tmp_path / "together" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()


def test_unit_pictures_check_shard_identity(tmp_path):
    from advdissect.errors import ArtifactError

    ci, ca, ct, _, _ = make_shards(tmp_path, "clean", 0)
    cu = write_units(tmp_path / "cu.csv", CLEAN_UNITS)
    inputs = pictures.PictureInputs(
        clean=image_set("clean", ci, ca, ct),
        attacked=(image_set("fgsm_2", ci, ca, ct),),
        units={"clean": cu, "fgsm_2": cu},
    )
    with pytest.raises(ArtifactError, match="attack"):
        pictures.unit_pictures(pictures.PictureSpec(k=1, n_images=2, style=STYLE), inputs, tmp_path / "x")


# --------------------------------------------------------------------------- report captions

CAPTIONS = ("table2", "attacks", "models", "detectors", "eps_sweep", "units", "drift", "training", "learning_curves")


@pytest.mark.parametrize("name", CAPTIONS)
def test_report_caption_renders(name):
    jinja2 = pytest.importorskip("jinja2")
    docutils_core = pytest.importorskip("docutils.core")
    text = (REPO / "workflow" / "report" / f"{name}.rst").read_text()
    wildcards = {"dataset": "syn", "model": "r18", "layer": "layer3", "attack": "fgsm_2"}

    class Job:
        pass

    job = Job()
    job.wildcards = wildcards
    job.params = {"threshold_mode": "self", "top_n": 40, "k": 4, "n_images": 4}
    job.config = {}
    rendered = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(text).render(snakemake=job)
    assert len(rendered.split()) > 30
    with warnings.catch_warnings():
        # Snakemake renders captions with this (older) docutils call; keep the same one.
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        html = docutils_core.publish_parts(
            rendered, writer_name="html", settings_overrides={"report_level": 2, "halt_level": 2}
        )["body"]
    assert not re.search(r"system-message", html)


def test_ablation_summary_table_and_figure(tmp_path):
    paths = []
    for attack in ("fgsm_2", "pgd_8"):
        rows = []
        for mode in ("self", "clean"):
            for units_set, seed, restored in (("drifted", None, 6), ("random", 0, 1), ("random", 1, 3)):
                rows.append(
                    {
                        "dataset": "syn",
                        "model": "r18",
                        "layer": "layer4",
                        "attack": attack,
                        "threshold_mode": mode,
                        "units_set": units_set,
                        "seed": seed,
                        "ablated": 4,
                        "units": 16,
                        "images": 20,
                        "flipped": 10,
                        "restored": restored,
                        "restored_percent": 10.0 * restored,
                        "kept_percent": 90.0,
                    }
                )
        path = tmp_path / f"{attack}.csv"
        store.write_csv(path, pd.DataFrame(rows))
        paths.append(path)
    table = figures.write_ablation_summary(paths, tmp_path / "a.csv", tmp_path / "a.png", tmp_path / "a.svg", STYLE)
    assert_images(tmp_path / "a.png", tmp_path / "a.svg")
    assert list(table.columns) == ablation.ABLATION_COLUMNS and len(table) == 12
