"""Config validation: each bad value gives one line naming the key and what is allowed."""

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from advdissect import specs
from advdissect.errors import ConfigError
from advdissect.study import config as adconfig
from advdissect.study.datasets import dataset_size, shard_plan
from advdissect.study.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = adconfig.load_schema()
DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def checked(cfg):
    """Validate and cross-check a config, as the Snakefile does (minus the layer check)."""
    adconfig.validate(cfg, SCHEMA)
    _fill_defaults(cfg)
    adconfig.check_semantics(cfg)
    return cfg


def _fill_defaults(cfg):
    adconfig.fill_defaults(cfg)


def bad(mutate):
    cfg = copy.deepcopy(DEFAULT)
    mutate(cfg)
    with pytest.raises(ConfigError) as info:
        checked(cfg)
    message = str(info.value)
    assert "\n" not in message
    return message


def _with(mutate):
    cfg = copy.deepcopy(DEFAULT)
    mutate(cfg)
    return cfg


@pytest.mark.parametrize(
    "path", ["config/config.yaml", "config/paper.yaml", "config/imagenet_finetune.yaml", "config/rehearsal.yaml"]
)
def test_shipped_configs_are_valid(path):
    cfg = yaml.safe_load((ROOT / path).read_text())
    checked(cfg)
    assert Plan(cfg).clean == "clean"


def test_defaults_are_filled_in():
    cfg = checked(copy.deepcopy(DEFAULT))
    assert cfg["dissection"]["quantile"] == 0.005
    assert cfg["models"]["resnet18"]["normalization"] == "imagenet"


def test_unknown_top_level_key():
    message = bad(lambda c: c.update(sharding=3))
    assert message.startswith("config: (top level): unknown key 'sharding' (allowed: ")
    assert "attacks" in message and "datasets" in message


def test_unknown_nested_key():
    message = bad(lambda c: c["models"]["resnet18"].update(layerz=["layer4"]))
    assert message == (
        "config: models.resnet18: unknown key 'layerz' "
        "(allowed: arch, attacks, baseline, datasets, layers, normalization, num_classes, weights)"
    )


def test_wrong_type():
    message = bad(lambda c: c["dissection"].update(batch_size="many"))
    assert message == "config: dissection.batch_size: 'many' is not of type 'integer'"


def test_shard_size_zero():
    message = bad(lambda c: c["datasets"]["synthetic"].update(shard_size=0))
    assert message == "config: datasets.synthetic.shard_size: 0 is less than the minimum of 1"


@pytest.mark.parametrize("q", [0, 1, 1.5, -0.1])
def test_quantile_outside_open_unit_interval(q):
    message = bad(lambda c: c["dissection"].update(quantile=q))
    assert message.startswith("config: dissection.quantile: ")


def test_negative_eps():
    message = bad(lambda c: c["attacks"]["fgsm_2"].update(eps=-0.01))
    assert message == "config: attacks.fgsm_2.eps: must be a finite number >= 0, got -0.01"


def test_eps_not_in_pixel_units():
    message = bad(lambda c: c["attacks"]["fgsm_2"].update(eps=0.01))
    assert message == (
        "config: attacks.fgsm_2.eps: 0.01 is not a multiple of 1/255 "
        "(images are stored as uint8; write it as k/255, e.g. 3/255)"
    )


def test_eps_garbage_string():
    message = bad(lambda c: c["attacks"]["fgsm_2"].update(eps="two/255"))
    assert message.startswith("config: attacks.fgsm_2.eps: ")


def test_eps_required():
    message = bad(lambda c: c["attacks"]["fgsm_2"].pop("eps"))
    assert message == "config: attacks.fgsm_2.eps: required for method 'fgsm' (e.g. eps: 2/255)"


@pytest.mark.parametrize("line", ["labels: true", 'labels: "true"'])
def test_true_labels_quoted_or_not(line):
    """Eq. 5 as a user writes it: YAML reads an unquoted `true` as a boolean."""
    cfg = copy.deepcopy(DEFAULT)
    cfg["attacks"]["fgsm_2"].update(yaml.safe_load(line))
    checked(cfg)
    assert Plan(cfg).attack_specs["fgsm_2"].labels == "true"


