"""advdissect.specs: each spec is built from its config section, takes the schema's defaults and
refuses a wrong value with an error naming the config key it came from."""

from __future__ import annotations

import dataclasses
import math

import pytest
import yaml

from advdissect import specs
from advdissect.errors import ConfigError
from advdissect.specs import (
    METHOD_DEFAULTS,
    AttackSpec,
    ModelSpec,
    ShardPlan,
    TrainSpec,
    attack_spec,
    model_spec,
    parse_fraction,
    schema_defaults,
    train_spec,
)

# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "value,expected",
    [(0, 0.0), (0.5, 0.5), (3, 3.0), ("2/255", 2 / 255), (" 8 / 255 ", 8 / 255), ("0.25", 0.25), ("1/3", 1 / 3)],
)
def test_parse_fraction_reads_numbers_and_ratios(value, expected):
    assert parse_fraction(value) == expected


@pytest.mark.parametrize("value", [True, None, [1], "a/255", "1/0", "1/2/3", "", -1, "-2/255", math.inf, math.nan])
def test_parse_fraction_names_the_key_of_a_bad_value(value):
    with pytest.raises(ConfigError, match=r"^config: attacks\.x\.eps: "):
        parse_fraction(value, "attacks.x.eps")


def test_pixel_grid():
    assert specs.on_pixel_grid(0.0) and specs.on_pixel_grid(1.0) and specs.on_pixel_grid(parse_fraction("7/255"))
    assert not specs.on_pixel_grid(0.01) and not specs.on_pixel_grid(2.5 / 255)
    assert [specs.grid_steps(k / 255) for k in (0, 1, 8, 255)] == [0, 1, 8, 255]


# ---------------------------------------------------------------- the schema's defaults


def test_schema_defaults_are_the_schema_files():
    with specs.SCHEMA.open() as handle:
        schema = yaml.safe_load(handle)
    dissection = schema["properties"]["dissection"]["properties"]
    want = {key: prop["default"] for key, prop in dissection.items() if "default" in prop}
    assert schema_defaults("dissection") == want and want  # not empty
    train = schema_defaults("weights.train")
    assert {"method", "epochs", "batch_size", "lr", "eps", "precision"} <= set(train)
    with pytest.raises(KeyError):
        schema_defaults("no_such_section")


def test_train_spec_defaults_are_the_schemas():
    defaults = schema_defaults("weights.train")
    spec = TrainSpec()
    for key, value in defaults.items():
        want = parse_fraction(value) if key == "eps" else value
        assert getattr(spec, key) == want, key
    # every field but `key` has a schema default: nothing is defaulted in the code alone
    assert {f.name for f in dataclasses.fields(TrainSpec)} - {"key"} == set(defaults)
    assert train_spec({}) == spec


# ---------------------------------------------------------------- shard plans and models


def test_shard_plan():
    plan = ShardPlan("val", n_images=10, shard_size=4)
    assert plan.n_shards == 3 and ShardPlan("all", 8, 4).n_shards == 2 and ShardPlan("all", 1, 100).n_shards == 1
    assert plan.to_dict() == {"split": "val", "n_images": 10, "shard_size": 4}
    for key, value in (("n_images", 0), ("shard_size", -1), ("n_images", 2.0), ("shard_size", True)):
        with pytest.raises(ValueError, match=f"{key} must be a whole number >= 1"):
            ShardPlan(**{"split": "val", "n_images": 10, "shard_size": 4, key: value})


def _config(weights: dict) -> dict:
    return {
        "seed": 11,
        "models": {"m": {"arch": "resnet18", "num_classes": 7, "normalization": "none", "weights": weights}},
    }


def test_model_spec_seed_and_pin():
    # a random init takes its own seed, else the study's; every other source the study's
    assert model_spec(_config({"source": "random", "seed": 3}), "m").seed == 3
    assert model_spec(_config({"source": "random"}), "m").seed == 11
    spec = model_spec(_config({"source": "file", "path": "w.pt", "seed": 3, "sha256": "ab" * 32}), "m")
    assert spec == ModelSpec("resnet18", 7, "none", seed=11, weights_sha256="ab" * 32)
    assert spec.to_dict()["weights_sha256"] == "ab" * 32
    # unpinned, the dict has no pin at all
    assert model_spec(_config({"source": "random"}), "m").to_dict() == {
        "arch": "resnet18",
        "num_classes": 7,
        "normalization": "none",
        "seed": 11,
    }


# ---------------------------------------------------------------- attacks


