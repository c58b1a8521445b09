"""The demo-results Markdown: sections, number formats, '–' cells, determinism, the README block."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from advdissect import store
from advdissect.data.broden import BrodenDataset
from advdissect.dissect import ablation, ceilings, tally
from advdissect.errors import ArtifactError
from advdissect.report import results_md, tables
from advdissect.study.config import sort_keys
from advdissect.study.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
NAN = float("nan")


# --------------------------------------------------------------------------- hand-made frames


def small_models() -> pd.DataFrame:
    specs = {
        "base": {"arch": "resnet18", "weights": {"source": "train", "dataset": "d", "method": "standard", "epochs": 6}},
        "tuned": {
            "arch": "resnet18",
            "weights": {"source": "train", "dataset": "d", "method": "at", "epochs": 2, "init": "base"},
        },
        "net": {"arch": "alexnet", "weights": {"source": "torchvision", "name": "IMAGENET1K_V1"}},
    }
    metrics = {
        "base": {"heldout_accuracy": 0.97512, "method": "standard", "epochs": 6},
        "tuned": {"heldout_accuracy": 0.5, "method": "at", "epochs": 2},
    }
    return tables.models_table(specs, metrics)


def small_attacks() -> pd.DataFrame:
    rows = [
        # dataset, model, attack, method, eps, success_rate
        ("d", "base", "clean", "clean", 0.0, 0.0),
        ("d", "base", "fgsm_8", "fgsm", 8 / 255, 0.645),
        ("d", "base", "fgsm_2", "fgsm", 2 / 255, 0.10849),
        ("d", "tuned", "clean", "clean", 0.0, 0.0),
        ("d", "tuned", "fgsm_2", "fgsm", 2 / 255, 0.0),
        ("d", "net", "clean", "clean", 0.0, 0.0),
        ("d", "net", "noise_8", "noise", 8 / 255, 0.01),
    ]
    records = [
        {
            **{c: NAN for c in tables.ATTACK_COLUMNS},
            "dataset": d,
            "model": m,
            "attack": a,
            "method": method,
            "eps": eps,
            "success_rate": rate,
        }
        for d, m, a, method, eps, rate in rows
    ]
    frame = pd.DataFrame(records, columns=tables.ATTACK_COLUMNS)
    return frame


def small_table2() -> pd.DataFrame:
    rows = []
    for model, layers in (("base", ["layer3", "layer4"]), ("tuned", ["layer4"]), ("net", ["conv5"])):
        for layer in layers:
            for mode, attacks in (("self", ["clean", "fgsm_2"]), ("clean", ["clean", "fgsm_2"])):
                for attack in attacks:
                    for k, category in enumerate(tables.TABLE2_CATEGORIES):
                        ratio = 12.34 + k if attack == "clean" else 1.04 * k
                        rows.append(
                            {
                                "dataset": "d",
                                "model": model,
                                "layer": layer,
                                "attack": attack,
                                "threshold_mode": mode,
                                "category": category,
                                "units": 10,
                                "detectors": 1,
                                "ratio_percent": ratio,
                                "concepts": 1,
                                # intervals on the base model's clean set only
                                "ci_low_percent": ratio - 2.0 if (model, attack) == ("base", "clean") else None,
                                "ci_high_percent": ratio + 1.04 if (model, attack) == ("base", "clean") else None,
                            }
                        )
    return pd.DataFrame(rows, columns=tables.TABLE2_COLUMNS)


def small_effects() -> pd.DataFrame:
    rows = []
    for mode in ("self", "clean"):
        for k, category in enumerate(tables.TABLE2_CATEGORIES):
            diff = -12.34 + 0.5 * k
            rows.append(
                {
                    "dataset": "d",
                    "model": "base",
                    "layer": "layer4",
                    "threshold_mode": mode,
                    "attack": "fgsm_2",
                    "category": category,
                    "units": 10,
                    "clean_percent": 12.34 + k,
                    "attack_percent": 12.34 + k + diff,
                    "difference": diff,
                    "ci_low": diff - 1.0,
                    "ci_high": diff + 12.0,
                    "shown": diff + 12.0 < 0,
                }
            )
    return pd.DataFrame(rows, columns=tables.EFFECT_COLUMNS)


def small_model_effects() -> pd.DataFrame:
    """tuned against base, at layer4 (the deepest) and layer3 (not shown)."""
    rows = []
    for layer in ("layer3", "layer4"):
        for k, category in enumerate(tables.TABLE2_CATEGORIES):
            diff = 4.0 - 1.5 * k
            rows.append(
                {
                    "dataset": "d",
                    "model": "tuned",
                    "baseline": "base",
                    "layer": layer,
                    "threshold_mode": "self",
                    "category": category,
                    "units": 10,
                    "baseline_percent": 20.0 + k,
                    "model_percent": 20.0 + k + diff,
                    "difference": diff,
                    "ci_low": diff - 2.0,
                    "ci_high": diff + 2.0,
                    "shown": abs(diff) > 2.0,
                }
            )
    return pd.DataFrame(rows, columns=tables.MODEL_EFFECT_COLUMNS)


def small_ablation() -> pd.DataFrame:
    rows = []
    for mode, drifted_restored in (("self", 30.0), ("clean", 10.0)):
        for units_set, seed, restored in (
            ("drifted", None, drifted_restored),
            ("random", 0, 12.0),
            ("random", 1, 20.0),
        ):
            rows.append(
                {
                    "dataset": "d",
                    "model": "base",
                    "layer": "layer4",
                    "attack": "fgsm_2",
                    "threshold_mode": mode,
                    "units_set": units_set,
                    "seed": seed,
                    "ablated": 7,
                    "units": 10,
                    "images": 40,
                    "flipped": 20,
                    "restored": restored / 5,
                    "restored_percent": restored,
                    "kept_percent": 95.0,
                }
            )
    return pd.DataFrame(rows, columns=ablation.ABLATION_COLUMNS)


def small_units() -> dict[tuple[str, str, str], pd.DataFrame]:
    base = pd.DataFrame(
        {
            "unit": [1, 2, 3, 4, 5, 6, 7, 8],
            "label": ["red", "red", "dog", "dog", "sky", "", "cat", "grass"],
            "category": ["color", "color", "object", "object", "scene", "", "object", "texture"],
            "iou": [0.1, 0.2, 0.3, 0.01, 0.05, 0.0, 0.06, 0.07],
            "detector": [True, True, True, False, True, False, True, True],
        }
    )
    return {
        ("d", "base", "layer4"): base,
        ("d", "tuned", "layer4"): base.assign(label=""),
        ("d", "net", "conv5"): pd.DataFrame(columns=tally.UNITS_COLUMNS),
    }


def small_ceilings() -> pd.DataFrame:
    rows = [
        ("d", "base", "layer4", 4, 4, 3, "magenta", "color", 0.54),
        ("d", "base", "layer4", 4, 4, 4, "red", "color", 0.2),
        ("d", "base", "layer4", 4, 4, 9, "striped", "texture", 0.0123456),
        ("d", "base", "layer4", 4, 4, 10, "beach", "scene", 0.31),
        ("d", "base", "layer4", 4, 4, 11, "ocean", "scene", 0.31),
        ("d", "base", "layer3", 7, 7, 3, "magenta", "color", 0.9),
        ("d", "net", "conv5", 6, 6, 3, "magenta", "color", 0.7),
    ]
    return pd.DataFrame(rows, columns=ceilings.CEILINGS_COLUMNS)


def small_training() -> pd.DataFrame:
    rows = [
        {
            "arch": "resnet18",
            "method": "standard",
            "clean_accuracy": 0.975,
            "attack": "fgsm_8",
            "adversarial_accuracy": 0.38333,
            "model": "base",
            "dataset": "d",
            "eps": 8 / 255,
            "agreement": 0.3,
            "heldout_accuracy": 0.97512,
            "layer": "layer4",
            "clean_detector_ratio": 87.9,
            "adversarial_detector_ratio": 85.4,
        },
        {
            "arch": "resnet18",
            "method": "standard",
            "clean_accuracy": 0.975,
            "attack": "fgsm_2",
            "adversarial_accuracy": 0.9,
            "model": "base",
            "dataset": "d",
            "eps": 2 / 255,
            "agreement": 0.9,
            "heldout_accuracy": 0.97512,
            "layer": "layer4",
            "clean_detector_ratio": 87.9,
            "adversarial_detector_ratio": 86.94,
        },
        {
            "arch": "resnet18",
            "method": "at",
            "clean_accuracy": 0.5,
            "attack": "fgsm_2",
            "adversarial_accuracy": NAN,
            "model": "tuned",
            "dataset": "d",
            "eps": 2 / 255,
            "agreement": 1.0,
            "heldout_accuracy": 0.5,
            "layer": "layer4",
            "clean_detector_ratio": 50.0,
            "adversarial_detector_ratio": 50.0,
        },
    ]
    return pd.DataFrame(rows, columns=tables.TRAINING_COLUMNS)


def small_markdown(training: bool = True) -> str:
    return results_md.demo_results_markdown(
        results_md.DemoTables(
            small_models(),
            small_attacks(),
            small_table2(),
            small_ceilings(),
            small_units(),
            small_training() if training else None,
            small_effects(),
            small_ablation(),
            small_model_effects(),
        )
    )


def table_rows(markdown: str, key: str) -> list[list[str]]:
    """The cells of the table under section `key` (header row first, the alignment row dropped)."""
    lines = markdown.splitlines()
    start = lines.index(results_md.TITLES[key]) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return [rows[0]] + rows[2:]


# --------------------------------------------------------------------------- formatting


def test_every_section_in_order():
    md = small_markdown()
    assert results_md.section_titles(md) == list(results_md.TITLES.values())
    assert len(results_md.table_headers(md)) == len(results_md.SECTIONS)
    assert md.endswith("|\n") and not md.endswith("\n\n")


def test_training_section_only_with_training():
    md = small_markdown(training=False)
    assert results_md.section_titles(md) == [results_md.TITLES[k] for k in results_md.SECTIONS[:-1]]


def test_output_is_deterministic():
    assert small_markdown() == small_markdown()


def test_models_section():
    rows = table_rows(small_markdown(), "models")
    assert rows[0] == ["model", "arch", "training", "epochs", "held-out accuracy"]
    assert rows[1] == ["base", "resnet18", "standard", "6", "0.975"]
    assert rows[2] == ["tuned", "resnet18", "at, from base", "2", "0.500"]
    assert rows[3] == ["net", "alexnet", "torchvision", "–", "–"]


def test_attacks_section_percent_and_dash():
    rows = table_rows(small_markdown(), "attacks")
    # Columns by method then eps, never the clean set; rows in models.csv order.
    assert rows[0] == ["model", "fgsm_2", "fgsm_8", "noise_8"]
    assert rows[1] == ["base", "10.8", "64.5", "–"]
    assert rows[2] == ["tuned", "0.0", "–", "–"]
    assert rows[3] == ["net", "–", "–", "1.0"]


def test_table2_section_deepest_layer_only():
    rows = table_rows(small_markdown(), "table2")
    assert rows[0] == ["model", "layer", "thresholds", "attack", "C", "T", "M", "S", "P", "O", "All"]
    body = rows[1:]
    assert [r[:4] for r in body[:4]] == [
        ["base", "layer4", "self", "clean"],
        ["base", "layer4", "self", "fgsm_2"],
        ["base", "layer4", "clean", "clean"],
        ["base", "layer4", "clean", "fgsm_2"],
    ]
    assert {r[1] for r in body} == {"layer4", "conv5"}
    # TABLE2_CATEGORIES order is color, texture, material, scene, part, object, all.
    assert body[0][4:] == ["12.3", "13.3", "14.3", "15.3", "16.3", "17.3", "18.3"]
    assert body[1][4:] == ["0.0", "1.0", "2.1", "3.1", "4.2", "5.2", "6.2"]
    assert len(body) == 12


def test_concentration_section():
    rows = table_rows(small_markdown(), "concentration")
    assert rows[0] == [
        "model",
        "layer",
        "units",
        "detectors %",
        "object detectors %",
        "most common best label (% of all units)",
    ]
    # red and dog are both the best label of 2 of 8 units: the first alphabetically wins.
    # intervals come from table2.csv's clean rows (here: base only, categories all and object)
    assert rows[1] == ["base", "layer4", "8", "75.0 [16.3, 19.4]", "25.0 [15.3, 18.4]", "dog (25.0)"]
    assert rows[2] == ["tuned", "layer4", "8", "75.0", "25.0", "–"]
    assert rows[3] == ["net", "conv5", "–", "–", "–", "–"]


def test_effects_section():
    rows = table_rows(small_markdown(), "effects")
    assert rows[0] == ["model", "layer", "thresholds", "attack", "C", "T", "M", "S", "P", "O", "All"]
    assert [r[:4] for r in rows[1:]] == [["base", "layer4", "self", "fgsm_2"], ["base", "layer4", "clean", "fgsm_2"]]
    # C is category 0 (-12.34, interval excludes 0), All is category 6 (-9.34, interval holds 0)
    assert rows[1][4] == "-12.3 [-13.3, -0.3]*"
    assert rows[1][10] == "-9.3 [-10.3, +2.7]"


def test_model_effects_section():
    rows = table_rows(small_markdown(), "model_effects")
    assert rows[0] == ["model", "baseline", "layer", "category", "baseline %", "model %", "difference"]
    # the deepest layer only, one row per category in Table 2's order
    body = rows[1:]
    assert [r[:4] for r in body] == [["tuned", "base", "layer4", c] for c in tables.TABLE2_CATEGORIES]
    # color: 20.0 → 24.0, +4.0 [+2.0, +6.0] excludes 0; texture: +2.5 [+0.5, +4.5] too; material: +1.0 holds 0
    assert body[0][4:] == ["20.0", "24.0", "+4.0 [+2.0, +6.0]*"]
    assert body[1][4:] == ["21.0", "23.5", "+2.5 [+0.5, +4.5]*"]
    assert body[2][4:] == ["22.0", "23.0", "+1.0 [-1.0, +3.0]"]
    assert body[6][4:] == ["26.0", "21.0", "-5.0 [-7.0, -3.0]*"]


def test_model_effects_section_only_with_rows():
    def markdown(model_effects):
        return results_md.demo_results_markdown(
            results_md.DemoTables(
                small_models(),
                small_attacks(),
                small_table2(),
                small_ceilings(),
                small_units(),
                small_training(),
                small_effects(),
                small_ablation(),
                model_effects,
            )
        )

    for model_effects in (None, small_model_effects().iloc[:0]):
        md = markdown(model_effects)
        assert results_md.TITLES["model_effects"] not in md
        assert results_md.section_titles(md) == [t for k, t in results_md.TITLES.items() if k != "model_effects"]
    # after the attack effects, before the ceilings
    titles = results_md.section_titles(markdown(small_model_effects()))
    i = titles.index(results_md.TITLES["model_effects"])
    assert titles[i - 1 : i + 2] == [results_md.TITLES[k] for k in ("effects", "model_effects", "ceilings")]


def test_model_effects_section_with_two_datasets():
    frame = pd.concat([small_model_effects(), small_model_effects().assign(dataset="e")], ignore_index=True)
    text = results_md.model_effects_section(frame, [("d", "tuned", "layer4"), ("e", "tuned", "layer4")])
    lines = text.splitlines()
    assert lines[2] == "| dataset | model | baseline | layer | category | baseline % | model % | difference |"
    assert len(lines) == 4 + 2 * 7
    assert lines[4].startswith("| d | tuned | base | layer4 | color |")
    assert lines[11].startswith("| e | tuned | base | layer4 | color |")


def test_ablation_section():
    rows = table_rows(small_markdown(), "ablation")
    assert rows[0][-3:] == ["restored % drifted", "restored % random", "above"]
    assert rows[1] == ["base", "layer4", "fgsm_2", "self", "20", "7", "30.0", "16.0 [12.0, 20.0]", "yes"]
    assert rows[2] == ["base", "layer4", "fgsm_2", "clean", "20", "7", "10.0", "16.0 [12.0, 20.0]", "no"]


def test_no_effects_section_without_intervals():
    md = results_md.demo_results_markdown(
        results_md.DemoTables(
            small_models(), small_attacks(), small_table2(), small_ceilings(), small_units(), small_training()
        )
    )
    assert results_md.TITLES["effects"] not in md
    assert results_md.TITLES["ceilings"] in md


def test_most_common_label_ignores_empty_labels():
    frame = pd.DataFrame({"label": ["", "", "", "b", "a", "b"]})
    assert results_md.most_common_label(frame) == ("b", 2)
    assert results_md.most_common_label(frame.iloc[:3]) == ("", 0)


def test_ceilings_section():
    rows = table_rows(small_markdown(), "ceilings")
    assert rows[0] == ["model", "layer", "map", "C", "T", "M", "S", "P", "O"]
    # layer3's higher ceiling is not the deepest layer's; a tie goes to the first name.
    assert rows[1] == ["base", "layer4", "4×4", "0.540 (magenta)", "0.012 (striped)", "–", "0.310 (beach)", "–", "–"]
    assert rows[2] == ["tuned", "layer4", "–", "–", "–", "–", "–", "–", "–"]
    assert rows[3] == ["net", "conv5", "6×6", "0.700 (magenta)", "–", "–", "–", "–", "–"]


def test_training_section():
    rows = table_rows(small_markdown(), "training")
    assert rows[0] == [
        "model",
        "method",
        "layer",
        "acc. clean",
        "acc. fgsm_2",
        "acc. fgsm_8",
        "det. % clean",
        "det. % fgsm_2",
        "det. % fgsm_8",
    ]
    assert rows[1] == ["base", "standard", "layer4", "0.975", "0.900", "0.383", "87.9", "86.9", "85.4"]
    assert rows[2] == ["tuned", "at", "layer4", "0.500", "–", "–", "50.0", "50.0", "–"]


def test_dataset_column_with_two_datasets():
    attacks = pd.concat([small_attacks(), small_attacks().assign(dataset="e")], ignore_index=True)
    text = results_md.attacks_section(attacks)
    assert text.splitlines()[2] == "| dataset | model | fgsm_2 | fgsm_8 | noise_8 |"


def test_names_with_pipes_are_escaped():
    models = small_models()
    models.loc[0, "model"] = "a|b"
    assert "| a\\|b |" in results_md.models_section(models)


def test_write_demo_results_from_csvs_is_byte_stable(tmp_path):
    units = []
    for (d, m, layer), frame in small_units().items():
        path = tmp_path / f"{m}_{layer}.csv"
        store.write_csv(path, frame)
        units.append({"dataset": d, "model": m, "layer": layer, "path": path})
    paths = {}
    for name, frame in (
        ("models", small_models()),
        ("attacks", small_attacks()),
        ("table2", small_table2()),
        ("ceilings", small_ceilings()),
        ("training", small_training()),
        ("effects", small_effects()),
        ("ablation", small_ablation()),
        ("model_effects", small_model_effects()),
    ):
        paths[name] = tmp_path / f"{name}.csv"
        store.write_csv(paths[name], frame)
    outs = []
    for i in range(2):
        out = tmp_path / f"demo_results_{i}.md"
        inputs = results_md.DemoInputs(
            models_csv=paths["models"],
            attacks_csv=paths["attacks"],
            table2_csv=paths["table2"],
            ceilings_csv=paths["ceilings"],
            units=units,
            training_csv=paths["training"],
            effects_csv=paths["effects"],
            ablation_csv=paths["ablation"],
            model_effects_csv=paths["model_effects"],
        )
        results_md.write_demo_results(out, inputs)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0].decode() == small_markdown()
    assert str(tmp_path) not in outs[0].decode()


# --------------------------------------------------------------------------- the README block


def config_frames(cfg: dict) -> dict:
    """Frames with the demo config's models, attacks and layers; every measured value missing."""
    cfg = sort_keys(dict(cfg))  # the workflow sorts config keys: models and attacks by name
    models, attacks = cfg["models"], cfg["attacks"]
    clean = next(a for a, spec in attacks.items() if spec["method"] == "clean")
    modes = cfg.get("dissection", {}).get("threshold_modes", ["self", "clean"])

    def model_attacks(m):
        wanted = models[m].get("attacks", list(attacks))
        return [clean] + [a for a in attacks if a in wanted and a != clean]

    deepest = [
        (d, m, models[m]["layers"][-1]) for m in models for d in models[m].get("datasets", list(cfg["datasets"]))
    ]
    models_df = tables.models_table(models, {})
    for i, m in enumerate(models_df["model"]):
        weights = models[m]["weights"]
        if weights["source"] == "train":
            models_df.loc[i, "training_method"] = weights["method"]
            models_df.loc[i, "epochs"] = weights["epochs"]
    attack_rows, table2_rows, training_rows = [], [], []
    for d, m, layer in deepest:
        for a in model_attacks(m):
            attack_rows.append(
                {
                    **{c: NAN for c in tables.ATTACK_COLUMNS},
                    "dataset": d,
                    "model": m,
                    "attack": a,
                    "method": attacks[a]["method"],
                    "eps": 0.0 if a == clean else NAN,
                }
            )
            if a != clean and models[m]["weights"]["source"] == "train":
                training_rows.append(
                    {
                        **{c: NAN for c in tables.TRAINING_COLUMNS},
                        "dataset": d,
                        "model": m,
                        "attack": a,
                        "arch": models[m]["arch"],
                        "method": models[m]["weights"]["method"],
                        "layer": layer,
                    }
                )
        # table2.csv lists the clean set under every mode, as each attack.
        for mode in modes:
            for a in model_attacks(m):
                table2_rows += [
                    {
                        "dataset": d,
                        "model": m,
                        "layer": layer,
                        "attack": a,
                        "threshold_mode": mode,
                        "category": c,
                        "ratio_percent": NAN,
                    }
                    for c in tables.TABLE2_CATEGORIES
                ]
    # attack_effects.csv: every attack against the clean set (the bootstrap is on by default)
    effect_rows = [
        {**{c: NAN for c in tables.EFFECT_COLUMNS}, **{k: r[k] for k in ("dataset", "model", "layer", "attack")}}
        | {"threshold_mode": r["threshold_mode"], "category": r["category"], "shown": False}
        for r in table2_rows
        if r["attack"] != clean
    ]
    # model_effects.csv: every model with a baseline against it, at the deepest layer, clean images
    model_effect_rows = [
        {**{c: NAN for c in tables.MODEL_EFFECT_COLUMNS}, "dataset": d, "model": m, "baseline": b, "layer": layer}
        | {"threshold_mode": "self", "category": c, "shown": False}
        for m, b in Plan(cfg).model_baselines().items()
        for d, dm, layer in deepest
        if dm == m
        for c in tables.TABLE2_CATEGORIES
    ]
    return {
        "models": models_df,
        "model_effects": pd.DataFrame(model_effect_rows, columns=tables.MODEL_EFFECT_COLUMNS),
        "attacks": pd.DataFrame(attack_rows, columns=tables.ATTACK_COLUMNS),
        "table2": pd.DataFrame(table2_rows, columns=tables.TABLE2_COLUMNS),
        "effects": pd.DataFrame(effect_rows, columns=tables.EFFECT_COLUMNS),
        "ablation": pd.DataFrame(
            [r | {"units_set": "drifted"} for r in effect_rows if r["category"] == "all"],
            columns=ablation.ABLATION_COLUMNS,
        )
        if cfg.get("ablation", {}).get("enabled", True)
        else None,
        "ceilings": pd.DataFrame(columns=ceilings.CEILINGS_COLUMNS),
        "units": {k: pd.DataFrame(columns=tally.UNITS_COLUMNS) for k in deepest},
        "training": pd.DataFrame(training_rows, columns=tables.TRAINING_COLUMNS) if training_rows else None,
    }


