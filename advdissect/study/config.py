"""Configuration: schema validation with one-line errors, and the checks a schema cannot make.

The Snakefile calls `check_config_files` on the raw YAML (duplicate keys), `validate` (schema,
defaults filled in), then `check_semantics` (cross-references; each attack and training built
once as a spec, which checks its own values: `specs`).

    python -m advdissect.study.config config/paper.yaml [more.yaml ...]

runs the same checks on config files as Snakemake would merge them, and names the file, line
and column of a YAML syntax error or a missing file (Snakemake reads `--configfile` before the
workflow does, and its own messages name neither).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping
from contextlib import nullcontext
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ..errors import AdvDissectError, ConfigError
from ..specs import SCHEMA, AttackSpec, ShardPlan, attack_spec, train_spec

# The keys of a broden dataset that say how its zip is downloaded.
BRODEN_DOWNLOAD_KEYS = ("mirrors", "sha256")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"{key_node.start_mark.name}:{key_node.start_mark.line + 1}: key {key!r} is given twice "
                f"(first on line {seen[key] + 1}); names must be unique"
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: str | Path) -> Any:
    """Load a YAML file, refusing duplicate keys."""
    try:
        with open(path) as handle:
            return yaml.load(handle, Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None


def check_config_files(paths: Iterable[str | Path]) -> None:
    for path in paths:
        load_yaml(path)


def load_schema(path: str | Path | None = None) -> dict:
    """The config schema: the package's own (`specs.SCHEMA`) unless `path` names another file."""
    text = SCHEMA.read_text(encoding="utf-8") if path is None else Path(path).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def fill_defaults(config: dict, schema_path: str | Path | None = None) -> None:
    """Fill in the schema's defaults, in place, as the workflow's `validate(config, ...)` does."""
    from snakemake.utils import validate as snakemake_validate

    with resources.as_file(SCHEMA) if schema_path is None else nullcontext(Path(schema_path)) as path:
        snakemake_validate(config, str(path))


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    where = _key_path(error)
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        allowed = sorted((error.schema.get("properties") or {}).keys())
        unknown = sorted(set(error.instance) - set(allowed))
        return f"config: {where}: unknown key {', '.join(repr(k) for k in unknown)} (allowed: {', '.join(allowed)})"
    if "propertyNames" in error.relative_schema_path:
        return f"config: {where}: name {error.instance!r} may use only letters, digits, '_' and '-'"
    if error.validator == "enum":
        allowed = ", ".join(repr(v) for v in error.validator_value)
        return f"config: {where}: {error.instance!r} is not one of {allowed}"
    if error.validator == "oneOf" and error.context:
        # Report the branch that came closest rather than "is not valid under any of the given schemas".
        best = jsonschema.exceptions.best_match(error.context)
        return f"config: {where}: {best.message}"
    return f"config: {where}: {error.message}"


def validate(config: dict, schema: dict) -> None:
    """Validate against the JSON schema; raise ConfigError with one line naming the key."""
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), str(e.absolute_path)))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        # `if/then` failures surface as the `then` branch's own error; dig into it for the real key.
        while error.context and error.validator in ("allOf", "anyOf"):
            error = jsonschema.exceptions.best_match(error.context)
        raise ConfigError(_describe(error))


def sort_keys(value: Any) -> Any:
    """Sort every mapping's keys in place, recursively.

    Snakemake compares a job's params with the last run's as written, key order included; a
    config saved by another tool (or with keys moved) would otherwise re-run every job.
    """
    if isinstance(value, dict):
        items = sorted(value.items())
        value.clear()
        value.update((key, sort_keys(item)) for key, item in items)
    elif isinstance(value, list):
        value[:] = [sort_keys(item) for item in value]
    return value


def clean_attack(config: Mapping) -> str:
    """The name of the one attack whose method is `clean`."""
    names = [name for name, spec in config["attacks"].items() if spec["method"] == "clean"]
    if len(names) != 1:
        raise ConfigError(
            f"config: attacks: exactly one attack must have method 'clean' (found {len(names)}: {names}); "
            "it gives the clean images and the clean thresholds"
        )
    return names[0]


def dataset_root(name: str, spec: Mapping) -> Path:
    """The directory of dataset `name`: generated (resources/synthetic/<name>), downloaded
    (resources/broden/<variant>) or given (`path`, also of an ImageFolder)."""
    if spec["source"] == "synthetic":
        return Path("resources/synthetic") / name
    if spec["source"] == "broden":
        return Path("resources/broden") / spec["variant"]
    return Path(spec["path"])