@pytest.mark.parametrize("eps,steps", [("1/255", 1), ("2/255", 2), ("4/255", 5), ("8/255", 10), ("16/255", 20)])
def test_iterative_attack_defaults(eps, steps):
    # step 1/255, steps min(255·ε + 4, 1.25·255·ε) (Kurakin et al. 2017), whole, at least 1
    for method in ("bim", "pgd"):
        spec = attack_spec("a", {"method": method, "eps": eps})
        assert (spec.step, spec.steps, spec.eps) == (1 / 255, steps, parse_fraction(eps))
        assert (spec.labels, spec.target, spec.seed, spec.targeted) == ("prediction", "least_likely", 0, False)
    assert attack_spec("a", {"method": "pgd", "eps": eps, "steps": 3, "step": "2/255"}).steps == 3


def test_method_defaults_and_dicts():
    for method in ("deepfool", "cw"):
        spec = attack_spec("a", {"method": method})
        assert spec.eps == 0
        assert {key: getattr(spec, key) for key in METHOD_DEFAULTS[method]} == METHOD_DEFAULTS[method]
    apgd = attack_spec("a", {"method": "apgd", "eps": "4/255", "loss": "dlr", "restarts": 2})
    assert (apgd.steps, apgd.restarts, apgd.loss) == (100, 2, "dlr")
    assert attack_spec("a", {"method": "cw", "c": "1/2"}).c == 0.5  # reals may be 'a/b'
    # a method's dict holds only the fields it has: what the jobs' params were before the others existed
    fgsm = attack_spec("a", {"method": "fgsm", "eps": "2/255"}).to_dict()
    assert set(fgsm) == {"method", "eps", "step", "steps", "labels", "target", "seed", "name"}
    assert set(attack_spec("a", {"method": "deepfool"}).to_dict()) >= {"overshoot", "candidates"}
    assert "c" not in attack_spec("a", {"method": "deepfool"}).to_dict()
    assert attack_spec("clean", {"method": "clean"}) == AttackSpec(method="clean", name="clean")


def test_labels_and_targets():
    assert attack_spec("a", {"method": "fgsm", "eps": "1/255", "labels": True}).labels == "true"  # YAML's `true`
    spec = attack_spec("a", {"method": "bim", "eps": "2/255", "labels": "target", "target": "3"})
    assert spec.target == 3 and spec.targeted
    assert (
        attack_spec("a", {"method": "pgd", "eps": "2/255", "labels": "target", "target": "random"}).target == "random"
    )


@pytest.mark.parametrize(
    "settings,key,why",
    [
        ({"method": "jsma"}, "method", "'jsma' is unknown"),
        ("fgsm", "", "expected a mapping"),
        ({"method": "fgsm"}, "eps", "required for method 'fgsm'"),
        ({"method": "fgsm", "eps": "2/255", "steps": 3}, "steps", "not used by method 'fgsm'"),
        ({"method": "clean", "eps": 0}, "eps", "not used by method 'clean'"),
        ({"method": "deepfool", "eps": "2/255"}, "eps", "not used by method 'deepfool'"),
        ({"method": "fgsm", "eps": 0.01}, "eps", "not a multiple of 1/255"),
        ({"method": "fgsm", "eps": "0.1/255"}, "eps", "not a multiple of 1/255"),
        ({"method": "fgsm", "eps": 2}, "eps", r"must be in \(0, 1\]"),
        ({"method": "fgsm", "eps": "-1/255"}, "eps", "finite number >= 0"),
        ({"method": "bim", "eps": "2/255", "step": 0.003}, "step", "not a multiple of 1/255"),
        ({"method": "bim", "eps": "2/255", "steps": 0}, "steps", "integer >= 1"),
        ({"method": "fgsm", "eps": "2/255", "labels": "mine"}, "labels", "'mine' is not allowed"),
        ({"method": "noise", "eps": "2/255", "labels": "true"}, "labels", "not used by method 'noise'"),
        ({"method": "fgsm", "eps": "2/255", "labels": "target"}, "target", "required when labels is 'target'"),
        ({"method": "fgsm", "eps": "2/255", "target": 3}, "target", "needs 'labels: target'"),
        ({"method": "fgsm", "eps": "2/255", "labels": "target", "target": -1}, "target", "not allowed"),
        ({"method": "fgsm", "eps": "2/255", "seed": -1}, "seed", "integer >= 0"),
        ({"method": "deepfool", "candidates": 1}, "candidates", "integer >= 2"),
        ({"method": "deepfool", "overshoot": -0.1}, "overshoot", "finite number >= 0"),
        ({"method": "cw", "c": 0}, "c", "finite number > 0"),
        ({"method": "cw", "lr": "x"}, "lr", "a number or 'a/b'"),
        ({"method": "apgd", "eps": "2/255", "loss": "hinge"}, "loss", "'hinge' is not allowed"),
        ({"method": "apgd", "eps": "2/255", "restarts": 0}, "restarts", "integer >= 1"),
    ],
)
def test_attack_errors_name_the_key(settings, key, why):
    where = "attacks.atk" + (f".{key}" if key else "")
    with pytest.raises(ConfigError, match=rf"^config: {where.replace('.', '[.]')}: .*{why}"):
        attack_spec("atk", settings)


