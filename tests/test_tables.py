"""Table 2, models/attacks tables, concept drift and the training table on hand-built inputs."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest

from advdissect.dissect import drift, tally
from advdissect.errors import ArtifactError, ConfigError
from advdissect.report import dissections, tables

# 5 units of one layer; expected: color 1 detector, object 2 (one concept), all 3 (2 concepts).
CLEAN_UNITS = [
    (1, "red-c", "color", 0.10, True),
    (2, "dog", "object", 0.08, True),
    (3, "dog", "object", 0.05, True),
    (4, "grass", "material", 0.03, False),
    (5, "", "", float("nan"), False),
]
# The same layer under attack: 1 kept, 2 changed, 3 lost, 4 gained, 5 none.
FGSM_SELF_UNITS = [
    (1, "red-c", "color", 0.09, True),
    (2, "cat", "object", 0.06, True),
    (3, "dog", "object", 0.02, False),
    (4, "grass", "material", 0.05, True),
    (5, "", "", float("nan"), False),
]
FGSM_CLEAN_UNITS = [
    (1, "sky", "scene", 0.2, True),
    (2, "sky", "scene", 0.1, True),
    (3, "sky", "scene", 0.07, True),
    (4, "dotted", "texture", 0.05, True),
    (5, "wheel", "part", 0.01, False),
]


def write_units(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["unit", "label", "category", "iou", "detector"]).to_csv(path, index=False)
    return str(path)


@pytest.fixture
def entries(tmp_path):
    return [
        {
            "dataset": "syn",
            "model": "r18",
            "layer": "layer3",
            "attack": "clean",
            "mode": "self",
            "method": "clean",
            "path": write_units(tmp_path / "clean.csv", CLEAN_UNITS),
        },
        {
            "dataset": "syn",
            "model": "r18",
            "layer": "layer3",
            "attack": "fgsm_2",
            "mode": "self",
            "method": "fgsm",
            "path": write_units(tmp_path / "fgsm_self.csv", FGSM_SELF_UNITS),
        },
        {
            "dataset": "syn",
            "model": "r18",
            "layer": "layer3",
            "attack": "fgsm_2",
            "mode": "clean",
            "method": "fgsm",
            "path": write_units(tmp_path / "fgsm_clean.csv", FGSM_CLEAN_UNITS),
        },
    ]


def cell(df, attack, mode, category):
    sel = df[(df.attack == attack) & (df.threshold_mode == mode) & (df.category == category)]
    assert len(sel) == 1, (attack, mode, category)
    return sel.iloc[0]


def test_table2_counts_hand_built(entries):
    df = tables.table2(entries)
    assert list(df.columns) == tables.TABLE2_COLUMNS
    # 3 dissections + clean repeated under mode clean, 7 categories each.
    assert len(df) == 4 * 7
    expect = {
        "color": (1, 20.0, 1),
        "texture": (0, 0.0, 0),
        "material": (0, 0.0, 0),
        "scene": (0, 0.0, 0),
        "part": (0, 0.0, 0),
        "object": (2, 40.0, 1),
        "all": (3, 60.0, 2),
    }
    for mode in ("self", "clean"):
        for cat, (det, ratio, concepts) in expect.items():
            r = cell(df, "clean", mode, cat)
            assert (r.units, r.detectors, r.concepts) == (5, det, concepts)
            assert r.ratio_percent == pytest.approx(ratio)
    r = cell(df, "fgsm_2", "self", "all")
    assert (r.detectors, r.concepts, r.ratio_percent) == (3, 3, pytest.approx(60.0))
    assert cell(df, "fgsm_2", "self", "material").detectors == 1
    assert cell(df, "fgsm_2", "clean", "scene").detectors == 3
    assert cell(df, "fgsm_2", "clean", "scene").concepts == 1
    assert cell(df, "fgsm_2", "clean", "texture").ratio_percent == pytest.approx(20.0)
    assert cell(df, "fgsm_2", "clean", "part").detectors == 0
    # Order: mode self before clean, clean set first, categories in Table-2 order.
    first = df.iloc[:7]
    assert set(first.attack) == {"clean"} and set(first.threshold_mode) == {"self"}
    assert list(first.category) == list(tables.TABLE2_CATEGORIES)
    assert list(dict.fromkeys(df.threshold_mode)) == ["self", "clean"]
    assert list(dict.fromkeys(df[df.threshold_mode == "clean"].attack)) == ["clean", "fgsm_2"]


def test_table2_clean_attack_without_method_is_found_by_name(entries):
    for e in entries:
        e.pop("method")
    df = tables.table2(entries)
    assert len(df[(df.attack == "clean") & (df.threshold_mode == "clean")]) == 7


def test_table2_does_not_duplicate_an_explicit_clean_mode_entry(entries):
    entries.append({**entries[0], "mode": "clean"})
    df = tables.table2(entries)
    assert len(df[(df.attack == "clean") & (df.threshold_mode == "clean")]) == 7


def _brute_table2(rows):
    n = len(rows)
    out = {}
    for cat in tables.TABLE2_CATEGORIES:
        det = [r for r in rows if r[4] and (cat == "all" or r[2] == cat)]
        out[cat] = (n, len(det), 100.0 * len(det) / n, len({r[1] for r in det}))
    return out


def test_table2_rows_match_brute_force_on_random_layers(tmp_path):
    rng = random.Random(0)
    labels = {
        "color": ["red-c", "blue-c"],
        "texture": ["dotted"],
        "material": ["wood", "glass"],
        "scene": ["street-s"],
        "part": ["leg", "wheel"],
        "object": ["dog", "car", "tree"],
    }
    for trial in range(20):
        rows = []
        for u in range(1, rng.randint(1, 30) + 1):
            cat = rng.choice(tables.CATEGORY_ORDER)
            iou = rng.random() * 0.1
            rows.append((u, rng.choice(labels[cat]), cat, iou, iou > 0.04))
        path = write_units(tmp_path / f"u{trial}.csv", rows)
        got = tables.table2_rows(tally.read_units(path))
        want = _brute_table2(rows)
        for r in got:
            n, det, ratio, concepts = want[r["category"]]
            assert (r["units"], r["detectors"], r["concepts"]) == (n, det, concepts)
            assert r["ratio_percent"] == pytest.approx(ratio)


def test_table2_markdown_has_the_numbers(entries):
    md = tables.table2_markdown(tables.table2(entries))
    assert "threshold_mode = self" in md and "threshold_mode = clean" in md
    self_block, clean_block = md.split("threshold_mode = clean")
    header = "| Model | Layer | Attack | C | T | M | S | P | O | All | Units | Concepts |"
    assert header in self_block and header in clean_block
    assert (
        "| r18 | layer3 | clean | 20.0 (1) | 0.0 (0) | 0.0 (0) | 0.0 (0) | 0.0 (0) | 40.0 (2) | 60.0 (3) | 5 | 2 |"
        in self_block
    )
    assert (
        "| r18 | layer3 | fgsm_2 | 20.0 (1) | 0.0 (0) | 20.0 (1) | 0.0 (0) | 0.0 (0) | 20.0 (1) | 60.0 (3) | 5 | 3 |"
        in self_block
    )
    # The clean row appears under the clean-threshold block too.
    assert "| r18 | layer3 | clean | 20.0 (1) |" in clean_block
    assert (
        "| r18 | layer3 | fgsm_2 | 0.0 (0) | 20.0 (1) | 0.0 (0) | 60.0 (3) | 0.0 (0) | 0.0 (0) | 80.0 (4) | 5 | 2 |"
        in clean_block
    )


def test_write_table2_writes_csv_and_md(entries, tmp_path):
    tables.write_table2(entries, tmp_path / "t2.csv", tmp_path / "t2.md")
    back = tables.read_summary_csv(tmp_path / "t2.csv")
    assert list(back.columns) == tables.TABLE2_COLUMNS and len(back) == 28
    assert (tmp_path / "t2.md").read_text().startswith("# Table 2")


def test_units_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"unit": [1], "label": ["x"], "iou": [0.1]}).to_csv(bad, index=False)
    with pytest.raises(ArtifactError, match="bad.csv.*category"):
        tally.read_units(bad)
    wrong = write_units(tmp_path / "wrong.csv", [(1, "x", "animal", 0.2, True)])
    with pytest.raises(ArtifactError, match="animal"):
        tally.read_units(wrong)


def test_entries_validation(entries):
    with pytest.raises(ConfigError, match="mode"):
        tables.table2([{**entries[0], "mode": "both"}])
    with pytest.raises(ConfigError, match="twice"):
        tables.table2([entries[0], entries[0]])
    with pytest.raises(ConfigError, match="same order"):
        dissections.zip_entries(entries, ["a.csv"])


def test_labels_stay_text(tmp_path):
    path = write_units(tmp_path / "na.csv", [(1, "NA", "object", 0.2, True), (2, "null", "part", 0.1, True)])
    assert list(tally.read_units(path).label) == ["NA", "null"]


# --------------------------------------------------------------------------- drift


def test_concept_drift_statuses(entries):
    clean = tally.read_units(entries[0]["path"])
    adv = tally.read_units(entries[1]["path"])
    frame = drift.concept_drift(clean, adv)
    assert list(frame.columns) == drift.DRIFT_COLUMNS
    assert list(frame.status) == ["kept", "changed", "lost", "gained", "none"]
    assert list(frame.clean_label) == ["red-c", "dog", "dog", "grass", ""]
    assert list(frame.adv_label) == ["red-c", "cat", "dog", "grass", ""]
    assert frame.loc[1, "adv_iou"] == pytest.approx(0.06)


def test_concept_drift_needs_same_units(entries):
    clean = tally.read_units(entries[0]["path"])
    with pytest.raises(ArtifactError, match="different units"):
        drift.concept_drift(clean, clean.iloc[:3])


def test_concept_drift_tables(entries):
    units, summary = tables.concept_drift_tables(entries)
    assert len(units) == 10
    assert list(summary.columns) == tables.DRIFT_KEYS + list(drift.DRIFT_STATUSES) + ["units"]
    s = summary.set_index("threshold_mode")
    assert s.loc["self", ["kept", "changed", "lost", "gained", "none", "units"]].tolist() == [1, 1, 1, 1, 1, 5]
    # Mode clean compares with the clean set's own dissection.
    assert s.loc["clean", ["kept", "changed", "lost", "gained", "none"]].tolist() == [0, 3, 0, 1, 1]


def test_concept_drift_without_clean_is_an_error(entries):
    with pytest.raises(ConfigError, match="no clean dissection"):
        tables.concept_drift_tables(entries[1:])


# --------------------------------------------------------------------------- models, attacks


def test_models_table():
    models = {
        "r18_imagenet": {"arch": "resnet18", "weights": {"source": "torchvision", "name": "IMAGENET1K_V1"}},
        "r18_syn": {"arch": "resnet18", "weights": {"source": "train", "dataset": "syn"}},
        "alex_random": {"arch": "alexnet"},
    }
    metrics = {
        "r18_syn": {
            "heldout_accuracy": 0.63,
            "train_accuracy": 0.9,
            "method": "standard",
            "arch": "resnet18",
            "epochs": 8,
            "seconds": 12.5,
        }
    }
    df = tables.models_table(models, metrics)
    assert list(df.columns[:5]) == ["model", "arch", "weights", "dataset", "heldout_accuracy"]
    assert list(df.model) == list(models)
    assert list(df.weights) == ["torchvision", "train", "random"]
    assert list(df.dataset) == ["", "syn", ""]  # the config's dataset name, only for models trained here
    assert df.loc[0, "weights_detail"] == "name=IMAGENET1K_V1"
    assert np.isnan(df.loc[0, "heldout_accuracy"]) and df.loc[1, "heldout_accuracy"] == 0.63
    assert df.loc[1, "epochs"] == 8
    with pytest.raises(ConfigError, match="ghost"):
        tables.models_table(models, {"ghost": {"heldout_accuracy": 0.1}})


def test_write_models_table(tmp_path):
    m = tmp_path / "metrics.json"
    m.write_text(json.dumps({"heldout_accuracy": 0.5, "method": "atda", "epochs": 2}))
    out = tmp_path / "models.csv"
    tables.write_models_table({"a": {"arch": "resnet18", "weights": {"source": "train"}}}, ["a"], [m], out)
    text = out.read_text().splitlines()
    assert text[0].startswith("model,arch,weights,dataset,heldout_accuracy")
    assert text[1].startswith("a,resnet18,train,,0.5")
    with pytest.raises(ConfigError):
        tables.write_models_table({"a": {"arch": "resnet18"}}, ["a", "b"], [m], out)


def _stats_row(attack, method, eps, agreement, adv_acc, model="r18", clean_acc=0.8):
    return {
        "dataset": "syn",
        "model": model,
        "attack": attack,
        "method": method,
        "eps": eps,
        "n_images": 10,
        "agreement": agreement,
        "success_rate": 1 - agreement,
        "linf_max": eps,
        "l2_mean": eps * 10,
        "clean_accuracy": clean_acc,
        "adversarial_accuracy": adv_acc,
    }


def test_attacks_table_concatenates_sorted(tmp_path):
    paths = []
    for i, row in enumerate(
        [
            _stats_row("fgsm_4", "fgsm", 4 / 255, 0.1, 0.1),
            _stats_row("noise_2", "noise", 2 / 255, 0.99, 0.8),
            _stats_row("fgsm_2", "fgsm", 2 / 255, 0.3, 0.3),
            _stats_row("clean", "clean", 0.0, 1.0, 0.8),
        ]
    ):
        p = tmp_path / f"s{i}.csv"
        pd.DataFrame([row]).to_csv(p, index=False)
        paths.append(p)
    df = tables.attacks_table(paths)
    assert list(df.attack) == ["clean", "fgsm_2", "fgsm_4", "noise_2"]
    assert list(df.columns) == tables.ATTACK_COLUMNS
    bad = tmp_path / "bad.csv"
    pd.DataFrame([{"dataset": "syn"}]).to_csv(bad, index=False)
    with pytest.raises(ArtifactError, match="bad.csv"):
        tables.attacks_table([bad])


# --------------------------------------------------------------------------- training


def training_inputs():
    models_df = pd.DataFrame({"model": ["std", "atda"], "arch": ["resnet18"] * 2, "heldout_accuracy": [0.7, 0.65]})
    attacks_df = pd.DataFrame(
        [
            _stats_row("clean", "clean", 0.0, 1.0, 0.8, model="std"),
            _stats_row("fgsm_2", "fgsm", 2 / 255, 0.2, 0.1, model="std"),
            _stats_row("clean", "clean", 0.0, 1.0, 0.75, model="atda", clean_acc=0.75),
            _stats_row("fgsm_2", "fgsm", 2 / 255, 0.7, 0.6, model="atda", clean_acc=0.75),
        ]
    )
    t2 = []
    for model, ratios in (("std", {"clean": 10.0, "fgsm_2": 4.0}), ("atda", {"clean": 12.0, "fgsm_2": 11.0})):
        for layer, scale in (("layer3", 1.0), ("layer4", 2.0)):
            for attack, ratio in ratios.items():
                for mode in ("self", "clean"):
                    t2.append(
                        {
                            "dataset": "syn",
                            "model": model,
                            "layer": layer,
                            "attack": attack,
                            "threshold_mode": mode,
                            "category": "all",
                            "units": 10,
                            "detectors": 1,
                            "ratio_percent": ratio * scale + (0 if mode == "self" else 100),
                            "concepts": 1,
                        }
                    )
    return models_df, attacks_df, pd.DataFrame(t2)


def test_training_table():
    models_df, attacks_df, t2 = training_inputs()
    spec = {"atda": {"arch": "resnet18", "method": "atda"}, "std": {"arch": "resnet18", "method": "standard"}}
    df = tables.training_table(models_df, attacks_df, t2, spec)
    assert list(df.columns[:5]) == ["arch", "method", "clean_accuracy", "attack", "adversarial_accuracy"]
    assert list(df.method) == ["standard", "atda"]
    r = df.set_index("model").loc["std"]
    assert (r.clean_accuracy, r.adversarial_accuracy, r.heldout_accuracy) == (0.8, 0.1, 0.7)
    # Deepest layer (last in config order), mode self, all categories.
    assert r.layer == "layer4" and r.clean_detector_ratio == 20.0 and r.adversarial_detector_ratio == 8.0
    df3 = tables.training_table(
        models_df, attacks_df, t2, {"atda": {"arch": "resnet18", "method": "atda", "layer": "layer3"}}
    )
    assert df3.loc[0, "adversarial_detector_ratio"] == 11.0
    with pytest.raises(ConfigError, match="method"):
        tables.training_table(models_df, attacks_df, t2, {"std": {"arch": "resnet18"}})


def test_table_categories_are_the_broden_categories():
    from advdissect.data import broden

    assert set(tables.CATEGORY_ORDER) == set(broden.CATEGORIES)


def write_bootstrap_table(path, dissections, units=5):
    """A bootstrap table of an image set: dissections maps (mode, layer) to (all, object) per resample."""
    frames = []
    for (mode, layer), (all_detectors, object_detectors) in dissections.items():
        frame = pd.DataFrame({"resample": np.arange(1, len(all_detectors) + 1), "units": units})
        for category in ("color", "object", "part", "material", "scene", "texture"):
            frame[category] = 0
        frame["object"] = object_detectors
        frame["all"] = all_detectors
        frame.insert(0, "layer", layer)
        frame.insert(0, "mode", mode)
        frames.append(frame)
    pd.concat(frames).to_csv(path, index=False)
    return str(path)


def test_intervals_and_paired_attack_effects(entries, tmp_path):
    rng = np.random.default_rng(0)
    clean_all = rng.integers(1, 5, 200)
    # the attack removes exactly one detector in every resample: its paired interval is [-20, -20]
    # although the two sets' own intervals overlap
    attack_all = clean_all - 1
    entries[0]["bootstrap"] = write_bootstrap_table(
        tmp_path / "boot_clean.csv", {("self", "layer3"): (clean_all, clean_all // 2)}
    )
    # one table per image set: fgsm_2 under both threshold modes
    entries[1]["bootstrap"] = entries[2]["bootstrap"] = write_bootstrap_table(
        tmp_path / "boot_fgsm_2.csv",
        {
            ("self", "layer3"): (attack_all, clean_all // 2),
            ("clean", "layer3"): (rng.integers(0, 6, 200), clean_all // 2),
        },
    )
    df = tables.table2(entries, level=0.9)
    r = cell(df, "clean", "self", "all")
    # basic interval around the units table's 60 %: 2·60 − (95th, 5th percentile), within [0, 100]
    q_lo, q_hi = np.percentile(100 * clean_all / 5, [5, 95])
    want = (max(120 - q_hi, 0.0), min(120 - q_lo, 100.0))
    assert (r.ci_low_percent, r.ci_high_percent) == pytest.approx(want)
    r = cell(df, "clean", "clean", "all")  # the clean set repeated under mode clean keeps its interval
    assert (r.ci_low_percent, r.ci_high_percent) == pytest.approx(want)
    clean_lo, clean_hi = want
    assert np.percentile(100 * attack_all / 5, 95) > q_lo  # the unpaired resamples overlap

    effects = tables.attack_effects(entries, level=0.9)
    assert list(effects.columns) == tables.EFFECT_COLUMNS
    assert len(effects) == 2 * 7  # fgsm_2 self and clean, 7 categories
    e = effects[(effects.threshold_mode == "self") & (effects.category == "all")].iloc[0]
    assert (e.clean_percent, e.attack_percent, e.difference) == (60.0, 60.0, 0.0)  # from the units tables
    assert (e.ci_low, e.ci_high, e.shown) == (20.0, 20.0, True)  # 2·0 − (−20)
    o = effects[(effects.threshold_mode == "self") & (effects.category == "object")].iloc[0]
    assert o.difference == -20.0  # 1 object detector of 5 against 2 of 5
    assert (o.ci_low, o.ci_high, o.shown) == (-40.0, -40.0, True)  # 2·(−20) − 0
    md = tables.table2_markdown(df, level=0.9)
    assert "90 % bootstrap interval" in md and f"[{clean_lo:.1f}, {clean_hi:.1f}]" in md


def test_attacks_without_eps_are_attacks_like_any_other(entries, tmp_path):
    # DeepFool and C&W have no ε (attacks.csv leaves it empty): Table 2, the paired effects and
    # the attacks table take them as they take FGSM.
    rng = np.random.default_rng(1)
    clean_all = rng.integers(1, 5, 50)
    entries[0]["bootstrap"] = write_bootstrap_table(tmp_path / "b0.csv", {("self", "layer3"): (clean_all, clean_all)})
    for attack, method in (("deepfool", "deepfool"), ("cw", "cw")):
        entries.append(
            entries[1]
            | {
                "attack": attack,
                "method": method,
                "bootstrap": write_bootstrap_table(
                    tmp_path / f"b_{attack}.csv", {("self", "layer3"): (clean_all - 1, clean_all)}
                ),
            }
        )
    df = tables.table2(entries)
    for attack in ("deepfool", "cw"):
        assert cell(df, attack, "self", "all").ratio_percent == cell(df, "fgsm_2", "self", "all").ratio_percent
    effects = tables.attack_effects(entries)
    assert set(effects.attack) == {"deepfool", "cw"} and len(effects) == 2 * 7

    paths = []
    for i, row in enumerate(
        [
            _stats_row("fgsm_2", "fgsm", 2 / 255, 0.3, 0.3),
            _stats_row("deepfool", "deepfool", float("nan"), 0.2, 0.2),
            _stats_row("clean", "clean", 0.0, 1.0, 0.8),
            _stats_row("apgd_4", "apgd", 4 / 255, 0.1, 0.1),
            _stats_row("cw", "cw", float("nan"), 0.5, 0.5),
        ]
    ):
        path = tmp_path / f"s{i}.csv"
        pd.DataFrame([row]).to_csv(path, index=False)
        paths.append(path)
    attacks = tables.attacks_table(paths)
    assert list(attacks.attack) == ["clean", "apgd_4", "cw", "deepfool", "fgsm_2"]
    assert attacks.set_index("attack").eps[["cw", "deepfool"]].isna().all()


def test_no_intervals_without_bootstrap(entries):
    df = tables.table2(entries)
    assert df["ci_low_percent"].isna().all() and df["ci_high_percent"].isna().all()
    assert "bootstrap" not in tables.table2_markdown(df)
    assert tables.attack_effects(entries).empty


def test_iou_sweep_counts_units_above_each_cut(entries):
    sweep = tables.iou_sweep(entries, cuts=(0.02, 0.04, 0.05, 0.1))
    assert list(sweep.columns) == tables.IOU_SWEEP_COLUMNS
    clean = sweep[(sweep.attack == "clean") & (sweep.threshold_mode == "self")]
    # best IoUs 0.10, 0.08, 0.05, 0.03 and none: strictly above the cut, as the units table counts
    assert clean["detectors"].tolist() == [4, 3, 2, 0]
    assert clean["ratio_percent"].tolist() == [80.0, 60.0, 40.0, 0.0]
    assert len(sweep[(sweep.attack == "clean") & (sweep.threshold_mode == "clean")]) == 4
    # at the units table's own cut the sweep equals its detector column
    at_cut = sweep[(sweep.cut == 0.04) & (sweep.attack == "fgsm_2") & (sweep.threshold_mode == "self")]
    assert at_cut["detectors"].item() == 3
    assert tables.IOU_CUTS[0] == 0.02 and tables.IOU_CUTS[-1] == 0.2 and 0.04 in tables.IOU_CUTS


# --------------------------------------------------------------------------- model against its baseline


def _random_units(rng, n_units):
    rows = []
    for unit in range(1, n_units + 1):
        category = str(rng.choice(tables.CATEGORY_ORDER))
        rows.append(
            (unit, f"{category}-{rng.integers(3)}", category, float(rng.uniform(0, 0.1)), bool(rng.random() < 0.6))
        )
    return rows


def _random_bootstrap(rng, path, layers, n_units, resamples=200):
    """A clean image set's bootstrap table (mode self) with random detector counts per category."""
    frames = []
    for layer in layers:
        counts = rng.integers(0, n_units // 3 + 1, size=(resamples, len(tables.CATEGORY_ORDER)))
        frame = pd.DataFrame(counts, columns=list(tables.CATEGORY_ORDER))
        frame["all"] = counts.sum(axis=1)
        frame.insert(0, "units", n_units)
        frame.insert(0, "resample", np.arange(1, resamples + 1))
        frame.insert(0, "layer", layer)
        frame.insert(0, "mode", "self")
        frames.append(frame)
    pd.concat(frames).to_csv(path, index=False)
    return pd.concat(frames).reset_index(drop=True), str(path)


@pytest.fixture
def model_entries(tmp_path):
    """std (layer3, layer4), at (layer3, layer4, layer5; baseline std), solo (layer4; no baseline),
    each with its clean units and bootstrap tables; at also attacked (not compared here)."""
    rng = np.random.default_rng(7)
    layers = {"std": ["layer3", "layer4"], "at": ["layer3", "layer4", "layer5"], "solo": ["layer4"]}
    n_units = {"std": 9, "at": 12, "solo": 6}  # percentages are of each model's own units
    entries, units, boots = [], {}, {}
    for model, model_layers in layers.items():
        boot, boot_path = _random_bootstrap(rng, tmp_path / f"boot_{model}.csv", model_layers, n_units[model])
        for layer in model_layers:
            units[model, layer] = _random_units(rng, n_units[model])
            boots[model, layer] = boot[boot["layer"] == layer].reset_index(drop=True)
            entries.append(
                {
                    "dataset": "syn",
                    "model": model,
                    "layer": layer,
                    "attack": "clean",
                    "mode": "self",
                    "method": "clean",
                    "path": write_units(tmp_path / f"{model}_{layer}.csv", units[model, layer]),
                    "bootstrap": boot_path,
                }
            )
    entries.append(
        {
            **entries[2],
            "attack": "fgsm_2",
            "method": "fgsm",
            "path": write_units(tmp_path / "at_fgsm.csv", FGSM_SELF_UNITS),
        }
    )
    return entries, units, boots, n_units


def test_model_effects_match_a_direct_computation(model_entries):
    entries, units, boots, n_units = model_entries
    level = 0.9
    df = tables.model_effects(entries, {"at": "std", "solo": None}, level=level)
    assert list(df.columns) == tables.MODEL_EFFECT_COLUMNS
    # at against std at the layers both dissect; solo has no baseline; layer5 is at's alone
    assert list(dict.fromkeys(zip(df.model, df.baseline, df.layer))) == [
        ("at", "std", "layer3"),
        ("at", "std", "layer4"),
    ]
    assert list(df.category) == 2 * list(tables.TABLE2_CATEGORIES)
    assert set(df.threshold_mode) == {"self"} and set(df.dataset) == {"syn"}
    n_shown = 0
    for _, row in df.iterrows():
        layer, category = row.layer, row.category
        detectors = {}
        for model in ("at", "std"):
            rows = [r for r in units[model, layer] if r[4] and (category == "all" or r[2] == category)]
            detectors[model] = 100.0 * len(rows) / n_units[model]
        point = detectors["at"] - detectors["std"]
        diffs = [
            100.0 * a / n_units["at"] - 100.0 * b / n_units["std"]
            for a, b in zip(boots["at", layer][category], boots["std", layer][category])
        ]
        q_lo, q_hi = np.percentile(diffs, [5, 95])
        assert row.units == n_units["at"]
        assert (row.baseline_percent, row.model_percent) == (
            pytest.approx(detectors["std"]),
            pytest.approx(detectors["at"]),
        )
        assert row.difference == pytest.approx(point)
        assert (row.ci_low, row.ci_high) == (pytest.approx(2 * point - q_hi), pytest.approx(2 * point - q_lo))
        assert row.shown == (2 * point - q_hi > 0 or 2 * point - q_lo < 0)
        n_shown += bool(row.shown)
    assert 0 < n_shown < len(df)  # both kinds occur in these numbers


def test_model_effects_shown_when_every_resample_moves_the_same_way(tmp_path):
    # the model has one more object detector than its baseline in every resample: the paired
    # interval is a point although the two models' own resamples overlap
    base = np.random.default_rng(1).integers(0, 4, 200)
    entries = []
    for model, detectors, units_rows in (("std", base, CLEAN_UNITS), ("at", base + 1, FGSM_SELF_UNITS)):
        path = write_bootstrap_table(tmp_path / f"{model}.csv", {("self", "layer3"): (detectors, detectors)})
        entries.append(
            {
                "dataset": "syn",
                "model": model,
                "layer": "layer3",
                "attack": "clean",
                "mode": "self",
                "path": write_units(tmp_path / f"{model}_units.csv", units_rows),
                "bootstrap": path,
            }
        )
    df = tables.model_effects(entries, {"at": "std"}).set_index("category")
    # units tables: object 1 of 5 against 2 of 5; all 3 of 5 in both
    assert df.loc["object", ["baseline_percent", "model_percent", "difference"]].tolist() == [40.0, 20.0, -20.0]
    # every resampled difference is +20 (one detector of 5): the basic interval is 2·point − 20
    assert df.loc["object", ["ci_low", "ci_high"]].tolist() == [-60.0, -60.0]
    assert bool(df.loc["object", "shown"]) is True
    assert df.loc["all", ["difference", "ci_low", "ci_high"]].tolist() == [0.0, -20.0, -20.0]
    assert bool(df.loc["all", "shown"]) is True
    assert df.loc["color", ["difference", "ci_low", "ci_high"]].tolist() == [0.0, 0.0, 0.0]
    assert bool(df.loc["color", "shown"]) is False  # no resample moves: the interval is [0, 0]


def test_model_effects_need_a_baseline_and_both_bootstrap_tables(model_entries):
    entries, *_ = model_entries
    assert tables.model_effects(entries, {}).empty
    assert tables.model_effects(entries, {"solo": None, "std": "nonesuch"}).empty
    # a baseline that lacks the model's layers (solo dissects layer4 only)
    df = tables.model_effects(entries, {"at": "solo"})
    assert list(df.layer.unique()) == ["layer4"] and set(df.baseline) == {"solo"}
    # without the baseline's bootstrap table at a layer, that layer has no row
    no_boot = [{**e, "bootstrap": None} if (e["model"], e["layer"]) == ("std", "layer3") else e for e in entries]
    assert list(tables.model_effects(no_boot, {"at": "std"}).layer.unique()) == ["layer4"]


def test_model_effects_refuse_resamples_that_do_not_pair(model_entries, tmp_path):
    entries, *_ = model_entries
    std = next(e for e in entries if e["model"] == "std")
    boot = pd.read_csv(std["bootstrap"])
    short = tmp_path / "short.csv"
    boot[boot["resample"] <= 100].to_csv(short, index=False)
    entries = [{**e, "bootstrap": str(short)} if e["model"] == "std" else e for e in entries]
    with pytest.raises(ArtifactError, match="cannot be paired"):
        tables.model_effects(entries, {"at": "std"})


def test_write_table2_writes_model_effects(model_entries, tmp_path):
    entries, *_ = model_entries
    out = tmp_path / "summary"
    tables.write_table2(
        entries,
        csv_path=out / "table2.csv",
        md_path=out / "table2.md",
        effects_path=out / "attack_effects.csv",
        model_effects_path=out / "model_effects.csv",
        baselines={"at": "std"},
    )
    written = tables.read_summary_csv(out / "model_effects.csv")
    want = tables.model_effects(entries, {"at": "std"})
    assert list(written.columns) == tables.MODEL_EFFECT_COLUMNS and len(written) == len(want) == 14
    assert written["baseline"].tolist() == want["baseline"].tolist()
    assert np.allclose(written["ci_low"], want["ci_low"]) and written["shown"].tolist() == want["shown"].tolist()
