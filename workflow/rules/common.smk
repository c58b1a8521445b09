# Config checking and the input functions every stage shares.

import sys
from argparse import Namespace
from importlib.resources import as_file

from advdissect import specs as adspecs
from advdissect.errors import AdvDissectError
from advdissect.study import config as adconfig

try:
    adconfig.check_config_files(
        [*workflow.configfiles, *(workflow.overwrite_configfiles or [])]
    )
    adconfig.validate(config, adconfig.load_schema())
    # The schema is the package's own file (advdissect/schemas/config.schema.yaml), the one
    # the library reads; validate() fills in its defaults.
    with as_file(adspecs.SCHEMA) as schema_file:
        validate(config, str(schema_file))
    adconfig.check_semantics(config)
    adconfig.check_layers(config)
    adconfig.sort_keys(config)
except AdvDissectError as exc:
    sys.exit(str(exc))  # the one line that names the key, no stack frames

DATASETS = config["datasets"]
MODELS = config["models"]
ATTACKS = config["attacks"]
DISSECTION = config["dissection"]
BOOTSTRAP = DISSECTION["bootstrap"]
FIGURES = config["figures"]
ABLATION = config["ablation"]
COMPUTE = config["compute"]
CLEAN = adconfig.clean_attack(config)
ATTACK_SPECS = adconfig.attack_specs(config)
STYLE = FIGURES["style"]
TEMPORARY = config["storage"]["temporary"]


wildcard_constraints:
    dataset=r"[A-Za-z0-9_-]+",
    model=r"[A-Za-z0-9_-]+",
    attack=r"[A-Za-z0-9_-]+",
    layer=r"[A-Za-z0-9_.]+",
    shard=r"\d{4}",
    mode="self|clean",


# Every per-chain file, by kind; the one place its path is written.
PATHS = {
    "images": "results/{dataset}/{model}/{attack}/images/{shard}.h5",
    "attack_stats": "results/{dataset}/{model}/{attack}/attack_stats.csv",
    "segmentations": "results/segmentations/{dataset}/{shard}.h5",
    "activations": "results/{dataset}/{model}/{attack}/activations/{shard}.h5",
    "thresholds": "results/{dataset}/{model}/{attack}/thresholds/{layer}.h5",
    "counts": "results/{dataset}/{model}/{attack}/counts/{shard}.h5",
    "iou": "results/{dataset}/{model}/{attack}/{mode}/iou/{layer}.h5",
    "tally": "results/{dataset}/{model}/{attack}/{mode}/tally/{layer}.csv",
    "units": "results/{dataset}/{model}/{attack}/{mode}/units/{layer}.csv",
    "bootstrap": "results/{dataset}/{model}/{attack}/bootstrap.csv",
    "ablation": "results/{dataset}/{model}/{attack}/ablation/{layer}.csv",
    "ceilings": "results/{dataset}/ceilings.csv",
}


class _Unfilled(dict):
    def __missing__(self, key):
        return f"{{{key}}}"


def path(kind, **fields):
    """PATHS[kind] with `fields` filled in; the fields not given stay {wildcards}."""
    return PATHS[kind].format_map(_Unfilled(fields))


def per_shard(kind, **fixed):
    """Input function: the `kind` file of every shard of the job's dataset, the other fields
    from the job's wildcards unless given in `fixed`."""

    def files(wildcards):
        return shard_files(kind, **{**dict(wildcards.items()), **fixed})

    return files


def shard_files(kind, dataset, **fields):
    """The `kind` file of every shard of a dataset."""
    return [path(kind, dataset=dataset, shard=s, **fields) for s in shards(dataset)]


def thresholds_used(wildcards):
    """The thresholds a dissection applies: its own images' (mode self) or the clean images' (mode clean)."""
    return path("thresholds", **threshold_identity(wildcards))


def shard_dissections(wildcards):
    """Every (threshold mode, layer) dissected on the job's image set, with the thresholds each
    applies: one count job counts them all on its shard."""
    out = []
    for mode in attack_modes(wildcards.attack):
        for layer in MODELS[wildcards.model]["layers"]:
            ident = threshold_identity(
                Namespace(**dict(wildcards.items()), mode=mode, layer=layer)
            )
            out.append(
                {
                    "mode": mode,
                    "layer": layer,
                    "thresholds": path("thresholds", **ident),
                    "threshold_identity": ident,
                }
            )
    return out


def shard_thresholds(wildcards):
    """The thresholds files that `shard_dissections` applies."""
    return sorted({d["thresholds"] for d in shard_dissections(wildcards)})


def dataset_of(wildcards):
    """index.csv of the job's dataset."""
    return dataset_index(wildcards.dataset)


def identity(*keys):
    """Param function: the job's wildcards `keys` as the identity its files carry (shard as int)."""

    def of(wildcards):
        return {
            k: int(wildcards.shard) if k == "shard" else getattr(wildcards, k)
            for k in keys
        }

    return of