def demo_placeholder_markdown() -> str:
    """The formatter's output for config/config.yaml with every measured value missing."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    return results_md.demo_results_markdown(results_md.DemoTables(**config_frames(cfg)))


def test_readme_embeds_the_demo_results_block():
    readme = (ROOT / "README.md").read_text()
    lines = readme.splitlines()
    assert lines.count(results_md.START_MARKER) == 1
    assert lines.count(results_md.END_MARKER) == 1
    block = results_md.embedded_block(readme)
    expected = demo_placeholder_markdown()
    assert results_md.section_titles(block) == results_md.section_titles(expected)
    assert results_md.table_headers(block) == results_md.table_headers(expected)
    # The block sits in "## Results of the demo".
    section = readme.split("## Results of the demo", 1)[1].split("\n## ", 1)[0]
    assert results_md.START_MARKER in section and results_md.END_MARKER in section


def test_embedded_block_needs_both_markers():
    with pytest.raises(ValueError):
        results_md.embedded_block(f"a\n{results_md.START_MARKER}\nb\n")
    assert results_md.embedded_block(f"a\n{results_md.START_MARKER}\nb\n{results_md.END_MARKER}\n") == "b\n"


# --------------------------------------------------------------------------- ceilings.csv


def test_write_ceilings_scores_each_map_size_once(tiny_broden, tmp_path, monkeypatch):
    calls = []
    real = ceilings.ideal_unit_iou

    def counted(dataset, rows, size, quantile, denominator, **kw):
        calls.append(tuple(size))
        return real(dataset, rows, size, quantile, denominator, **kw)

    monkeypatch.setattr(ceilings, "ideal_unit_iou", counted)
    datasets = {"tiny": {"root": tiny_broden, "split": "val", "n_images": 8}}
    layers = [
        {"dataset": "tiny", "model": m, "layer": layer, "arch": "resnet18", "num_classes": 16}
        for m in ("a", "b")
        for layer in ("layer3", "layer4")
    ]
    out = tmp_path / "ceilings.csv"
    frame = ceilings.write_ceilings(out, datasets, layers, quantile=0.02, denominator="lite")
    ds = BrodenDataset(tiny_broden)
    h3, w3 = ceilings.map_size("resnet18", 16, "layer3", ds.image_size)
    h4, w4 = ceilings.map_size("resnet18", 16, "layer4", ds.image_size)
    assert sorted(calls) == sorted({(h3, w3), (h4, w4)})
    assert list(frame.columns) == ceilings.CEILINGS_COLUMNS
    assert list(dict.fromkeys(zip(frame["model"], frame["layer"]))) == [
        ("a", "layer3"),
        ("a", "layer4"),
        ("b", "layer3"),
        ("b", "layer4"),
    ]
    sel = frame.loc[frame["layer"] == "layer4"]
    assert set(zip(sel["height"], sel["width"])) == {(h4, w4)}
    assert np.allclose(frame["iou"], frame["iou"].round(6))
    back = ceilings.read_ceilings(out)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    first = out.read_bytes()
    ceilings.write_ceilings(out, datasets, layers, quantile=0.02, denominator="lite")
    assert out.read_bytes() == first
    assert not math.isnan(frame["iou"].max())


def test_per_dataset_ceilings_merge_to_the_all_at_once_file(tiny_broden, tmp_path):
    """Rule ceilings writes one file per dataset; merged in layer order they are the file that
    one job over every dataset writes, byte for byte, with the datasets' layers interleaved."""
    datasets = {
        "a": {"root": tiny_broden, "split": "val", "n_images": 8},
        "b": {"root": tiny_broden, "split": "train", "n_images": 6},
    }
    layers = [
        {"dataset": d, "model": m, "layer": layer, "arch": "resnet18", "num_classes": 16}
        for m, d in (("m1", "a"), ("m2", "b"), ("m3", "a"))
        for layer in ("layer3", "layer4")
    ]
    whole = tmp_path / "whole.csv"
    ceilings.write_ceilings(whole, datasets, layers, quantile=0.02, denominator="lite")
    parts = []
    for name in ("b", "a"):  # file order does not matter
        part = tmp_path / f"{name}.csv"
        mine = [item for item in layers if item["dataset"] == name]
        ceilings.write_ceilings(part, {name: datasets[name]}, mine, quantile=0.02, denominator="lite")
        parts.append(part)
    merged = tmp_path / "merged.csv"
    ceilings.merge_ceilings(merged, parts, layers)
    assert merged.read_bytes() == whole.read_bytes()
    with pytest.raises(ArtifactError, match=r"lack the layer\(s\) \[\('a', 'm1', 'layer3'\)"):
        ceilings.merge_ceilings(tmp_path / "x.csv", parts[:1], layers)