def test_unknown_attack_method():
    message = bad(lambda c: c["attacks"]["fgsm_2"].update(method="laser"))
    assert message == (
        "config: attacks.fgsm_2.method: 'laser' is not one of "
        "'clean', 'fgsm', 'bim', 'pgd', 'noise', 'deepfool', 'cw', 'apgd', 'apgd_t', 'square', 'fab_t', 'autoattack'"
    )


def test_l2_and_apgd_attacks_accepted_with_defaults():
    cfg = copy.deepcopy(DEFAULT)
    cfg["attacks"].update(
        {
            "deepfool": {"method": "deepfool"},
            "cw": {"method": "cw", "c": 2, "kappa": "1/10"},
            "apgd_ce_4": {"method": "apgd", "eps": "4/255", "loss": "ce"},
            "apgd_dlr_4": {"method": "apgd", "eps": "4/255", "loss": "dlr", "restarts": 3, "steps": 50, "seed": 1},
        }
    )
    specs_ = Plan(checked(cfg)).attack_specs
    assert (specs_["deepfool"].steps, specs_["deepfool"].overshoot, specs_["deepfool"].candidates) == (50, 0.02, 10)
    assert (specs_["cw"].c, specs_["cw"].kappa, specs_["cw"].steps, specs_["cw"].lr) == (2.0, 0.1, 100, 0.01)
    assert (specs_["apgd_ce_4"].steps, specs_["apgd_ce_4"].restarts, specs_["apgd_ce_4"].loss) == (100, 1, "ce")
    assert (specs_["apgd_dlr_4"].steps, specs_["apgd_dlr_4"].restarts, specs_["apgd_dlr_4"].seed) == (50, 3, 1)


AUTOATTACK_FAMILY = {
    "apgd_t_4": {"method": "apgd_t", "eps": "4/255"},
    "square_4": {"method": "square", "eps": "4/255", "queries": 1000, "p_init": "1/10", "seed": 2},
    "fab_t_4": {"method": "fab_t", "eps": "4/255", "targets": 3, "restarts": 2},
    "aa_4": {"method": "autoattack", "eps": "4/255", "steps": 20, "queries": 500},
}


def test_autoattack_family_accepted_with_defaults():
    cfg = _with(lambda c: c["attacks"].update(copy.deepcopy(AUTOATTACK_FAMILY)))
    specs_ = Plan(checked(cfg)).attack_specs
    assert (specs_["apgd_t_4"].steps, specs_["apgd_t_4"].restarts, specs_["apgd_t_4"].targets) == (100, 1, 9)
    assert (specs_["square_4"].queries, specs_["square_4"].p_init, specs_["square_4"].restarts) == (1000, 0.1, 1)
    assert (specs_["fab_t_4"].steps, specs_["fab_t_4"].targets, specs_["fab_t_4"].restarts) == (100, 3, 2)
    assert (specs_["aa_4"].steps, specs_["aa_4"].targets, specs_["aa_4"].queries) == (20, 9, 500)


@pytest.mark.parametrize("method", ["apgd_t", "autoattack"])
def test_targeted_dlr_needs_four_classes(method):
    def mutate(c):
        three = {"arch": "resnet18", "num_classes": 3, "layers": ["layer4"], "weights": {"source": "random"}}
        c["models"]["three"] = three
        c["attacks"]["x"] = {"method": method, "eps": "4/255"}

    message = bad(mutate)
    assert message.startswith(f"config: attacks.x.method: {method} needs a model of at least 4 classes"), message