def threshold_identity(wildcards):
    """The identity of the thresholds file that `thresholds_used` names."""
    return {
        "dataset": wildcards.dataset,
        "model": wildcards.model,
        "attack": threshold_attack(wildcards.attack, wildcards.mode),
        "layer": wildcards.layer,
    }


def attack_settings(wildcards):
    """The job's attack as a validated spec's fields."""
    return ATTACK_SPECS[wildcards.attack].to_dict()


def stored(kind, file):
    """An output path of an artifact kind, temp() when storage.temporary names the kind."""
    return temp(file) if kind in TEMPORARY else file


def dataset_index(name):
    """index.csv of a dataset: generated, downloaded or given."""
    spec = DATASETS[name]
    root = adconfig.dataset_root(name, spec)
    return str(root / ("train" if spec["source"] == "imagefolder" else "index.csv"))


def shards(dataset):
    return [f"{i:04d}" for i in range(shard_plan(dataset).n_shards)]


def model_datasets(model):
    return adconfig.model_datasets(config, model)


def model_attacks(model):
    return adconfig.model_attacks(config, model)


def model_weights(model):
    """The weights file of a model ([] for a seeded random init)."""
    weights = MODELS[model]["weights"]
    source = weights["source"]
    if source == "torchvision":
        return f"resources/weights/{MODELS[model]['arch']}-{weights['name']}.pt"
    if source == "url":
        return f"resources/weights/url/{model}.pt"
    if source == "file":
        return weights["path"]
    if source == "train":
        return f"results/models/{model}/weights.pt"
    return []


def weights_input(wildcards):
    path = model_weights(wildcards.model)
    return {"weights": path} if path else {}


def model_spec(model):
    """The network of a model, as the jobs that build it receive it."""
    return adspecs.model_spec(config, model).to_dict()


def model_spec_of(wildcards):
    return model_spec(wildcards.model)


def layers_of(wildcards):
    """Every dissected layer of the job's model: one activations job extracts them all."""
    return list(MODELS[wildcards.model]["layers"])


def shard_plan(dataset):
    """How a dataset is cut into shards: the split, the images used and the shard size."""
    return adconfig.shard_plan(dataset, DATASETS[dataset])


def shard_plan_of(wildcards):
    return shard_plan(wildcards.dataset).to_dict()


def attack_modes(attack):
    return adconfig.attack_modes(config, attack)


def threshold_attack(attack, mode):
    return attack if mode == "self" else CLEAN


def chains():
    return adconfig.chains(config)


def layer_entries():
    return adconfig.layer_entries(config)


def units_path(dataset, model, attack, mode, layer):
    return path(
        "units", dataset=dataset, model=model, attack=attack, mode=mode, layer=layer
    )


def trained_models():
    return [m for m in MODELS if MODELS[m]["weights"]["source"] == "train"]


def training_params(wildcards):
    """The training settings of a model; for an ImageFolder training set, its image size too."""
    weights = MODELS[wildcards.model]["weights"]
    params = {
        k: v for k, v in weights.items() if k not in ("source", "dataset", "init")
    }
    train_set = DATASETS[weights["dataset"]]
    if train_set["source"] == "imagefolder":
        params["image_size"] = train_set["image_size"]
    return params


def train_inputs(wildcards):
    weights = MODELS[wildcards.model]["weights"]
    inputs = {"dataset": dataset_index(weights["dataset"])}
    if "init" in weights:
        inputs["init"] = model_weights(weights["init"])
    return inputs


def all_targets():
    targets = [
        "results/summary/models.csv",
        "results/summary/attacks.csv",
        "results/summary/table2.csv",
        "results/summary/concept_drift.csv",
        "results/summary/ceilings.csv",
        "results/summary/demo_results.md",
    ]
    for dataset, model, layer in figure_layers():
        targets.append(f"results/figures/detectors/{dataset}/{model}/{layer}.png")
        targets.append(f"results/figures/eps_sweep/{dataset}/{model}/{layer}.png")
        targets.append(f"results/figures/iou_sweep/{dataset}/{model}/{layer}.png")
        if FIGURES["browser"]:
            targets.append(f"results/browser/{dataset}/{model}/{layer}")
        if any(attack != CLEAN for attack in model_attacks(model)):
            targets.append(f"results/figures/units/{dataset}/{model}/{layer}")
    if compared_models():
        targets.append("results/summary/training.csv")
    if ablation_paths():
        targets.append("results/summary/ablation.csv")
    return targets


def ablation_paths():
    """Ablation tables: each model's deepest dissected layer under every attack."""
    if not ABLATION["enabled"]:
        return []
    return [
        path(
            "ablation",
            dataset=e["dataset"],
            model=e["model"],
            attack=attack,
            layer=e["layer"],
        )
        for e in deepest_layers()
        for attack in model_attacks(e["model"])
        if attack != CLEAN
    ]