def test_attack_specs_are_checked_when_built_directly():
    with pytest.raises(ConfigError, match=r"attacks\.x\.kappa: not used by method 'fgsm'"):
        AttackSpec(method="fgsm", eps=2 / 255, name="x", kappa=0.0)
    with pytest.raises(ConfigError, match=r"attacks\.attack\.step: must be in \(0, 1\]"):
        AttackSpec(method="pgd", eps=2 / 255, steps=3)
    spec = AttackSpec(method="fgsm", eps=2 / 255)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.eps = 4 / 255


# ---------------------------------------------------------------- training


def test_train_spec_reads_settings():
    key = "models.r.weights"
    settings = {"source": "train", "dataset": "syn", "init": "base", "image_size": 64}  # what, not how
    spec = train_spec({**settings, "method": "at", "eps": "8/255", "lr": 1, "grad_clip": 5}, key=key)
    assert (spec.method, spec.eps, spec.lr, spec.grad_clip) == ("at", 8 / 255, 1.0, 5.0)
    assert isinstance(spec.lr, float) and isinstance(spec.grad_clip, float)
    assert spec.key == key and "key" not in spec.to_dict()
    assert spec == train_spec({"method": "at", "eps": "8/255", "lr": 1.0, "grad_clip": 5.0})  # `key` is not compared
    assert set(spec.to_dict()) == set(schema_defaults("weights.train"))


@pytest.mark.parametrize(
    "settings,key,why",
    [
        ({"epoch": 3}, "", "unknown key"),
        ({"method": "mixup"}, "method", "allowed: standard, at, consistency, atda"),
        ({"optimizer": "rmsprop"}, "optimizer", "allowed: sgd, adam"),
        ({"precision": "float16"}, "precision", "allowed: bf16, float32"),
        ({"epochs": 0}, "epochs", "integer >= 1"),
        ({"batch_size": 2.5}, "batch_size", "integer >= 1"),
        ({"lr": 0}, "lr", "number > 0"),
        ({"momentum": -0.1}, "momentum", "finite number >= 0"),
        ({"weight_decay": math.inf}, "weight_decay", "finite number >= 0"),
        ({"warmup": 1}, "warmup", r"\[0, 1\)"),
        ({"eps": "x"}, "eps", "a number or 'a/b'"),
        ({"method": "at", "eps": 0}, "eps", "needs eps > 0"),
        ({"feature": ""}, "feature", "'logits' or a layer name"),
        ({"margin": True}, "margin", "only method 'atda'"),
    ],
)
def test_training_errors_name_the_key(settings, key, why):
    where = "models.r.weights" + (f".{key}" if key else "")
    with pytest.raises(ConfigError, match=rf"^config: {where.replace('.', '[.]')}: .*{why}"):
        train_spec(settings, key="models.r.weights")


def test_atda_takes_a_margin():
    assert train_spec({"method": "atda", "margin": True, "eps": "4/255"}).margin is True


# ---------------------------------------------------------------- dissection defaults


def test_the_library_dissects_with_the_schemas_defaults():
    import inspect

    from advdissect.dissect import ceilings, counts, thresholds

    dissection = schema_defaults("dissection")
    assert thresholds.DEFAULT_QUANTILE == dissection["quantile"]
    assert counts.DEFAULT_DENOMINATOR == dissection["denominator"]
    for function in (ceilings.ideal_unit_iou, ceilings.ceilings_table, ceilings.write_ceilings):
        parameters = inspect.signature(function).parameters
        assert parameters["quantile"].default == dissection["quantile"]
        assert parameters["denominator"].default == dissection["denominator"]
    assert inspect.signature(counts.iou).parameters["denominator"].default == dissection["denominator"]
    schema = yaml.safe_load(specs.SCHEMA.read_text(encoding="utf-8"))
    assert tuple(schema["properties"]["dissection"]["properties"]["denominator"]["enum"]) == counts.DENOMINATORS
