# Config checking, and the wiring from a job's wildcards to the study's plan (advdissect.study.plan).

import inspect
import sys
from importlib.resources import as_file

from advdissect import specs as adspecs
from advdissect.errors import AdvDissectError
from advdissect.study import config as adconfig
from advdissect.study.plan import Plan, path

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
DISSECTION = config["dissection"]
BOOTSTRAP = DISSECTION["bootstrap"]
FIGURES = config["figures"]
ABLATION = config["ablation"]
COMPUTE = config["compute"]
PLAN = Plan(config)
CLEAN = PLAN.clean
STYLE = FIGURES["style"]
TEMPORARY = config["storage"]["temporary"]


wildcard_constraints:
    dataset=r"[A-Za-z0-9_-]+",
    model=r"[A-Za-z0-9_-]+",
    attack=r"[A-Za-z0-9_-]+",
    layer=r"[A-Za-z0-9_.]+",
    shard=r"\d{4}",
    mode="self|clean",


def job(method, **fixed):
    """Input or params function: the plan's `method` called with the job's wildcards that it
    names (all of them where it takes **fields), `fixed` replacing or adding some."""
    parameters = inspect.signature(method).parameters.values()
    takes_all = any(p.kind is p.VAR_KEYWORD for p in parameters)
    names = {p.name for p in parameters}

    def of(wildcards):
        fields = {**dict(wildcards.items()), **fixed}
        return method(**{k: v for k, v in fields.items() if takes_all or k in names})

    return of


def per_shard(kind, **fixed):
    """Input function: the `kind` file of every shard of the job's dataset."""
    return job(PLAN.shard_files, kind=kind, **fixed)


def identity(*keys):
    """Param function: the job's wildcards `keys` as the identity its files carry (shard as int)."""

    def of(wildcards):
        return {
            k: int(wildcards.shard) if k == "shard" else getattr(wildcards, k)
            for k in keys
        }

    return of


def stored(kind, file):
    """An output path of an artifact kind, temp() when storage.temporary names the kind."""
    return temp(file) if kind in TEMPORARY else file


def layer_units(wildcards):
    """The units tables of every dissection of the job's dataset, model and layer."""
    return PLAN.units_paths(
        PLAN.dissections(wildcards.dataset, wildcards.model, wildcards.layer)
    )