def test_autoattack_config_plans(tmp_path):
    """`snakemake -n` plans an attack job of every new attack (the demo's first model plus them)."""

    def mutate(c):
        c["models"] = {"resnet18": c["models"]["resnet18"]}
        c["datasets"] = {"synthetic": c["datasets"]["synthetic"]}
        c["attacks"] = {"clean": {"method": "clean"}, **copy.deepcopy(AUTOATTACK_FAMILY)}

    cfg = _with(mutate)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile")]
    cmd += ["--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "--cores", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    planned = set(re.findall(r"attack=(\w+)", output))
    assert set(AUTOATTACK_FAMILY) <= planned, planned


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({"method": "deepfool", "eps": "2/255"}, "config: attacks.x.eps: not used by method 'deepfool' (allowed: "),
        ({"method": "cw", "eps": "2/255"}, "config: attacks.x.eps: not used by method 'cw' (allowed: "),
        ({"method": "cw", "seed": 3}, "config: attacks.x.seed: not used by method 'cw' (allowed: "),
        ({"method": "cw", "overshoot": 0.1}, "config: attacks.x.overshoot: not used by method 'cw' (allowed: "),
        (
            {"method": "deepfool", "labels": "true"},
            "config: attacks.x.labels: not used by method 'deepfool' (allowed: ",
        ),
        ({"method": "apgd", "eps": "4/255", "c": 1}, "config: attacks.x.c: not used by method 'apgd' (allowed: "),
        ({"method": "apgd", "eps": "4/255", "step": "1/255"}, "config: attacks.x.step: not used by method 'apgd'"),
        ({"method": "fgsm", "eps": "4/255", "loss": "ce"}, "config: attacks.x.loss: not used by method 'fgsm'"),
        ({"method": "pgd", "eps": "4/255", "restarts": 2}, "config: attacks.x.restarts: not used by method 'pgd'"),
        ({"method": "apgd"}, "config: attacks.x.eps: required for method 'apgd' (e.g. eps: 2/255)"),
        ({"method": "apgd", "eps": 0.01}, "config: attacks.x.eps: 0.01 is not a multiple of 1/255"),
        ({"method": "apgd", "eps": "4/255", "loss": "l2"}, "config: attacks.x.loss: "),
        ({"method": "apgd", "eps": "4/255", "restarts": 0}, "config: attacks.x.restarts: "),
        ({"method": "deepfool", "steps": 0}, "config: attacks.x.steps: "),
        ({"method": "deepfool", "candidates": 1}, "config: attacks.x.candidates: "),
        ({"method": "deepfool", "overshoot": -0.5}, "config: attacks.x.overshoot: must be a finite number >= 0"),
        ({"method": "cw", "c": 0}, "config: attacks.x.c: must be a finite number > 0, got 0"),
        ({"method": "cw", "lr": "0/1"}, "config: attacks.x.lr: must be a finite number > 0, got 0.0"),
        ({"method": "cw", "kappa": "much"}, "config: attacks.x.kappa: "),
    ],
)
def test_l2_and_apgd_keys_refused(settings, expected):
    message = bad(lambda c: c["attacks"].update(x=settings))
    assert message.startswith(expected), message


def test_exactly_one_clean_attack():
    message = bad(lambda c: c["attacks"].pop("clean"))
    assert message.startswith("config: attacks: exactly one attack must have method 'clean' (found 0")


def test_bad_name():
    message = bad(lambda c: c["attacks"].update({"fgsm 2": {"method": "fgsm", "eps": "2/255"}}))
    assert message == "config: attacks: name 'fgsm 2' may use only letters, digits, '_' and '-'"


def test_num_classes_must_match_the_synthetic_classes():
    message = bad(lambda c: c["models"]["resnet18"].update(num_classes=10))
    assert message == "config: models.resnet18.num_classes: 10 but dataset 'synthetic' has 16 classes"


def test_a_target_class_beyond_a_models_classes_is_refused_at_planning():
    def mutate(c):
        c["attacks"]["fgsm_t"] = {"method": "fgsm", "eps": "2/255", "labels": "target", "target": 16}

    message = bad(mutate)
    assert message == "config: attacks.fgsm_t.target: class 16 does not exist in model 'resnet18' (16 classes: 0..15)"


def test_a_negative_synthetic_seed_is_refused_at_planning():
    message = bad(lambda c: c["datasets"]["synthetic"]["synthetic"].update(seed=-1))
    assert message.startswith("config: datasets.synthetic.synthetic.seed: -1 is less than the minimum of 0")