def dataset_size(name: str, spec: Mapping) -> int:
    """How many rows of dataset `name` are dissected (known before any job runs)."""
    if "n_images" in spec:
        return int(spec["n_images"])
    source = spec["source"]
    # n_images is required for a local directory, whatever its index.csv holds.
    available = None if source == "local" else available_images(spec)
    if available is not None:
        return available
    raise ConfigError(
        f"config: datasets.{name}.n_images: required for source {source!r} with split {spec.get('split', 'all')!r}"
    )


def available_images(spec: Mapping) -> int | None:
    """How many rows the dataset's split holds, where that is known before any job runs."""
    split = spec.get("split", "all")
    source = spec["source"]
    if source == "synthetic":
        synthetic = spec.get("synthetic", {})
        n_train, n_val = synthetic.get("n_train", 2000), synthetic.get("n_val", 500)
        return {"train": n_train, "val": n_val, "all": n_train + n_val}[split]
    if source == "broden":
        from ..data.download import BRODEN_IMAGES

        return BRODEN_IMAGES[spec["variant"]] if split == "all" else None
    index = Path(spec["path"]) / "index.csv"
    if not index.is_file():
        return None
    with open(index, newline="") as f:
        rows = list(csv.DictReader(f))
    return len(rows) if split == "all" else sum(1 for row in rows if row.get("split") == split)


def generated_spec(spec: Mapping, datasets: Mapping[str, Mapping]) -> Mapping:
    """The spec of the synthetic dataset that a local one reads, where the local path is a
    synthetic dataset's directory not generated yet (config/rehearsal.yaml's smaller sizes);
    otherwise `spec` itself."""
    if spec["source"] != "local" or (Path(spec["path"]) / "index.csv").is_file():
        return spec
    for name, other in datasets.items():
        if other["source"] == "synthetic" and dataset_root(name, other) == Path(spec["path"]):
            return other
    return spec


def dataset_facts(spec: Mapping) -> tuple[tuple[int, int], int]:
    """((height, width) of the images, number of label numbers) of a dataset."""
    source = spec["source"]
    if source == "synthetic" and spec.get("synthetic", {}).get("layout") == "broden":
        from ..data import broden_shaped

        return (broden_shaped.IMAGE_SIZE, broden_shaped.IMAGE_SIZE), broden_shaped.n_labels()
    if source == "synthetic":
        from ..data.broden import CATEGORIES
        from ..data.synthetic import vocabulary

        synthetic = spec.get("synthetic", {})
        size = int(synthetic.get("image_size", 112))
        vocab = vocabulary(int(synthetic.get("n_classes", 16)))
        numbers = [n for cat in CATEGORIES for n in getattr(vocab, cat).values()]
        return (size, size), max(numbers) + 1
    if source == "broden":
        from ..data.download import BRODEN_IMAGE_SIZE, BRODEN_LABELS

        size = BRODEN_IMAGE_SIZE[spec["variant"]]
        return (size, size), BRODEN_LABELS
    root = Path(spec["path"])
    with open(root / "index.csv", newline="") as f:
        first = next(csv.DictReader(f))
    with open(root / "label.csv", newline="") as f:
        n_labels = max(int(row["number"]) for row in csv.DictReader(f)) + 1
    return (int(first["ih"]), int(first["iw"])), n_labels


def broden_download(config: Mapping, variant: str) -> dict[str, Any]:
    """The extra mirrors and the pinned sha256 of a Broden variant's zip, as its datasets give them
    (one download serves every dataset of the variant, so they must agree)."""
    named = {name: spec for name, spec in config["datasets"].items() if spec.get("variant") == variant}
    settings = {name: {key: spec.get(key) for key in BRODEN_DOWNLOAD_KEYS} for name, spec in named.items()}
    if not settings:
        return {"mirrors": [], "sha256": None}
    first, *others = settings
    for other in others:
        for key in BRODEN_DOWNLOAD_KEYS:
            if settings[other][key] != settings[first][key]:
                raise ConfigError(
                    f"config: datasets.{other}.{key}: differs from datasets.{first}.{key}; both download "
                    f"{variant}, so give them the same {key}"
                )
    return {"mirrors": list(settings[first]["mirrors"] or []), "sha256": settings[first]["sha256"]}


