# Config checking and the input functions every stage shares.

import math
from pathlib import Path

from advdissect import config as adconfig

SCHEMA = workflow.source_path("../schemas/config.schema.yaml")

adconfig.check_config_files([*workflow.configfiles, *(workflow.overwrite_configfiles or [])])
adconfig.validate(config, adconfig.load_schema(SCHEMA))
validate(config, SCHEMA)  # fills in the schema's defaults
adconfig.check_semantics(config)
adconfig.check_attacks(config)
adconfig.check_layers(config)

DATASETS = config["datasets"]
MODELS = config["models"]
ATTACKS = config["attacks"]
DISSECTION = config["dissection"]
FIGURES = config["figures"]
COMPUTE = config["compute"]
CLEAN = adconfig.clean_attack(config)
GPUS = COMPUTE["gpus"]


wildcard_constraints:
    dataset=r"[A-Za-z0-9_-]+",
    model=r"[A-Za-z0-9_-]+",
    attack=r"[A-Za-z0-9_-]+",
    layer=r"[A-Za-z0-9_.]+",
    shard=r"\d{4}",
    mode="self|clean",


def dataset_index(name):
    """index.csv of a dataset: generated, downloaded or given."""
    spec = DATASETS[name]
    if spec["source"] == "synthetic":
        return f"resources/synthetic/{name}/index.csv"
    if spec["source"] == "broden":
        return f"resources/broden/{spec['variant']}/index.csv"
    return str(Path(spec["path"]) / "index.csv")


def shards(dataset):
    return [f"{i:04d}" for i in range(adconfig.n_shards(dataset, DATASETS[dataset]))]


def model_datasets(model):
    return MODELS[model].get("datasets", list(DATASETS))


def model_attacks(model):
    wanted = MODELS[model].get("attacks", list(ATTACKS))
    return [CLEAN] + [a for a in ATTACKS if a in wanted and a != CLEAN]


def model_weights(model):
    """The weights file of a model ([] for a seeded random init)."""
    weights = MODELS[model]["weights"]
    source = weights["source"]
    if source == "torchvision":
        return f"resources/weights/{MODELS[model]['arch']}-{weights['name']}.pt"
    if source == "file":
        return weights["path"]
    if source == "train":
        return f"results/models/{model}/weights.pt"
    return []


def weights_input(wildcards):
    path = model_weights(wildcards.model)
    return {"weights": path} if path else {}


def model_spec(model):
    spec = MODELS[model]
    weights = spec["weights"]
    seed = weights.get("seed", config["seed"]) if weights["source"] == "random" else config["seed"]
    return {
        "arch": spec["arch"],
        "num_classes": spec["num_classes"],
        "normalization": spec["normalization"],
        "seed": seed,
    }


def shard_rows(dataset):
    spec = DATASETS[dataset]
    return {
        "split": spec["split"],
        "n_images": adconfig.dataset_size(dataset, spec),
        "shard_size": spec["shard_size"],
    }


def attack_modes(attack):
    """Threshold modes computed for an attack: the clean attack's `self` already is `clean`."""
    if attack == CLEAN:
        return ["self"]
    return DISSECTION["threshold_modes"]


def threshold_attack(attack, mode):
    return attack if mode == "self" else CLEAN


def chains():
    """Every (dataset, model, attack) chain of the study."""
    for model in MODELS:
        for dataset in model_datasets(model):
            for attack in model_attacks(model):
                yield dataset, model, attack


def layer_entries():
    """Every (dataset, model, attack, mode, layer) dissected."""
    for dataset, model, attack in chains():
        for mode in attack_modes(attack):
            for layer in MODELS[model]["layers"]:
                yield dataset, model, attack, mode, layer


def units_path(dataset, model, attack, mode, layer):
    return f"results/{dataset}/{model}/{attack}/{mode}/units/{layer}.csv"


def trained_models():
    return [m for m in MODELS if MODELS[m]["weights"]["source"] == "train"]