def ablation_units(wildcards):
    """Per threshold mode: the clean units table, then the attack's."""
    clean = units_path(
        wildcards.dataset, wildcards.model, CLEAN, "self", wildcards.layer
    )
    paths = []
    for mode in DISSECTION["threshold_modes"]:
        paths += [
            clean,
            units_path(
                wildcards.dataset,
                wildcards.model,
                wildcards.attack,
                mode,
                wildcards.layer,
            ),
        ]
    return paths


def figure_layers():
    for model in MODELS:
        for dataset in model_datasets(model):
            for layer in MODELS[model]["layers"]:
                yield dataset, model, layer


def entry(dataset, model, attack, mode, layer):
    return {
        "dataset": dataset,
        "model": model,
        "attack": attack,
        "mode": mode,
        "layer": layer,
        "method": ATTACKS[attack]["method"],
    }


def entries(dataset=None, model=None, layer=None):
    return [
        entry(*e)
        for e in layer_entries()
        if (dataset, model, layer) == (None, None, None)
        or (e[0], e[1], e[4]) == (dataset, model, layer)
    ]


def entry_paths(items):
    return [
        units_path(e["dataset"], e["model"], e["attack"], e["mode"], e["layer"])
        for e in items
    ]


def bootstrap_paths(items):
    """The entries' bootstrap tables; none when the intervals are off."""
    if not BOOTSTRAP["resamples"]:
        return []
    return [
        path(
            "bootstrap",
            **{k: e[k] for k in ("dataset", "model", "attack")},
        )
        for e in items
    ]


def model_baselines():
    """{model: the model it is compared with on clean images} (models.<name>.baseline)."""
    return adconfig.model_baselines(config)


def compared_models():
    """{model: its arch and training method} of every model trained here: the training comparison."""
    return {
        name: {
            "arch": MODELS[name]["arch"],
            "method": MODELS[name]["weights"]["method"],
        }
        for name in trained_models()
    }


def unit_picture_inputs(wildcards):
    """The clean set's and every attacked set's images, activations, thresholds and units."""
    d, m, layer = wildcards.dataset, wildcards.model, wildcards.layer
    inputs = {}
    for attack in [CLEAN, *attacked_sets(wildcards)]:
        inputs[f"images_{attack}"] = shard_files("images", d, model=m, attack=attack)
        inputs[f"activations_{attack}"] = shard_files(
            "activations", d, model=m, attack=attack, layer=layer
        )
        inputs[f"thresholds_{attack}"] = path(
            "thresholds", dataset=d, model=m, attack=attack, layer=layer
        )
        inputs[f"units_{attack}"] = units_path(d, m, attack, "self", layer)
    return inputs


def browser_inputs(wildcards):
    """Images, activations and thresholds of every image set of the model; its units tables."""
    d, m, layer = wildcards.dataset, wildcards.model, wildcards.layer
    inputs = {}
    for attack in [CLEAN] + [a for a in model_attacks(m) if a != CLEAN]:
        inputs[f"images_{attack}"] = shard_files("images", d, model=m, attack=attack)
        inputs[f"activations_{attack}"] = shard_files(
            "activations", d, model=m, attack=attack, layer=layer
        )
        inputs[f"thresholds_{attack}"] = path(
            "thresholds", dataset=d, model=m, attack=attack, layer=layer
        )
        modes = ["self"] if attack == CLEAN else DISSECTION["threshold_modes"]
        for mode in modes:
            inputs[f"units_{attack}_{mode}"] = units_path(d, m, attack, mode, layer)
    return inputs


def ceiling_datasets():
    """Datasets with a dissected layer, in config order."""
    return list(dict.fromkeys(d for d, _, _ in figure_layers()))


def ceiling_layers(dataset=None):
    """Every dissected (dataset, model, layer), or those of one dataset, with what its
    feature-map size depends on."""
    return [
        {
            "dataset": d,
            "model": m,
            "layer": layer,
            "arch": MODELS[m]["arch"],
            "num_classes": MODELS[m]["num_classes"],
        }
        for d, m, layer in figure_layers()
        if dataset in (None, d)
    ]


def deepest_layers():
    """(dataset, model, layer) of each model's deepest dissected layer (the last listed)."""
    return [
        {"dataset": d, "model": m, "layer": MODELS[m]["layers"][-1]}
        for m in MODELS
        for d in model_datasets(m)
    ]


def layer_entries_of(wildcards):
    """The dissections of the job's dataset, model and layer."""
    return entries(wildcards.dataset, wildcards.model, wildcards.layer)


def layer_units_tables(wildcards):
    return entry_paths(layer_entries_of(wildcards))


def pictured_units(wildcards):
    """Units the config asks to picture for the job's model and layer (figures.units)."""
    return FIGURES["units"].get(wildcards.model, {}).get(wildcards.layer, [])


def image_sets(wildcards):
    """The model's image sets: the clean images first, then each attack's."""
    return [CLEAN] + [a for a in model_attacks(wildcards.model) if a != CLEAN]


def attacked_sets(wildcards):
    """The model's attacked image sets."""
    return [a for a in model_attacks(wildcards.model) if a != CLEAN]