def test_training_on_the_broden_layout_is_refused():
    message = bad(lambda c: c["datasets"]["synthetic"]["synthetic"].update(layout="broden"))
    assert message == (
        "config: models.resnet18.weights.dataset: 'synthetic' has the broden layout, which has no class task "
        "to train on; use weights source random or file"
    )


@pytest.mark.parametrize("key", ["n_train", "n_val"])
def test_the_recognition_layout_needs_train_and_val_images(key):
    message = bad(lambda c: c["datasets"]["synthetic"]["synthetic"].update({key: 0}))
    expected = f"config: datasets.synthetic.synthetic.{key}: the recognition layout needs at least 1 image, got 0"
    assert message == expected


def test_unknown_init_model():
    message = bad(lambda c: c["models"]["resnet18_at"]["weights"].update(init="resnet50"))
    assert message.startswith("config: models.resnet18_at.weights.init: unknown model 'resnet50' (defined: ")


def test_init_of_another_architecture():
    message = bad(lambda c: c["models"]["resnet18_at"]["weights"].update(init="alexnet"))
    assert message == "config: models.resnet18_at.weights.init: 'alexnet' is a alexnet, not a resnet18"


def test_baseline_defaults_to_the_init_model():
    cfg = checked(copy.deepcopy(DEFAULT))
    assert Plan(cfg).model_baselines() == {
        "resnet18_at": "resnet18",
        "resnet18_consistency": "resnet18",
        "resnet18_atda": "resnet18",
    }
    assert Plan(cfg).model_baseline("resnet18") is None  # trained from scratch
    assert Plan(cfg).model_baseline("resnet18_random") is None  # not trained here


def test_baseline_set_or_turned_off():
    def set_baselines(c):
        c["models"]["resnet18_random"]["baseline"] = "resnet18"
        c["models"]["resnet18_at"]["baseline"] = None
        c["models"]["resnet18_atda"]["baseline"] = "resnet18_at"

    cfg = checked(_with(set_baselines))
    assert Plan(cfg).model_baselines() == {
        "resnet18_random": "resnet18",
        "resnet18_consistency": "resnet18",
        "resnet18_atda": "resnet18_at",
    }


def test_baseline_unknown_model():
    message = bad(lambda c: c["models"]["resnet18_at"].update(baseline="resnet50"))
    assert message.startswith("config: models.resnet18_at.baseline: unknown model 'resnet50' (defined: resnet18, ")


def test_baseline_not_the_model_itself():
    message = bad(lambda c: c["models"]["resnet18_at"].update(baseline="resnet18_at"))
    assert (
        message == "config: models.resnet18_at.baseline: 'resnet18_at' is the model itself; a baseline is another model"
    )


def test_baseline_shares_a_dataset():
    message = bad(lambda c: c["models"]["vgg11_bn_random"].update(baseline="resnet18", layers=["layer3", "layer4"]))
    assert message == (
        "config: models.vgg11_bn_random.baseline: 'resnet18' is dissected on synthetic, 'vgg11_bn_random' on "
        "synthetic64: the baseline must share a dataset to compare on"
    )


def test_baseline_shares_a_layer_name():
    message = bad(lambda c: c["models"]["alexnet"].update(baseline="alexnet_random", layers=["conv4"]))
    assert message == (
        "config: models.alexnet.baseline: 'alexnet_random' dissects layers conv2, conv5, 'alexnet' dissects "
        "conv4; the baseline must dissect a layer of the same name"
    )
    # compared on the layers both dissect, in any order
    checked(_with(lambda c: c["models"]["alexnet"].update(baseline="alexnet_random", layers=["conv5", "conv1"])))


def test_default_baseline_compares_on_the_shared_layers():
    """Adding a layer to a base model leaves its fine-tuned models valid: the comparison with the
    model they are fine-tuned from covers the layers both dissect."""
    cfg = checked(_with(lambda c: c["models"]["resnet18"].update(layers=["layer2", "layer3", "layer4"])))
    assert Plan(cfg).model_baseline("resnet18_at") == "resnet18"
    checked(_with(lambda c: c["models"]["resnet18_at"].update(layers=["layer4"])))


