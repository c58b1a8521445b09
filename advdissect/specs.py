"""The study's settings as typed specs: the one place a setting's value is checked.

`attack_spec` and `train_spec` turn a config section into a frozen spec; each spec checks its
own values once, when it is built, and names the config key a wrong value came from. Defaults
come from the config schema alone (`schema_defaults`). The library takes specs and does not
check config keys again.

The schema ships inside the package (`advdissect/schemas/config.schema.yaml`) and is read as a
package resource, so an installed copy finds it; the workflow validates against the same file.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Mapping
from fractions import Fraction
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import yaml

from .errors import ConfigError

# The config schema, a package resource: `resources.as_file(SCHEMA)` gives a path on disk where
# one is needed (the file itself for an ordinary install).
SCHEMA: Traversable = resources.files(__package__) / "schemas" / "config.schema.yaml"
PIXEL_GRID = 255  # images are stored as uint8: values k/255
_GRID_TOL = 1e-6  # in 1/255 units; float rounding of "k/255" stays far below it


def parse_fraction(value: Any, key: str = "value") -> float:
    """A number or an "a/b" string (e.g. "2/255") as a float >= 0; ConfigError naming `key` otherwise."""
    if isinstance(value, bool):
        raise ConfigError(f"config: {key}: expected a number or 'a/b', got {value!r}")
    if isinstance(value, numbers.Real):
        result = float(value)
    elif isinstance(value, str):
        try:
            parts = value.replace(" ", "").split("/")
            if len(parts) > 2:
                raise ValueError(value)
            result = float(Fraction(parts[0]) / Fraction(parts[1] if len(parts) == 2 else "1"))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"config: {key}: expected a number or 'a/b' such as '8/255', got {value!r}") from None
    else:
        raise ConfigError(f"config: {key}: expected a number or 'a/b', got {value!r}")
    if not math.isfinite(result) or result < 0:
        raise ConfigError(f"config: {key}: must be a finite number >= 0, got {value!r}")
    return result


def on_pixel_grid(value: float) -> bool:
    """True when `value` is a whole number of 1/255 steps (lossless as uint8)."""
    steps = value * PIXEL_GRID
    return abs(steps - round(steps)) < _GRID_TOL


def grid_steps(value: float) -> int:
    """`value` in 1/255 steps (a spec's ε and step are on the grid)."""
    return round(value * PIXEL_GRID)


@functools.cache
def _schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))


def schema_defaults(section: str) -> dict[str, Any]:
    """The schema's default of every key of a section: "weights.train" (a trained model's
    `models.<name>.weights`), or a section's dotted path such as "dissection" or "figures.style"."""
    schema = _schema()
    if section == "weights.train":
        branches = schema["properties"]["models"]["additionalProperties"]["properties"]["weights"]["allOf"]
        train = next(b for b in branches if b["if"]["properties"]["source"].get("const") == "train")
        properties = train["then"]["properties"]
    else:
        properties = schema["properties"]
        for part in section.split("."):
            properties = properties[part]["properties"]
    return {key: prop["default"] for key, prop in properties.items() if "default" in prop}


