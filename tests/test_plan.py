"""The study's plan: every job the config asks for, checked against hand-listed cases and against
plain loops over the config."""

import copy
import itertools

import pytest
import yaml

from advdissect.errors import ConfigError
from advdissect.study import config as adconfig
from advdissect.study.plan import PATHS, Dissection, Plan, glob_pattern, path

SMALL = yaml.safe_load(
    """
datasets:
  syn: {source: synthetic, synthetic: {n_train: 20, n_val: 10, image_size: 32, n_classes: 4}, split: val,
        n_images: 10, shard_size: 4}
  folder: {source: imagefolder, path: /data/folder, image_size: 32}
models:
  net:
    arch: resnet18
    num_classes: 4
    layers: [layer3, layer4]
    weights: {source: train, dataset: syn, method: standard, epochs: 1}
  net_at:
    arch: resnet18
    num_classes: 4
    layers: [layer4]
    attacks: [fgsm]
    weights: {source: train, dataset: syn, init: net, method: at, epochs: 1, eps: 4/255}
  chance:
    arch: alexnet
    num_classes: 4
    layers: [conv5]
    attacks: [clean]
    weights: {source: random, seed: 0}
  folder_net:
    arch: resnet18
    num_classes: 4
    layers: [layer4]
    attacks: [clean]
    weights: {source: train, dataset: folder, method: standard, epochs: 1}
attacks:
  clean: {method: clean}
  fgsm: {method: fgsm, eps: 8/255}
  noise: {method: noise, eps: 8/255, seed: 0}
dissection:
  threshold_modes: [self, clean]
  bootstrap: {resamples: 10}
ablation: {enabled: true}
figures:
  units: {net: {layer4: [3, 1]}}
"""
)


@pytest.fixture
def plan():
    cfg = copy.deepcopy(SMALL)
    adconfig.validate(cfg, adconfig.load_schema())
    adconfig.fill_defaults(cfg)
    adconfig.check_semantics(cfg)
    return Plan(cfg)


def test_image_sets_put_the_clean_set_first_and_follow_config_order(plan):
    assert plan.clean == "clean"
    assert plan.model_attacks("net") == ["clean", "fgsm", "noise"]
    assert plan.model_attacks("net_at") == ["clean", "fgsm"]
    assert plan.attacked_sets("chance") == []
    # An ImageFolder set only trains: nothing is dissected on it.
    assert plan.model_datasets("net") == ["syn"]
    assert plan.chains() == [
        ("syn", "net", "clean"),
        ("syn", "net", "fgsm"),
        ("syn", "net", "noise"),
        ("syn", "net_at", "clean"),
        ("syn", "net_at", "fgsm"),
        ("syn", "chance", "clean"),
        ("syn", "folder_net", "clean"),
    ]


def test_dissections_are_every_image_set_mode_and_layer(plan):
    expected = []
    for dataset, model, attack in plan.chains():
        modes = ["self"] if attack == "clean" else ["self", "clean"]
        for mode, layer in itertools.product(modes, SMALL["models"][model]["layers"]):
            expected.append(Dissection(dataset, model, attack, mode, layer))
    assert plan.dissections() == expected
    assert len(expected) == 2 + 2 * 2 * 2 + 1 + 1 * 2 * 1 + 1 + 1  # 15
    assert plan.dissections("syn", "net", "layer4") == [e for e in expected if e[1:5:3] == ("net", "layer4")]
    rows = plan.dissection_rows("syn", "net_at", "layer4")
    assert [(r["attack"], r["mode"], r["method"]) for r in rows] == [
        ("clean", "self", "clean"),
        ("fgsm", "self", "fgsm"),
        ("fgsm", "clean", "fgsm"),
    ]


def test_a_dissection_under_clean_thresholds_reads_the_clean_sets(plan):
    assert plan.threshold_identity("syn", "net", "fgsm", "clean", "layer3") == {
        "dataset": "syn",
        "model": "net",
        "attack": "clean",
        "layer": "layer3",
    }
    assert plan.threshold_identity("syn", "net", "fgsm", "self", "layer3")["attack"] == "fgsm"
    found = plan.shard_dissections("syn", "net", "fgsm")
    assert [(d["mode"], d["layer"]) for d in found] == [
        ("self", "layer3"),
        ("self", "layer4"),
        ("clean", "layer3"),
        ("clean", "layer4"),
    ]
    assert plan.shard_thresholds("syn", "net", "fgsm") == [
        "results/syn/net/clean/thresholds/layer3.h5",
        "results/syn/net/clean/thresholds/layer4.h5",
        "results/syn/net/fgsm/thresholds/layer3.h5",
        "results/syn/net/fgsm/thresholds/layer4.h5",
    ]
    # The clean set is dissected once, under its own thresholds.
    assert [d["mode"] for d in plan.shard_dissections("syn", "net", "clean")] == ["self", "self"]