def test_baseline_is_a_name():
    message = bad(lambda c: c["models"]["resnet18_at"].update(baseline=3))
    assert message.startswith("config: models.resnet18_at.baseline: ")


def test_weights_source_keys_are_checked():
    message = bad(lambda c: c["models"]["resnet18"].update(weights={"source": "torchvision"}))
    assert message == "config: models.resnet18.weights: 'name' is a required property"


def test_figure_units_name_models_and_layers_of_the_config():
    def units(value):
        return lambda c: c.setdefault("figures", {}).update(units=value)

    checked(_with(units({"resnet18": {"layer4": [1, 3]}, "alexnet": {"conv5": [2]}})))
    message = bad(units({"resnet81": {"layer4": [1]}}))
    assert message.startswith("config: figures.units.resnet81: unknown model 'resnet81' (defined: resnet18, ")
    message = bad(units({"resnet18": {"layer4": [1], "layr3": [2]}}))
    assert message == (
        "config: figures.units.resnet18.layr3: 'layr3' is not one of the layers of model 'resnet18' "
        "(layer3, layer4; write it as models.resnet18.layers does)"
    )
    # A module name that the layer list gives as an alias is not the name the pictures go by.
    message = bad(units({"alexnet": {"features.11": [1]}}))
    assert message.startswith("config: figures.units.alexnet.features.11: 'features.11' is not one of the layers")


def test_unknown_architecture_is_reported_under_arch():
    cfg = checked(_with(lambda c: c["models"]["resnet18_random"].update(arch="resnet81")))
    with pytest.raises(ConfigError) as info:
        adconfig.check_layers(cfg)
    message = str(info.value)
    assert message.startswith("config: models.resnet18_random.arch: unknown architecture 'resnet81' (torchvision's ")
    assert "resnet18" in message and "\n" not in message


def test_one_module_under_two_layer_names_is_refused_at_planning():
    cfg = checked(_with(lambda c: c["models"]["resnet18_random"].update(layers=["layer4", "last_conv"])))
    with pytest.raises(
        ConfigError, match=r"^config: models.resnet18_random.layers: 'layer4' and 'last_conv' are the same"
    ):
        adconfig.check_layers(cfg)
    adconfig.check_layers(checked(copy.deepcopy(DEFAULT)))


def test_a_vit_is_dissected_only_on_images_of_its_size():
    """vit_tiny takes 64 x 64 images: the demo's 112 px set is refused at planning, its 64 px set is not."""

    def vit_on(dataset):
        return lambda c: c["models"]["resnet18_random"].update(
            arch="vit_tiny", layers=["encoder.layers.encoder_layer_1"], datasets=[dataset]
        )

    with pytest.raises(ConfigError) as info:
        adconfig.check_layers(checked(_with(vit_on("synthetic"))))
    assert str(info.value) == (
        "config: models.resnet18_random.datasets: vit_tiny takes 64x64 images only, but dataset 'synthetic' "
        "has 112x112; dissect it on a dataset of that size"
    )
    adconfig.check_layers(checked(_with(vit_on("synthetic64"))))


def test_a_users_weights_file_can_be_pinned_in_the_config():
    digest = "0123456789abcdef" * 4

    def weights(**keys):
        return lambda c: c["models"]["resnet18"].update(weights={"source": "file", "path": "w.pt", **keys})

    cfg = checked(_with(weights(sha256=digest)))
    assert specs.model_spec(cfg, "resnet18").weights_sha256 == digest
    assert "weights_sha256" not in specs.model_spec(checked(_with(weights())), "resnet18").to_dict()
    message = bad(weights(sha256="abc"))
    assert message.startswith("config: models.resnet18.weights.sha256: 'abc' does not match ")
    message = bad(lambda c: c["models"]["resnet18_random"]["weights"].update(sha256=digest))
    assert message.startswith("config: models.resnet18_random.weights: unknown key 'sha256'")