def shard_plan(name: str, spec: Mapping) -> ShardPlan:
    """How `datasets.<name>` is cut into shards."""
    return ShardPlan(split=spec["split"], n_images=dataset_size(name, spec), shard_size=spec["shard_size"])


def check_semantics(config: Mapping) -> None:
    """Cross-key checks after schema validation (defaults already filled in)."""
    datasets, models, attacks = config["datasets"], config["models"], config["attacks"]
    for name, spec in datasets.items():
        source = spec["source"]
        if source == "broden" and "variant" not in spec:
            raise ConfigError(
                f"config: datasets.{name}.variant: required for source 'broden' (broden1_224 or broden1_227)"
            )
        if source in ("local", "imagefolder") and "path" not in spec:
            raise ConfigError(f"config: datasets.{name}.path: required for source {source!r}")
        if source != "synthetic" and "synthetic" in spec:
            raise ConfigError(f"config: datasets.{name}.synthetic: only for source 'synthetic'")
        generator = spec.get("synthetic", {})
        if source == "synthetic" and generator.get("layout", "recognition") == "recognition":
            for key in ("n_train", "n_val"):
                if generator.get(key, 1) < 1:
                    raise ConfigError(
                        f"config: datasets.{name}.synthetic.{key}: the recognition layout needs at least 1 image, "
                        f"got {generator[key]}"
                    )
        for key in BRODEN_DOWNLOAD_KEYS:
            if source != "broden" and key in spec:
                raise ConfigError(f"config: datasets.{name}.{key}: only for source 'broden'")
        if not dissectable(spec):
            continue
        if source == "local":
            _check_index_header(name, Path(spec["path"]) / "index.csv")
        wanted, available = dataset_size(name, spec), available_images(spec)
        if available is not None and wanted > available:
            raise ConfigError(
                f"config: datasets.{name}.n_images: {wanted} images asked for, but split "
                f"{spec.get('split', 'all')!r} of the dataset holds {available}"
            )
    for variant in {spec["variant"] for spec in datasets.values() if spec["source"] == "broden"}:
        broden_download(config, variant)
    clean_attack(config)
    attack_specs(config)
    for name, spec in models.items():
        for attack in spec.get("attacks", []):
            if attack not in attacks:
                raise ConfigError(
                    f"config: models.{name}.attacks: unknown attack {attack!r} (defined: {', '.join(attacks)})"
                )
        for dataset in spec.get("datasets", []):
            if dataset not in datasets:
                raise ConfigError(
                    f"config: models.{name}.datasets: unknown dataset {dataset!r} (defined: {', '.join(datasets)})"
                )
            if not dissectable(datasets[dataset]):
                raise ConfigError(
                    f"config: models.{name}.datasets: {dataset!r} is an ImageFolder training set without "
                    "segmentations; list the Broden-format datasets to dissect on"
                )
        weights = spec["weights"]
        if weights["source"] != "train":
            continue
        if weights["dataset"] not in datasets:
            raise ConfigError(
                f"config: models.{name}.weights.dataset: unknown dataset {weights['dataset']!r} "
                f"(defined: {', '.join(datasets)})"
            )
        train_spec(weights, f"models.{name}.weights")
        train_set = datasets[weights["dataset"]]
        if train_set.get("synthetic", {}).get("layout") == "broden":
            raise ConfigError(
                f"config: models.{name}.weights.dataset: {weights['dataset']!r} has the broden layout, "
                "which has no class task to train on; use weights source random or file"
            )
        if train_set["source"] == "synthetic":
            n_classes = train_set.get("synthetic", {}).get("n_classes", 16)
            if spec["num_classes"] != n_classes:
                raise ConfigError(
                    f"config: models.{name}.num_classes: {spec['num_classes']} but dataset "
                    f"{weights['dataset']!r} has {n_classes} classes"
                )
        _check_init_chain(models, name)
    for name in models:
        _check_target_classes(config, name)
        _check_baseline(config, name)
    check_figure_units(config)


def _check_index_header(name: str, index: Path) -> None:
    """A local dataset's index.csv has Broden's columns (when it is there to read at planning)."""
    from ..data.broden import INDEX_COLUMNS

    if not index.is_file():
        return
    with open(index, newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f), [])
    missing = [c for c in INDEX_COLUMNS if c not in header]
    if missing:
        raise ConfigError(
            f"config: datasets.{name}.path: {index} lacks column(s) {', '.join(missing)}; a Broden index.csv "
            f"starts {','.join(INDEX_COLUMNS)}"
        )


