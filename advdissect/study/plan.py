"""The study's plan: what a checked config asks to build, and where each file lives.

The workflow's rules ask a `Plan` for their inputs and settings (`workflow/rules/common.smk`
only turns a job's wildcards into arguments); `advdissect.study.disk` sizes the same files.
Nothing here reads a result or knows Snakemake.

    image set    (dataset, model, attack): one model's clean or attacked copy of a dataset
    Dissection   (dataset, model, attack, mode, layer): one layer dissected on one image set,
                 under its own thresholds (mode self) or the clean images' (mode clean)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cached_property
from typing import NamedTuple

from ..errors import ConfigError
from ..specs import AttackSpec, ShardPlan, attack_spec, model_spec
from .datasets import dataset_root, dissectable, shard_plan

# Every per-image-set file, by kind: the one place the results layout is written.
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
    def __missing__(self, key: str) -> str:
        return f"{{{key}}}"


def path(kind: str, **fields: object) -> str:
    """PATHS[kind] with `fields` filled in; the fields not given stay {wildcards}."""
    return PATHS[kind].format_map(_Unfilled(fields))


def glob_pattern(kind: str) -> str:
    """PATHS[kind] with every field as `*`: the files of that kind under a workdir."""
    return re.sub(r"\{[a-z_]+\}", "*", PATHS[kind])


class Dissection(NamedTuple):
    """One layer dissected on one image set under one threshold mode."""

    dataset: str
    model: str
    attack: str
    mode: str
    layer: str


class Plan:
    """The jobs a config asks for. `config` is validated, its defaults filled in."""

    def __init__(self, config: Mapping):
        self.config = config
        self.datasets = config["datasets"]
        self.models = config["models"]
        self.attacks = config["attacks"]

    # ------------------------------------------------------------ attacks and image sets

    @cached_property
    def clean(self) -> str:
        """The name of the one attack whose method is `clean`."""
        names = [name for name, spec in self.attacks.items() if spec["method"] == "clean"]
        if len(names) != 1:
            raise ConfigError(
                f"config: attacks: exactly one attack must have method 'clean' (found {len(names)}: {names}); "
                "it gives the clean images and the clean thresholds"
            )
        return names[0]

    @cached_property
    def attack_specs(self) -> dict[str, AttackSpec]:
        """Every attack of the config as a validated spec, by name."""
        return {name: attack_spec(name, settings) for name, settings in self.attacks.items()}

    def attack_settings(self, attack: str) -> dict:
        """An attack as its jobs receive it: the validated spec's fields."""
        return self.attack_specs[attack].to_dict()

    def model_datasets(self, model: str) -> list[str]:
        """The datasets a model is dissected on: its own list, or every Broden-format dataset."""
        every = [name for name, spec in self.datasets.items() if dissectable(spec)]
        return list(self.models[model].get("datasets", every))

    def model_attacks(self, model: str) -> list[str]:
        """The model's image sets: the clean attack first, then its attacks in config order."""
        wanted = self.models[model].get("attacks", list(self.attacks))
        return [self.clean] + [a for a in self.attacks if a in wanted and a != self.clean]

    def attacked_sets(self, model: str) -> list[str]:
        """The model's attacked image sets."""
        return self.model_attacks(model)[1:]

    def attack_modes(self, attack: str) -> list[str]:
        """Threshold modes computed for an attack: the clean attack's `self` already is `clean`."""
        if attack == self.clean:
            return ["self"]
        return list(self.config["dissection"]["threshold_modes"])

    def threshold_attack(self, attack: str, mode: str) -> str:
        """The image set whose thresholds a dissection applies."""
        return attack if mode == "self" else self.clean

    def chains(self) -> list[tuple[str, str, str]]:
        """Every image set (dataset, model, attack) of the study."""
        return [
            (dataset, model, attack)
            for model in self.models
            for dataset in self.model_datasets(model)
            for attack in self.model_attacks(model)
        ]

    def dissections(
        self, dataset: str | None = None, model: str | None = None, layer: str | None = None
    ) -> list[Dissection]:
        """Every dissection of the study, or those of one (dataset, model, layer)."""
        every = [
            Dissection(d, m, a, mode, name)
            for d, m, a in self.chains()
            for mode in self.attack_modes(a)
            for name in self.models[m]["layers"]
        ]
        if (dataset, model, layer) == (None, None, None):
            return every
        return [e for e in every if (e.dataset, e.model, e.layer) == (dataset, model, layer)]

    def dissection_rows(
        self, dataset: str | None = None, model: str | None = None, layer: str | None = None
    ) -> list[dict]:
        """`dissections` as the summary jobs receive them: each field, and the attack's method."""
        return [
            {**e._asdict(), "method": self.attacks[e.attack]["method"]} for e in self.dissections(dataset, model, layer)
        ]

    # ------------------------------------------------------------ datasets and shards

    def shard_plan(self, dataset: str) -> ShardPlan:
        """How a dataset is cut into shards: the split, the images used and the shard size."""
        return shard_plan(dataset, self.datasets[dataset])

    def shards(self, dataset: str) -> list[str]:
        return [f"{i:04d}" for i in range(self.shard_plan(dataset).n_shards)]

    def shard_files(self, kind: str, dataset: str, **fields: object) -> list[str]:
        """The `kind` file of every shard of a dataset."""
        return [path(kind, **{**fields, "dataset": dataset, "shard": s}) for s in self.shards(dataset)]

    def dataset_index(self, dataset: str) -> str:
        """index.csv of a dataset (an ImageFolder's train directory): generated, downloaded or given."""
        spec = self.datasets[dataset]
        root = dataset_root(dataset, spec)
        return str(root / ("train" if spec["source"] == "imagefolder" else "index.csv"))

    # ------------------------------------------------------------ models

    def model_spec(self, model: str) -> dict:
        """The network of a model, as the jobs that build it receive it."""
        return model_spec(self.config, model).to_dict()

    def layers(self, model: str) -> list[str]:
        """Every dissected layer of a model."""
        return list(self.models[model]["layers"])

    def model_weights(self, model: str) -> str | None:
        """The weights file of a model (None for a seeded random init)."""
        weights = self.models[model]["weights"]
        source = weights["source"]
        if source == "torchvision":
            return f"resources/weights/{self.models[model]['arch']}-{weights['name']}.pt"
        if source == "url":
            return f"resources/weights/url/{model}.pt"
        if source == "file":
            return weights["path"]
        if source == "train":
            return f"results/models/{model}/weights.pt"
        return None

    def weights_input(self, model: str) -> dict[str, str]:
        """{"weights": file} of a model that has one, else {}."""
        weights = self.model_weights(model)
        return {"weights": weights} if weights else {}

    def trained_models(self) -> list[str]:
        return [m for m in self.models if self.models[m]["weights"]["source"] == "train"]

    def compared_models(self) -> dict[str, dict[str, str]]:
        """{model: its arch and training method} of every model trained here: the training comparison."""
        return {
            name: {"arch": self.models[name]["arch"], "method": self.models[name]["weights"]["method"]}
            for name in self.trained_models()
        }

    def training_params(self, model: str) -> dict:
        """The training settings of a model; for an ImageFolder training set, its image size too."""
        weights = self.models[model]["weights"]
        params = {k: v for k, v in weights.items() if k not in ("source", "dataset", "init")}
        train_set = self.datasets[weights["dataset"]]
        if train_set["source"] == "imagefolder":
            params["image_size"] = train_set["image_size"]
        return params

    def train_inputs(self, model: str) -> dict[str, str]:
        """The training set's index and, for a fine-tuned model, its start weights."""
        weights = self.models[model]["weights"]
        inputs = {"dataset": self.dataset_index(weights["dataset"])}
        if "init" in weights:
            inputs["init"] = self.model_weights(weights["init"])
        return inputs

    def training_source(self, model: str) -> str:
        """The source of a trained model's training set (how its images are read)."""
        return self.datasets[self.models[model]["weights"]["dataset"]]["source"]

    def init_sha256(self, model: str) -> str | None:
        """The pinned sha256 of the weights a model is fine-tuned from (None without init or pin)."""
        init = self.models[model]["weights"].get("init")
        return self.models[init]["weights"].get("sha256") if init else None

    def model_baseline(self, model: str) -> str | None:
        """The model `model` is compared with on clean images: `models.<model>.baseline`, by default
        the model it is fine-tuned from (`weights.init`); None for no comparison."""
        spec = self.models[model]
        if "baseline" in spec:
            return spec["baseline"]
        weights = spec["weights"]
        return weights.get("init") if weights["source"] == "train" else None

    def model_baselines(self) -> dict[str, str]:
        """{model: its baseline} of every model that has one, in config order."""
        pairs = ((model, self.model_baseline(model)) for model in self.models)
        return {model: baseline for model, baseline in pairs if baseline is not None}

    # ------------------------------------------------------------ dissections

    def threshold_identity(self, dataset: str, model: str, attack: str, mode: str, layer: str) -> dict[str, str]:
        """The identity of the thresholds file a dissection applies."""
        return {"dataset": dataset, "model": model, "attack": self.threshold_attack(attack, mode), "layer": layer}

    def shard_dissections(self, dataset: str, model: str, attack: str) -> list[dict]:
        """Every (threshold mode, layer) dissected on an image set, with the thresholds each
        applies: one count job counts them all on its shard."""
        out = []
        for mode in self.attack_modes(attack):
            for layer in self.models[model]["layers"]:
                ident = self.threshold_identity(dataset, model, attack, mode, layer)
                out.append(
                    {
                        "mode": mode,
                        "layer": layer,
                        "thresholds": path("thresholds", **ident),
                        "threshold_identity": ident,
                    }
                )
        return out

    def shard_thresholds(self, dataset: str, model: str, attack: str) -> list[str]:
        """The thresholds files that `shard_dissections` applies."""
        return sorted({d["thresholds"] for d in self.shard_dissections(dataset, model, attack)})

    def units_paths(self, dissections: list[Dissection]) -> list[str]:
        return [path("units", **e._asdict()) for e in dissections]

    def bootstrap_paths(self, dissections: list[Dissection]) -> list[str]:
        """The dissections' bootstrap tables; none when the intervals are off."""
        if not self.config["dissection"]["bootstrap"]["resamples"]:
            return []
        return [path("bootstrap", dataset=e.dataset, model=e.model, attack=e.attack) for e in dissections]

    # ------------------------------------------------------------ layers, figures and summaries

    def figure_layers(self) -> list[tuple[str, str, str]]:
        """Every dissected (dataset, model, layer)."""
        return [
            (d, m, layer) for m in self.models for d in self.model_datasets(m) for layer in self.models[m]["layers"]
        ]

    def deepest_layers(self) -> list[dict[str, str]]:
        """(dataset, model, layer) of each model's deepest dissected layer (the last listed)."""
        return [
            {"dataset": d, "model": m, "layer": self.models[m]["layers"][-1]}
            for m in self.models
            for d in self.model_datasets(m)
        ]

    def ceiling_datasets(self) -> list[str]:
        """Datasets with a dissected layer, in config order."""
        return list(dict.fromkeys(d for d, _, _ in self.figure_layers()))

    def ceiling_layers(self, dataset: str | None = None) -> list[dict]:
        """Every dissected (dataset, model, layer), or those of one dataset, with what its
        feature-map size depends on."""
        return [
            {
                "dataset": d,
                "model": m,
                "layer": layer,
                "arch": self.models[m]["arch"],
                "num_classes": self.models[m]["num_classes"],
            }
            for d, m, layer in self.figure_layers()
            if dataset in (None, d)
        ]

    def ablation_paths(self) -> list[str]:
        """Ablation tables: each model's deepest dissected layer under every attack."""
        if not self.config["ablation"]["enabled"]:
            return []
        return [
            path("ablation", **e, attack=attack)
            for e in self.deepest_layers()
            for attack in self.attacked_sets(e["model"])
        ]

    def ablation_units(self, dataset: str, model: str, attack: str, layer: str) -> list[str]:
        """Per threshold mode: the clean units table, then the attack's."""
        clean = path("units", dataset=dataset, model=model, attack=self.clean, mode="self", layer=layer)
        paths = []
        for mode in self.config["dissection"]["threshold_modes"]:
            paths += [clean, path("units", dataset=dataset, model=model, attack=attack, mode=mode, layer=layer)]
        return paths

    def pictured_units(self, model: str, layer: str) -> list[int]:
        """Units the config asks to picture for a model's layer (figures.units)."""
        return self.config["figures"]["units"].get(model, {}).get(layer, [])

    def _set_inputs(self, dataset: str, model: str, attack: str, layer: str) -> dict[str, object]:
        """An image set's images and activation shards and its thresholds at a layer."""
        fields = {"model": model, "attack": attack, "layer": layer}
        return {
            f"images_{attack}": self.shard_files("images", dataset, model=model, attack=attack),
            f"activations_{attack}": self.shard_files("activations", dataset, **fields),
            f"thresholds_{attack}": path("thresholds", dataset=dataset, **fields),
        }

    def unit_picture_inputs(self, dataset: str, model: str, layer: str) -> dict[str, object]:
        """The clean set's and every attacked set's images, activations, thresholds and units."""
        inputs: dict[str, object] = {}
        for attack in self.model_attacks(model):
            inputs.update(self._set_inputs(dataset, model, attack, layer))
            inputs[f"units_{attack}"] = path(
                "units", dataset=dataset, model=model, attack=attack, mode="self", layer=layer
            )
        return inputs

    def browser_inputs(self, dataset: str, model: str, layer: str) -> dict[str, object]:
        """Images, activations and thresholds of every image set of the model; its units tables."""
        inputs: dict[str, object] = {}
        for attack in self.model_attacks(model):
            inputs.update(self._set_inputs(dataset, model, attack, layer))
            for mode in self.attack_modes(attack):
                inputs[f"units_{attack}_{mode}"] = path(
                    "units", dataset=dataset, model=model, attack=attack, mode=mode, layer=layer
                )
        return inputs

    def all_targets(self) -> list[str]:
        """The files `snakemake` builds by default: every summary, figure and browser."""
        targets = [
            f"results/summary/{name}"
            for name in (
                "models.csv",
                "attacks.csv",
                "table2.csv",
                "concept_drift.csv",
                "ceilings.csv",
                "demo_results.md",
            )
        ]
        for dataset, model, layer in self.figure_layers():
            where = f"{dataset}/{model}/{layer}"
            targets += [f"results/figures/{kind}/{where}.png" for kind in ("detectors", "eps_sweep", "iou_sweep")]
            if self.config["figures"]["browser"]:
                targets.append(f"results/browser/{where}")
            if self.attacked_sets(model):
                targets.append(f"results/figures/units/{where}")
        if self.compared_models():
            targets.append("results/summary/training.csv")
        if self.ablation_paths():
            targets.append("results/summary/ablation.csv")
        return targets