def test_weights_from_a_url_need_the_url_and_may_be_pinned():
    digest = "0123456789abcdef" * 4

    def weights(**keys):
        return lambda c: c["models"]["resnet18"].update(weights={"source": "url", **keys})

    cfg = checked(_with(weights(url="https://example.org/w.ckpt", sha256=digest)))
    assert specs.model_spec(cfg, "resnet18").weights_sha256 == digest
    assert bad(weights()) == "config: models.resnet18.weights: 'url' is a required property"
    message = bad(weights(url="ftp://example.org/w.ckpt"))
    assert message.startswith("config: models.resnet18.weights.url: 'ftp://example.org/w.ckpt' does not match ")


def test_broden_mirrors_and_digest_belong_to_broden_datasets_and_agree():
    def broden(name, **keys):
        return lambda c: c["datasets"].update({name: {"source": "broden", "variant": "broden1_224", **keys}})

    mirror = "https://example.org/broden1_224.zip"
    cfg = checked(_with(broden("b1", mirrors=[mirror], sha256="ab" * 32)))
    assert adconfig.broden_download(cfg, "broden1_224") == {"mirrors": [mirror], "sha256": "ab" * 32}
    assert adconfig.broden_download(cfg, "broden1_227") == {"mirrors": [], "sha256": None}

    def two(c):
        broden("b1", mirrors=[mirror])(c)
        broden("b2")(c)

    assert bad(two) == (
        "config: datasets.b2.mirrors: differs from datasets.b1.mirrors; both download broden1_224, "
        "so give them the same mirrors"
    )
    message = bad(lambda c: c["datasets"]["synthetic"].update(mirrors=[mirror]))
    assert message == "config: datasets.synthetic.mirrors: only for source 'broden'"


def test_unknown_model_attack():
    message = bad(lambda c: c["models"]["alexnet"].update(attacks=["fgsm_3"]))
    assert message.startswith("config: models.alexnet.attacks: unknown attack 'fgsm_3' (defined: ")