# Attacks whose loss needs a number of classes: APGD-T's targeted DLR reads the 4th-highest logit.
_LEAST_CLASSES = {"apgd_t": 4, "autoattack": 4}


def _check_target_classes(config: Mapping, model: str) -> None:
    """A class index as an attack's target must be one of the model's classes, and an attack whose
    loss needs some number of classes must have them."""
    num_classes = config["models"][model]["num_classes"]
    for attack in model_attacks(config, model):
        least = _LEAST_CLASSES.get(config["attacks"][attack]["method"], 0)
        if num_classes < least:
            raise ConfigError(
                f"config: attacks.{attack}.method: {config['attacks'][attack]['method']} needs a model of at "
                f"least {least} classes; model {model!r} has {num_classes}"
            )
        target = config["attacks"][attack].get("target")
        if isinstance(target, int) and not isinstance(target, bool) and target >= num_classes:
            raise ConfigError(
                f"config: attacks.{attack}.target: class {target} does not exist in model {model!r} "
                f"({num_classes} classes: 0..{num_classes - 1})"
            )


def check_figure_units(config: Mapping) -> None:
    """`figures.units` names only models of the config and layers those models list: a misspelt
    name would otherwise picture nothing, silently."""
    models = config["models"]
    for model, layers in config.get("figures", {}).get("units", {}).items():
        if model not in models:
            raise ConfigError(f"config: figures.units.{model}: unknown model {model!r} (defined: {', '.join(models)})")
        for layer in layers:
            if layer not in models[model]["layers"]:
                raise ConfigError(
                    f"config: figures.units.{model}.{layer}: {layer!r} is not one of the layers of model {model!r} "
                    f"({', '.join(models[model]['layers'])}; write it as models.{model}.layers does)"
                )


def model_baseline(config: Mapping, model: str) -> str | None:
    """The model `model` is compared with on clean images: `models.<model>.baseline`, by default
    the model it is fine-tuned from (`weights.init`); None for no comparison."""
    spec = config["models"][model]
    if "baseline" in spec:
        return spec["baseline"]
    weights = spec["weights"]
    return weights.get("init") if weights["source"] == "train" else None


def model_baselines(config: Mapping) -> dict[str, str]:
    """{model: its baseline} of every model that has one, in config order."""
    out = {}
    for model in config["models"]:
        baseline = model_baseline(config, model)
        if baseline is not None:
            out[model] = baseline
    return out


def _check_baseline(config: Mapping, name: str) -> None:
    """An explicit baseline is another model of the config that shares a dataset and a layer name
    with this one; the comparison covers the layers both dissect. The default one (`weights.init`)
    is checked by the init chain, and compares on whatever layers and datasets the two share."""
    models = config["models"]
    if models[name].get("baseline") is None:
        return
    baseline, key = models[name]["baseline"], f"config: models.{name}.baseline"
    if baseline not in models:
        raise ConfigError(f"{key}: unknown model {baseline!r} (defined: {', '.join(models)})")
    if baseline == name:
        raise ConfigError(f"{key}: {name!r} is the model itself; a baseline is another model")
    ours, theirs = model_datasets(config, name), model_datasets(config, baseline)
    if not set(ours) & set(theirs):
        raise ConfigError(
            f"{key}: {baseline!r} is dissected on {', '.join(theirs) or 'no dataset'}, {name!r} on "
            f"{', '.join(ours) or 'no dataset'}: the baseline must share a dataset to compare on"
        )
    if not set(models[baseline]["layers"]) & set(models[name]["layers"]):
        raise ConfigError(
            f"{key}: {baseline!r} dissects layers {', '.join(models[baseline]['layers'])}, {name!r} dissects "
            f"{', '.join(models[name]['layers'])}; the baseline must dissect a layer of the same name"
        )


def _check_init_chain(models: Mapping, name: str) -> None:
    seen = [name]
    current = models[name]["weights"].get("init")
    while current is not None:
        if current not in models:
            raise ConfigError(
                f"config: models.{seen[-1]}.weights.init: unknown model {current!r} (defined: {', '.join(models)})"
            )
        if models[current]["arch"] != models[seen[-1]]["arch"]:
            raise ConfigError(
                f"config: models.{seen[-1]}.weights.init: {current!r} is a {models[current]['arch']}, "
                f"not a {models[seen[-1]]['arch']}"
            )
        if current in seen:
            raise ConfigError(f"config: models.{name}.weights.init: circular ({' -> '.join(seen + [current])})")
        seen.append(current)
        current = models[current]["weights"].get("init") if models[current]["weights"]["source"] == "train" else None