# ---------------------------------------------------------------- datasets


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """How a dataset's dissected images are cut into shards (`datasets.<name>`): the first
    `n_images` rows of `split`, `shard_size` per shard."""

    split: str
    n_images: int
    shard_size: int

    def __post_init__(self) -> None:
        for key in ("n_images", "shard_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"shard plan: {key} must be a whole number >= 1, got {value!r}")

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_images / self.shard_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- models


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a job needs to build a model's network: `models.<name>` without its layers and
    weights, plus the seed of its initialisation and the sha256 its weights file is pinned to
    (`weights.sha256` of a file or url source)."""

    arch: str
    num_classes: int
    normalization: str | dict = "imagenet"
    seed: int = 0
    weights_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # Unpinned, the dict is what it was before pins existed: the jobs' params stay the same.
        values = dataclasses.asdict(self)
        if values["weights_sha256"] is None:
            del values["weights_sha256"]
        return values


def model_spec(config: Mapping[str, Any], name: str) -> ModelSpec:
    """`models.<name>` of a validated config as a spec. A random init uses its weights' seed
    (default the study's `seed`); every other model is built with the study's seed."""
    settings = config["models"][name]
    weights = settings["weights"]
    seed = weights.get("seed", config["seed"]) if weights["source"] == "random" else config["seed"]
    return ModelSpec(
        arch=settings["arch"],
        num_classes=settings["num_classes"],
        normalization=settings["normalization"],
        seed=seed,
        weights_sha256=weights.get("sha256"),
    )


# ---------------------------------------------------------------- attacks

ATTACK_METHODS = (
    "clean", "fgsm", "bim", "pgd", "noise", "deepfool", "cw", "apgd", "apgd_t", "square", "fab_t", "autoattack"
)  # fmt: skip
GRADIENT_METHODS = ("fgsm", "bim", "pgd")
# Attacks whose results lie off the 1/255 grid: they are rounded to uint8 before they are stored.
ROUNDED_METHODS = ("deepfool", "cw", "apgd", "apgd_t", "square", "fab_t", "autoattack")
# Minimal-perturbation L2 attacks: no ε (their size is what they find), reported by their norms.
L2_METHODS = ("deepfool", "cw")
LABEL_MODES = ("prediction", "true", "target")
TARGET_MODES = ("least_likely", "random")
APGD_LOSSES = ("ce", "dlr")
# Keys each method understands; anything else is a typo worth reporting. `seed` drives PGD's
# and APGD's starts, Square's search, FAB's restarts, the noise signs and random targets.
ATTACK_KEYS = {
    "clean": {"method"},
    "fgsm": {"method", "eps", "labels", "target", "seed"},
    "bim": {"method", "eps", "step", "steps", "labels", "target", "seed"},
    "pgd": {"method", "eps", "step", "steps", "labels", "target", "seed"},
    "noise": {"method", "eps", "seed"},
    "deepfool": {"method", "steps", "overshoot", "candidates"},
    "cw": {"method", "c", "kappa", "steps", "lr"},
    "apgd": {"method", "eps", "steps", "restarts", "loss", "seed"},
    "apgd_t": {"method", "eps", "steps", "restarts", "targets", "seed"},
    "square": {"method", "eps", "queries", "restarts", "p_init", "seed"},
    "fab_t": {"method", "eps", "steps", "restarts", "targets", "seed"},
    "autoattack": {"method", "eps", "steps", "targets", "queries", "seed"},
}
# Defaults of the methods' own keys: DeepFool's and C&W's as torchattacks 3.5.1 has them (C&W
# with c = 1 and 100 steps), DeepFool's candidate classes as the authors' code; APGD's, APGD-T's,
# FAB-T's and Square's as AutoAttack's standard version runs them (Croce & Hein 2020: 100
# iterations, 9 target classes, 5000 queries with p_init 0.8, one restart).
METHOD_DEFAULTS = {
    "deepfool": {"steps": 50, "overshoot": 0.02, "candidates": 10},
    "cw": {"c": 1.0, "kappa": 0.0, "steps": 100, "lr": 0.01},
    "apgd": {"steps": 100, "restarts": 1, "loss": "ce"},
    "apgd_t": {"steps": 100, "restarts": 1, "targets": 9},
    "square": {"queries": 5000, "restarts": 1, "p_init": 0.8},
    "fab_t": {"steps": 100, "restarts": 1, "targets": 9},
    "autoattack": {"steps": 100, "targets": 9, "queries": 5000},
}
# Fields only some methods have: a spec of any other method leaves them None and its dict
# (the jobs' params, the shards' attack_params) leaves them out, as before they existed.
_OPTIONAL_FIELDS = ("overshoot", "candidates", "c", "kappa", "lr", "restarts", "loss", "targets", "queries", "p_init")


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack (`attacks.<name>`). eps and step are in pixel units ([0, 1] images) and, for
    every method that writes a shard, multiples of 1/255 (uint8 holds only those exactly).

    labels: "prediction" (Eq. 10, default) attacks the model's own clean prediction;
    "true" the dataset's class labels (Eq. 5); "target" makes the attack targeted (Eq. 6)
    towards `target`: "least_likely" (the clean image's lowest logit), "random" (a seeded
    random class other than the clean prediction) or a fixed class index.

    deepfool (steps, overshoot, candidates), cw (c, kappa, steps, lr), apgd (eps, steps,
    restarts, loss, seed), apgd_t and fab_t (eps, steps, restarts, targets, seed), square (eps,
    queries, restarts, p_init, seed) and autoattack (eps, steps, targets, queries, seed) attack the
    model's own clean prediction; deepfool and cw have eps 0 (they are L2 attacks of no fixed
    size), and all their results are rounded to uint8.
    """

    method: str
    eps: float = 0.0
    step: float | None = None
    steps: int | None = None
    labels: str = "prediction"
    target: str | int = "least_likely"
    seed: int = 0
    name: str = "attack"
    overshoot: float | None = None
    candidates: int | None = None
    c: float | None = None
    kappa: float | None = None
    lr: float | None = None
    restarts: int | None = None
    loss: str | None = None
    targets: int | None = None
    queries: int | None = None
    p_init: float | None = None

    def __post_init__(self) -> None:
        if self.method not in ATTACK_METHODS:
            raise self._bad("method", f"{self.method!r} is unknown (allowed: {', '.join(ATTACK_METHODS)})")
        own = METHOD_DEFAULTS.get(self.method, {})
        for key in _OPTIONAL_FIELDS:
            if key not in own and getattr(self, key) is not None:
                raise self._bad(key, f"not used by method '{self.method}'")
        self._check_eps_and_step()
        self._check_method_keys(own)
        self._check_pixel_grid()
        self._check_labels_and_seed()

    def _bad(self, key: str, why: str) -> ConfigError:
        return ConfigError(f"config: attacks.{self.name}.{key}: {why}")

    def _whole(self, key: str, least: int) -> None:
        value = getattr(self, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise self._bad(key, f"must be an integer >= {least}, got {value!r}")

    def _number(self, key: str, positive: bool) -> None:
        value = getattr(self, key)
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0 or (positive and value == 0):
            raise self._bad(key, f"must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")

    def _check_eps_and_step(self) -> None:
        if self.method in ("clean", *L2_METHODS):
            if self.eps != 0:
                raise self._bad("eps", f"not used by method '{self.method}' (must be 0)")
        elif not 0 < self.eps <= 1:
            raise self._bad("eps", f"must be in (0, 1] (pixel units, e.g. 2/255), got {self.eps!r}")
        if self.method in ("bim", "pgd"):
            if self.step is None or not 0 < self.step <= 1:
                raise self._bad("step", f"must be in (0, 1] (pixel units), got {self.step!r}")

    def _check_method_keys(self, own: Mapping[str, Any]) -> None:
        """The keys of the method's own (`METHOD_DEFAULTS`), and the steps of bim and pgd."""
        if self.method in ("bim", "pgd") or "steps" in own:
            self._whole("steps", 1)
        for key in ("restarts", "targets", "queries"):
            if key in own:
                self._whole(key, 1)
        if self.method == "deepfool":
            self._number("overshoot", positive=False)
            self._whole("candidates", 2)
        if self.method == "cw":
            self._number("c", positive=True)
            self._number("kappa", positive=False)
            self._number("lr", positive=True)
        if "p_init" in own:
            self._number("p_init", positive=True)
            if self.p_init > 1:
                raise self._bad("p_init", f"must be a share of the pixels in (0, 1], got {self.p_init!r}")
        if self.method == "apgd":
            if self.loss not in APGD_LOSSES:
                raise self._bad("loss", f"{self.loss!r} is not allowed (allowed: {', '.join(APGD_LOSSES)})")

    def _check_pixel_grid(self) -> None:
        for key in ("eps", "step") if self.method in ("bim", "pgd") else ("eps",):
            value = getattr(self, key)
            # A value below half a step is "on the grid" at 0 steps: the image would not move.
            if self.method not in ("clean", *L2_METHODS) and (not on_pixel_grid(value) or grid_steps(value) == 0):
                raise self._bad(
                    key,
                    f"{value:g} is not a multiple of 1/255 (images are stored as uint8; write it as k/255, "
                    f"e.g. {max(1, grid_steps(value))}/255)",
                )

    def _check_labels_and_seed(self) -> None:
        if self.labels not in LABEL_MODES:
            raise self._bad("labels", f"{self.labels!r} is not allowed (allowed: {', '.join(LABEL_MODES)})")
        if self.labels != "prediction" and self.method not in GRADIENT_METHODS:
            raise self._bad(
                "labels",
                f"not used by method '{self.method}' (the noise control uses no labels; deepfool, cw, apgd, "
                "apgd_t, square, fab_t and autoattack attack the model's own clean prediction)",
            )
        if isinstance(self.target, bool) or not (
            self.target in TARGET_MODES or (isinstance(self.target, int) and self.target >= 0)
        ):
            raise self._bad("target", f"{self.target!r} is not allowed (least_likely, random, or a class index >= 0)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise self._bad("seed", f"must be an integer >= 0, got {self.seed!r}")

    @property
    def targeted(self) -> bool:
        return self.labels == "target"

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        for key in _OPTIONAL_FIELDS:
            if values[key] is None:
                del values[key]
        return values


def attack_spec(name: str, settings: Mapping[str, Any]) -> AttackSpec:
    """`attacks.<name>` as a spec; defaults as in the BIM paper.

    bim/pgd: step defaults to 1/255 and steps to min(255·ε + 4, 1.25·255·ε) (Kurakin
    et al. 2017). `target` needs `labels: target`. deepfool, cw, apgd, apgd_t, square, fab_t and
    autoattack take their own keys (`METHOD_DEFAULTS`); deepfool and cw have no ε.
    """
    where = f"config: attacks.{name}"
    if not isinstance(settings, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings, got {settings!r}")
    method = settings.get("method")
    if method not in ATTACK_METHODS:
        raise ConfigError(f"{where}.method: {method!r} is unknown (allowed: {', '.join(ATTACK_METHODS)})")
    allowed = ATTACK_KEYS[method]
    for key in settings:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: not used by method '{method}' (allowed: {', '.join(sorted(allowed))})")
    if method == "clean":
        return AttackSpec(method="clean", name=name)
    if method in L2_METHODS:
        return AttackSpec(method=method, name=name, **_method_fields(name, method, settings))
    if "eps" not in settings:
        raise ConfigError(f"{where}.eps: required for method '{method}' (e.g. eps: 2/255)")
    eps = parse_fraction(settings["eps"], f"attacks.{name}.eps")
    fields: dict[str, Any] = {"method": method, "eps": eps, "name": name}
    if method in METHOD_DEFAULTS:
        fields.update(_method_fields(name, method, settings))
    if method in ("bim", "pgd"):
        fields["step"] = parse_fraction(settings.get("step", "1/255"), f"attacks.{name}.step")
        steps = settings.get("steps")
        fields["steps"] = max(1, int(min(eps * 255 + 4, 1.25 * eps * 255))) if steps is None else steps
    if "labels" in settings:
        # YAML reads an unquoted `labels: true` as a boolean.
        fields["labels"] = "true" if settings["labels"] is True else settings["labels"]
    if fields.get("labels") == "target" and "target" not in settings:
        raise ConfigError(f"{where}.target: required when labels is 'target' (least_likely, random or a class index)")
    if "target" in settings:
        if settings.get("labels") != "target":
            raise ConfigError(f"{where}.target: needs 'labels: target'")
        target = settings["target"]
        fields["target"] = int(target) if isinstance(target, str) and target.strip().isdigit() else target
    if "seed" in settings:
        fields["seed"] = settings["seed"]
    return AttackSpec(**fields)


def _method_fields(name: str, method: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """A method's own keys (`METHOD_DEFAULTS`), defaults filled in; reals may be written as 'a/b'."""
    fields = dict(METHOD_DEFAULTS[method])
    for key in fields:
        if key in settings:
            value = settings[key]
            real = isinstance(fields[key], float)
            fields[key] = parse_fraction(value, f"attacks.{name}.{key}") if real else value
    return fields


# ---------------------------------------------------------------- training

TRAIN_METHODS = ("standard", "at", "consistency", "atda")
ADVERSARIAL_METHODS = ("at", "consistency", "atda")
# Methods with a term on the features φ of clean and FGSM images (`feature`).
FEATURE_METHODS = ("consistency", "atda")
OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("bf16", "float32")
_TRAIN = schema_defaults("weights.train")
# Keys of a trained model's `weights` that say what to train on and from, not how.
_NOT_TRAINING = ("source", "dataset", "init", "image_size")


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """How a model is trained (`models.<name>.weights`); every default is the schema's.

    `key` is the config path the settings came from; messages name it, and it takes no part in
    comparisons or in `to_dict` (so it never changes a checkpoint's fingerprint).
    """

    method: str = _TRAIN["method"]
    epochs: int = _TRAIN["epochs"]
    batch_size: int = _TRAIN["batch_size"]
    lr: float = _TRAIN["lr"]  # peak learning rate, reached at the end of the warm-up
    optimizer: str = _TRAIN["optimizer"]  # "adam": Adam (L2 weight decay); "sgd": Nesterov momentum
    momentum: float = _TRAIN["momentum"]  # SGD only
    weight_decay: float = _TRAIN["weight_decay"]
    eps: float = parse_fraction(_TRAIN["eps"])  # FGSM ε (pixel units), also of the held-out FGSM accuracy
    lam: float = _TRAIN["lam"]  # λ of the consistency / domain-adaptation term (Song et al. use 1/3)
    feature: str = _TRAIN["feature"]  # φ: "logits" or a layer name of the model
    margin: bool = _TRAIN["margin"]  # atda: add the margin term
    seed: int = _TRAIN["seed"]
    augment: bool = _TRAIN["augment"]  # random horizontal flips
    warmup: float = _TRAIN["warmup"]  # fraction of all steps with a linear LR ramp
    grad_clip: float = float(_TRAIN["grad_clip"])  # clip the global gradient norm to this (0 = off)
    precision: str = _TRAIN["precision"]  # "bf16": autocast update, channels-last, fused steps; "float32"
    key: str = dataclasses.field(default="training", compare=False, repr=False)

    def __post_init__(self) -> None:
        def bad(key: str, allowed: str) -> ConfigError:
            return ConfigError(f"config: {self.key}.{key}: {getattr(self, key)!r} is not allowed; {allowed}")

        if self.method not in TRAIN_METHODS:
            raise bad("method", f"allowed: {', '.join(TRAIN_METHODS)}")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"allowed: {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"allowed: {', '.join(PRECISIONS)}")
        for key in ("epochs", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(key, "expected an integer >= 1")
        for key in ("lr", "momentum", "weight_decay", "eps", "lam", "warmup", "grad_clip"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise bad(key, "expected a finite number >= 0")
        if self.lr <= 0:
            raise bad("lr", "expected a number > 0")
        if self.warmup >= 1:
            raise bad("warmup", "expected a fraction of the steps in [0, 1)")
        if self.method in ADVERSARIAL_METHODS and self.eps <= 0:
            raise bad("eps", f"method {self.method!r} trains on FGSM examples and needs eps > 0 (e.g. '4/255')")
        if not isinstance(self.feature, str) or not self.feature:
            raise bad("feature", "expected 'logits' or a layer name")
        if self.margin and self.method != "atda":
            raise ConfigError(
                f"config: {self.key}.margin: only method 'atda' has a margin term (method is {self.method!r})"
            )

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        del values["key"]
        return values


def train_spec(settings: Mapping[str, Any], key: str = "training") -> TrainSpec:
    """A trained model's settings (`key`, e.g. "models.resnet18.weights") as a spec; the keys
    that say what to train on (source, dataset, init) are not part of it."""
    fields = {f.name for f in dataclasses.fields(TrainSpec)} - {"key"}
    values = {k: v for k, v in settings.items() if k not in _NOT_TRAINING}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"config: {key}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}")
    if "eps" in values:
        values["eps"] = parse_fraction(values["eps"], f"{key}.eps")
    for name in ("lr", "momentum", "weight_decay", "lam", "warmup", "grad_clip"):
        if isinstance(values.get(name), int) and not isinstance(values[name], bool):
            values[name] = float(values[name])
    return TrainSpec(**values, key=key)