def test_duplicate_attack_names(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("attacks:\n  fgsm_2: {method: fgsm, eps: 2/255}\n  fgsm_2: {method: fgsm, eps: 4/255}\n")
    with pytest.raises(ConfigError) as info:
        adconfig.check_config_files([path])
    assert str(info.value) == f"{path}:3: key 'fgsm_2' is given twice (first on line 2); names must be unique"


@pytest.mark.parametrize(
    "value, expected", [("2/255", 2 / 255), ("8 / 255", 8 / 255), (0.5, 0.5), (3, 3.0), ("0.5/1", 0.5)]
)
def test_parse_fraction(value, expected):
    assert specs.parse_fraction(value) == pytest.approx(expected, abs=0)


def test_pixel_grid():
    assert specs.on_pixel_grid(8 / 255)
    assert specs.on_pixel_grid(float(specs.parse_fraction("2/255")))
    assert not specs.on_pixel_grid(0.01)


def test_shard_plan():
    cfg = checked(copy.deepcopy(DEFAULT))
    spec = cfg["datasets"]["synthetic"]
    assert dataset_size("synthetic", spec) == 400
    plan = shard_plan("synthetic", spec)
    assert (plan.split, plan.n_images, plan.shard_size, plan.n_shards) == ("val", 400, 400, 1)
    spec["shard_size"] = 150
    assert shard_plan("synthetic", spec).n_shards == 3


def test_sort_keys_is_recursive_and_in_place():
    cfg = {"b": {"y": 1, "x": [{"d": 1, "c": 2}]}, "a": 0}
    inner = cfg["b"]
    adconfig.sort_keys(cfg)
    assert list(cfg) == ["a", "b"] and cfg["b"] is inner
    assert list(inner) == ["x", "y"] and list(inner["x"][0]) == ["c", "d"]


def test_n_images_beyond_the_split_is_refused_before_any_job():
    message = bad(lambda c: c["datasets"]["synthetic"].update(n_images=401))
    assert message == (
        "config: datasets.synthetic.n_images: 401 images asked for, but split 'val' of the dataset holds 400"
    )


def local_dataset(root: Path, splits: list[str]) -> Path:
    root.mkdir()
    lines = ["image,split,ih,iw,sh,sw,color,object,part,material,scene,texture"]
    lines += [f"i{i}.jpg,{s},8,8,8,8,,,,,," for i, s in enumerate(splits)]
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    return root


def local_config(path: Path, **spec) -> dict:
    cfg = copy.deepcopy(DEFAULT)
    cfg["datasets"] = {"mine": {"source": "local", "path": str(path), **spec}}
    for model in cfg["models"].values():
        model["datasets"] = ["mine"]
        model["weights"] = {"source": "random"}
    return cfg


def test_local_dataset_needs_n_images_within_its_split(tmp_path):
    root = local_dataset(tmp_path / "mine", ["train", "val", "val", "train", "val"])
    with pytest.raises(ConfigError, match=r"datasets\.mine\.n_images: required for source 'local'"):
        checked(local_config(root, split="val"))
    with pytest.raises(ConfigError, match=r"datasets\.mine\.n_images: 4 images asked for, but split 'val' .* holds 3"):
        checked(local_config(root, split="val", n_images=4))
    with pytest.raises(ConfigError, match=r"holds 5"):
        checked(local_config(root, n_images=6))
    checked(local_config(root, split="val", n_images=3))


def test_imagefolder_needs_a_path_and_is_not_dissected():
    folder = {"source": "imagefolder", "path": "/data/imagenet"}
    message = bad(lambda c: c["datasets"].update(imagenet={"source": "imagefolder"}))
    assert message == "config: datasets.imagenet.path: required for source 'imagefolder'"
    message = bad(
        lambda c: (c["datasets"].update(imagenet=folder), c["models"]["alexnet"].update(datasets=["imagenet"]))
    )
    assert message.startswith("config: models.alexnet.datasets: 'imagenet' is an ImageFolder training set")
    cfg = copy.deepcopy(DEFAULT)
    cfg["datasets"]["imagenet"] = dict(folder)
    del cfg["models"]["alexnet"]["datasets"]
    checked(cfg)
    # a model without its own list is dissected on every Broden-format dataset, not the ImageFolder one
    assert Plan(cfg).model_datasets("alexnet") == ["synthetic", "synthetic64"]
    assert cfg["datasets"]["imagenet"]["image_size"] == 224


def test_a_local_index_without_brodens_header_is_refused_at_planning(tmp_path):
    root = local_dataset(tmp_path / "mine", ["val", "val"])
    text = (root / "index.csv").read_text().splitlines()
    (root / "index.csv").write_text("\n".join([text[0].replace("sh,sw", "seg_h,seg_w"), *text[1:]]) + "\n")
    with pytest.raises(ConfigError, match=r"datasets\.mine\.path: .*index.csv lacks column\(s\) sh, sw"):
        checked(local_config(root, split="val", n_images=2))


def test_config_command_names_the_file_and_line_snakemake_does_not(tmp_path, capsys):
    """Snakemake reads --configfile before the workflow: `python -m advdissect.study.config` is where a
    YAML syntax error or a missing file gets its file and line, in one line."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 0\nmodels: [\n")
    assert adconfig.main([str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "line 3, column 1" in err
    assert adconfig.main([str(tmp_path / "missing.yaml")]) == 1
    assert capsys.readouterr().err.strip() == f"config file not found: {tmp_path / 'missing.yaml'}"
    assert adconfig.main([str(ROOT / "config" / "config.yaml")]) == 0
    assert capsys.readouterr().out.startswith("config OK")


def test_one_schema_file_in_the_package():
    """The library, its commands and the workflow read one schema: the package's resource."""
    packaged = ROOT / "advdissect" / "schemas" / "config.schema.yaml"
    assert Path(str(specs.SCHEMA)).resolve() == packaged
    skip = {".git", ".venv", "results", "resources", ".snakemake", "build"}
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if name not in skip and not name.endswith(".egg-info")]
        found += [Path(folder) / name for name in files if name.endswith(".schema.yaml")]
    assert found == [packaged]
    assert adconfig.load_schema() == yaml.safe_load(packaged.read_text())