def attack_specs(config: Mapping) -> dict[str, AttackSpec]:
    """Every attack of the config as a validated spec, by name."""
    return {name: attack_spec(name, settings) for name, settings in config["attacks"].items()}


def check_layers(config: Mapping) -> None:
    """Every architecture exists and has each configured layer, once (builds each net on the meta
    device)."""
    from ..nets.models import check_layer_names, list_architectures  # torch only when the config is otherwise sound

    known = list_architectures()
    for name, spec in config["models"].items():
        if spec["arch"] not in known:
            raise ConfigError(
                f"config: models.{name}.arch: unknown architecture {spec['arch']!r} "
                f"(torchvision's classifiers: {', '.join(known)})"
            )
        check_layer_names(spec["arch"], spec["num_classes"], spec["layers"], where=f"models.{name}.layers")
        _check_fixed_image_size(config, name)


def _check_fixed_image_size(config: Mapping, model: str) -> None:
    """A network that takes one image size (a ViT) is dissected only on datasets of that size,
    where the size is known before any job runs."""
    from ..nets.models import fixed_image_size

    spec, datasets = config["models"][model], config["datasets"]
    size = fixed_image_size(spec["arch"], spec["num_classes"])
    if size is None:
        return
    for name in model_datasets(config, model):
        facts_spec = generated_spec(datasets[name], datasets)
        if facts_spec["source"] == "local" and not (Path(facts_spec["path"]) / "index.csv").is_file():
            continue  # known only once the directory is there; the first job then refuses it
        (h, w), _ = dataset_facts(facts_spec)
        if (h, w) != (size, size):
            raise ConfigError(
                f"config: models.{model}.datasets: {spec['arch']} takes {size}x{size} images only, but dataset "
                f"{name!r} has {h}x{w}; dissect it on a dataset of that size"
            )


# ---------------------------------------------------------------- the study's plan


def load_config(paths: Iterable[str | Path], schema_path: str | Path | None = None) -> dict:
    """The config as the workflow sees it: the files merged in order, validated, defaults filled in
    (against the package's schema unless `schema_path` names another file)."""
    from snakemake.utils import update_config

    paths = list(paths)
    check_config_files(paths)
    config: dict = {}
    for path in paths:
        update_config(config, load_yaml(path) or {})
    validate(config, load_schema(schema_path))
    fill_defaults(config, schema_path)
    check_semantics(config)
    sort_keys(config)
    return config


def dissectable(spec: Mapping) -> bool:
    """Broden-format datasets can be dissected; ImageFolder ones only train models."""
    return spec["source"] != "imagefolder"


def model_datasets(config: Mapping, model: str) -> list[str]:
    """The datasets a model is dissected on: its own list, or every Broden-format dataset."""
    every = [name for name, spec in config["datasets"].items() if dissectable(spec)]
    return list(config["models"][model].get("datasets", every))


def model_attacks(config: Mapping, model: str) -> list[str]:
    """The clean attack first, then the model's attacks in config order."""
    clean = clean_attack(config)
    wanted = config["models"][model].get("attacks", list(config["attacks"]))
    return [clean] + [a for a in config["attacks"] if a in wanted and a != clean]


def attack_modes(config: Mapping, attack: str) -> list[str]:
    """Threshold modes computed for an attack: the clean attack's `self` already is `clean`."""
    if attack == clean_attack(config):
        return ["self"]
    return list(config["dissection"]["threshold_modes"])


def chains(config: Mapping) -> Iterator[tuple[str, str, str]]:
    """Every (dataset, model, attack) chain of the study."""
    for model in config["models"]:
        for dataset in model_datasets(config, model):
            for attack in model_attacks(config, model):
                yield dataset, model, attack


def layer_entries(config: Mapping) -> Iterator[tuple[str, str, str, str, str]]:
    """Every (dataset, model, attack, mode, layer) dissected."""
    for dataset, model, attack in chains(config):
        for mode in attack_modes(config, attack):
            for layer in config["models"][model]["layers"]:
                yield dataset, model, attack, mode, layer


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Check config files as the workflow would, merged in order.")
    parser.add_argument("configfile", nargs="+", help="config files, merged in order")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.configfile)
        check_layers(config)
    except AdvDissectError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"config OK: {', '.join(args.configfile)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
