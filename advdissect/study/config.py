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
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ..data.download import BRODEN_SOURCES
from ..errors import AdvDissectError, ConfigError
from ..specs import SCHEMA, train_spec
from .datasets import available_images, dataset_facts, dataset_size, dissectable, generated_spec
from .plan import Plan

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


def check_semantics(config: Mapping) -> None:
    """Cross-key checks after schema validation (defaults already filled in)."""
    datasets, models = config["datasets"], config["models"]
    for name, spec in datasets.items():
        _check_dataset(name, spec)
    for variant in {spec["variant"] for spec in datasets.values() if spec["source"] == "broden"}:
        broden_download(config, variant)
    # Exactly one clean attack; each attack built once as a spec, which checks its own values.
    plan = Plan(config)
    _ = plan.clean, plan.attack_specs
    for name in models:
        _check_model_references(config, name)
        if models[name]["weights"]["source"] == "train":
            _check_training(config, name)
            _check_init_chain(models, name)
    for name in models:
        _check_target_classes(config, name)
        _check_baseline(config, name)
    check_figure_units(config)


def _check_dataset(name: str, spec: Mapping) -> None:
    """The keys a dataset's source needs and allows, and no more images asked for than it holds."""
    source = spec["source"]
    if source == "broden" and "variant" not in spec:
        raise ConfigError(
            f"config: datasets.{name}.variant: required for source 'broden' ({' or '.join(BRODEN_SOURCES)})"
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
        return
    if source == "local":
        _check_index_header(name, Path(spec["path"]) / "index.csv")
    wanted, available = dataset_size(name, spec), available_images(spec)
    if available is not None and wanted > available:
        raise ConfigError(
            f"config: datasets.{name}.n_images: {wanted} images asked for, but split "
            f"{spec.get('split', 'all')!r} of the dataset holds {available}"
        )


def _check_model_references(config: Mapping, name: str) -> None:
    """A model's attacks and datasets are defined, and it is dissected only on Broden-format sets."""
    datasets, attacks, spec = config["datasets"], config["attacks"], config["models"][name]
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


def _check_training(config: Mapping, name: str) -> None:
    """A model trained here: a defined training set with a class task of the model's classes."""
    datasets, spec = config["datasets"], config["models"][name]
    weights = spec["weights"]
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
    for attack in Plan(config).model_attacks(model):
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
    plan = Plan(config)
    ours, theirs = plan.model_datasets(name), plan.model_datasets(baseline)
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


def check_layers(config: Mapping) -> None:
    """Every architecture exists and has each configured layer, once (builds each net on the meta
    device)."""
    from ..nets.architectures import list_architectures  # torch only when the config is otherwise sound
    from ..nets.layers import check_layer_names

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
    from ..nets.layers import fixed_image_size

    spec, datasets = config["models"][model], config["datasets"]
    size = fixed_image_size(spec["arch"], spec["num_classes"])
    if size is None:
        return
    for name in Plan(config).model_datasets(model):
        facts_spec = generated_spec(datasets[name], datasets)
        if facts_spec["source"] == "local" and not (Path(facts_spec["path"]) / "index.csv").is_file():
            continue  # known only once the directory is there; the first job then refuses it
        (h, w), _ = dataset_facts(facts_spec)
        if (h, w) != (size, size):
            raise ConfigError(
                f"config: models.{model}.datasets: {spec['arch']} takes {size}x{size} images only, but dataset "
                f"{name!r} has {h}x{w}; dissect it on a dataset of that size"
            )


# ---------------------------------------------------------------- loading


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