def test_shards_cover_the_dissected_images(plan):
    assert plan.shard_plan("syn").n_shards == 3  # 10 images, 4 per shard
    assert plan.shards("syn") == ["0000", "0001", "0002"]
    assert plan.shard_files("images", "syn", model="net", attack="fgsm") == [
        f"results/syn/net/fgsm/images/{s}.h5" for s in ("0000", "0001", "0002")
    ]
    # A field given by the caller never replaces the shard.
    assert plan.shard_files("segmentations", "syn", shard="9999")[0] == "results/segmentations/syn/0000.h5"


def test_weights_and_training_inputs_follow_each_source(plan):
    assert plan.model_weights("net") == "results/models/net/weights.pt"
    assert plan.model_weights("chance") is None
    assert plan.weights_input("chance") == {}
    assert plan.train_inputs("net_at") == {
        "dataset": "resources/synthetic/syn/index.csv",
        "init": "results/models/net/weights.pt",
    }
    assert plan.train_inputs("folder_net") == {"dataset": "/data/folder/train"}
    assert plan.training_params("folder_net")["image_size"] == 32
    assert "dataset" not in plan.training_params("net_at") and "init" not in plan.training_params("net_at")
    assert plan.trained_models() == ["net", "net_at", "folder_net"]
    assert (plan.training_source("net"), plan.training_source("folder_net")) == ("synthetic", "imagefolder")
    assert plan.init_sha256("net") is None and plan.init_sha256("net_at") is None  # net is trained here, no pin
    assert plan.model_baselines() == {"net_at": "net"}


def test_summaries_ablation_and_pictures(plan):
    assert plan.deepest_layers() == [
        {"dataset": "syn", "model": m, "layer": layer}
        for m, layer in [("net", "layer4"), ("net_at", "layer4"), ("chance", "conv5"), ("folder_net", "layer4")]
    ]
    assert plan.ablation_paths() == [
        "results/syn/net/fgsm/ablation/layer4.csv",
        "results/syn/net/noise/ablation/layer4.csv",
        "results/syn/net_at/fgsm/ablation/layer4.csv",
    ]
    assert plan.ablation_units("syn", "net", "fgsm", "layer4") == [
        "results/syn/net/clean/self/units/layer4.csv",
        "results/syn/net/fgsm/self/units/layer4.csv",
        "results/syn/net/clean/self/units/layer4.csv",
        "results/syn/net/fgsm/clean/units/layer4.csv",
    ]
    assert plan.pictured_units("net", "layer4") == [3, 1]
    assert plan.pictured_units("net", "layer3") == []
    inputs = plan.browser_inputs("syn", "net_at", "layer4")
    assert [k for k in inputs if k.startswith("units_")] == ["units_clean_self", "units_fgsm_self", "units_fgsm_clean"]
    assert inputs["thresholds_fgsm"] == "results/syn/net_at/fgsm/thresholds/layer4.h5"
    assert len(inputs["activations_clean"]) == 3
    pictures = plan.unit_picture_inputs("syn", "net_at", "layer4")
    assert [k for k in pictures if k.startswith("units_")] == ["units_clean", "units_fgsm"]
    assert len(plan.bootstrap_paths(plan.dissections())) == 15
    assert plan.ceiling_datasets() == ["syn"]


def test_default_targets(plan):
    targets = plan.all_targets()
    assert "results/summary/training.csv" in targets and "results/summary/ablation.csv" in targets
    assert "results/figures/units/syn/net/layer4" in targets
    assert "results/figures/units/syn/chance/conv5" not in targets  # no attacked set to picture
    assert "results/browser/syn/chance/conv5" in targets
    assert len([t for t in targets if t.startswith("results/figures/detectors/")]) == len(plan.figure_layers()) == 5


def test_exactly_one_clean_attack(plan):
    cfg = copy.deepcopy(plan.config)
    cfg["attacks"]["clean2"] = {"method": "clean"}
    with pytest.raises(ConfigError, match="exactly one attack must have method 'clean'"):
        _ = Plan(cfg).clean


def test_paths_fill_what_is_given_and_glob_the_rest():
    assert path("units", dataset="d", mode="self") == "results/d/{model}/{attack}/self/units/{layer}.csv"
    assert glob_pattern("iou") == "results/*/*/*/*/iou/*.h5"
    for kind in PATHS:
        assert "{" not in glob_pattern(kind)
