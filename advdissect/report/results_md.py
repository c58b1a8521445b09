"""The demo's measured results as Markdown: the block the README embeds verbatim.

Every function here takes DataFrames (as the summary CSVs hold them) and returns text; only
`read_demo_tables` and `write_demo_results` read and write files. The text depends on the
tables alone: no timings, dates or paths, and every number has a fixed format, so two runs that produce the
same tables produce the same bytes. Missing values (a model not run with an attack, an
accuracy without labels) are written as '–'.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from .. import store
from ..dissect.ceilings import read_ceilings
from ..dissect.tally import read_units
from ..store import PathLike
from . import tables
from .markdown import md_escape, md_table

log = logging.getLogger(__name__)
DASH = "–"
START_MARKER = "<!-- demo-results:start -->"
END_MARKER = "<!-- demo-results:end -->"

TITLES = {
    "models": "**Models** (`models.csv`; held-out accuracy: share of the held-out split classified correctly)",
    "attacks": "**Attacks** (`attacks.csv`; % of predictions each attack changed, its "
    "success_rate; – = not run on that model)",
    "table2": "**Table 2, deepest layer** (`table2.csv`; % of the layer's units that are "
    "detectors, per category: C color, T texture, M material, S scene, P part, O object; "
    "thresholds self = recomputed on each image set, clean = kept from the clean images)",
    "concentration": "**Clean deepest layer, concentration** (clean `units/<layer>.csv`; a unit's "
    "best label is its highest-IoU concept, whether or not it is a detector; in brackets the "
    "bootstrap interval from `table2.csv`)",
    "effects": "**Attack effects, deepest layer** (`attack_effects.csv`; change of the detector "
    "share, attack − clean, in points of % of units, with its paired bootstrap interval; "
    "* = the interval excludes 0)",
    "model_effects": "**Adversarial training against its standard model, clean images** (`model_effects.csv`; "
    "deepest layer, each model with its own thresholds; % of the layer's units that are detectors, per "
    "category, of the baseline and the model, and their difference, model − baseline, in points with its "
    "paired bootstrap interval; * = the interval excludes 0)",
    "ceilings": "**Ideal-unit ceilings** (`ceilings.csv`; per category, the highest IoU an ideal "
    "unit reaches at the layer's map size, and its concept)",
    "ablation": "**Ablation of the drifted units** (`ablation.csv`; deepest layer; the attack's flipped "
    "predictions restored by setting the drifted units' maps to their clean mean, against random sets of "
    "as many units: their mean [min, max]; above = the drifted set restores more than every random set)",
    "training": "**Training comparison** (`training.csv`; acc.: accuracy on the labelled dissected "
    "images; det. %: detectors of any category at the layer, thresholds recomputed)",
}
SECTIONS = tuple(TITLES)


# --------------------------------------------------------------------------- formatting


def is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def fmt_fixed(value: Any, decimals: int) -> str:
    """`value` with `decimals` decimals, '–' when missing."""
    return DASH if is_missing(value) else f"{float(value):.{decimals}f}"


def fmt_percent(value: Any, scale: float = 1.0) -> str:
    """A percentage with one decimal (`scale` 100 for a 0–1 share), '–' when missing."""
    return DASH if is_missing(value) else f"{float(value) * scale:.1f}"


def fmt_int(value: Any) -> str:
    return DASH if is_missing(value) else str(int(value))


def text(value: Any) -> str:
    """A name cell: '' for a missing value, '|' escaped."""
    return "" if is_missing(value) else md_escape(value)


def _section(key: str, table: str) -> str:
    return f"{TITLES[key]}\n\n{table}"


def _ordered(names: Iterable[str], order: Sequence[str] | None) -> list[str]:
    """Distinct `names`: those in `order` first, in its order, then the rest as first seen."""
    seen = list(dict.fromkeys(names))
    if order is None:
        return seen
    first = [n for n in order if n in seen]
    return first + [n for n in seen if n not in first]


def _multi_dataset(*frames: pd.DataFrame) -> bool:
    names = set()
    for frame in frames:
        if frame is not None and "dataset" in frame:
            names |= {str(d) for d in frame["dataset"]}
    return len(names) > 1


def _details(detail: Any) -> dict[str, str]:
    """models.csv's weights_detail ('k=v; k=v') as a dict."""
    if is_missing(detail) or not str(detail):
        return {}
    out = {}
    for part in str(detail).split("; "):
        key, _, value = part.partition("=")
        out[key.strip()] = value.strip()
    return out


# --------------------------------------------------------------------------- sections


def attack_columns(attacks: pd.DataFrame) -> list[str]:
    """The attacks (not the clean set) of attacks.csv, ordered by method, eps, name."""
    adv = attacks.loc[attacks["method"] != "clean", ["method", "eps", "attack"]]
    adv = adv.assign(eps=pd.to_numeric(adv["eps"], errors="coerce"))
    adv = adv.sort_values(["method", "eps", "attack"], kind="stable", na_position="last")
    return [str(a) for a in dict.fromkeys(adv["attack"])]


def models_section(models: pd.DataFrame) -> str:
    """model, arch, training method ('method, from <init>' when fine-tuned), epochs, accuracy."""
    header = ["model", "arch", "training", "epochs", "held-out accuracy"]
    rows = []
    for _, r in models.iterrows():
        method = "" if is_missing(r.get("training_method")) else str(r["training_method"])
        if not method:
            method = "" if is_missing(r.get("weights")) else str(r["weights"])
        init = _details(r.get("weights_detail")).get("init")
        training = f"{method}, from {init}" if init else method
        rows.append(
            [
                text(r["model"]),
                text(r["arch"]),
                text(training) or DASH,
                fmt_int(r.get("epochs")),
                fmt_fixed(r.get("heldout_accuracy"), 3),
            ]
        )
    return _section("models", md_table(header, rows, right={3, 4}))


def attacks_section(attacks: pd.DataFrame, model_order: Sequence[str] | None = None) -> str:
    """One row per (dataset,) model, one column per attack: success_rate in %."""
    adv = attacks.loc[attacks["method"] != "clean"]
    names = attack_columns(attacks)
    multi = _multi_dataset(attacks)
    keys = list(dict.fromkeys(zip(attacks["dataset"], attacks["model"])))
    if model_order is not None:
        rank = {m: i for i, m in enumerate(model_order)}
        keys.sort(key=lambda k: rank.get(k[1], len(rank)))
    rate = {(d, m, a): v for d, m, a, v in zip(adv["dataset"], adv["model"], adv["attack"], adv["success_rate"])}
    header = (["dataset"] if multi else []) + ["model"] + names
    rows = []
    for dataset, model in keys:
        row = ([text(dataset)] if multi else []) + [text(model)]
        row += [fmt_percent(rate.get((dataset, model, a)), scale=100.0) for a in names]
        rows.append(row)
    n_key = len(header) - len(names)
    return _section("attacks", md_table(header, rows, right=range(n_key, len(header))))


def table2_section(table2: pd.DataFrame, deepest: Sequence[tuple[str, str, str]]) -> str:
    """Rows (model, layer, thresholds, attack) of each deepest layer; columns C T M S P O All in %."""
    multi = _multi_dataset(table2)
    header = (["dataset"] if multi else []) + ["model", "layer", "thresholds", "attack"]
    header += [tables.CATEGORY_ABBREV[c] for c in tables.CATEGORY_ORDER] + ["All"]
    rows = []
    for dataset, model, layer in deepest:
        block = table2.loc[(table2["dataset"] == dataset) & (table2["model"] == model) & (table2["layer"] == layer)]
        for (mode, attack), group in block.groupby(["threshold_mode", "attack"], sort=False):
            ratio = dict(zip(group["category"], group["ratio_percent"]))
            row = ([text(dataset)] if multi else []) + [text(model), text(layer), text(mode), text(attack)]
            row += [fmt_percent(ratio.get(c)) for c in tables.TABLE2_CATEGORIES]
            rows.append(row)
    n_key = len(header) - len(tables.TABLE2_CATEGORIES)
    return _section("table2", md_table(header, rows, right=range(n_key, len(header))))


def most_common_label(units: pd.DataFrame) -> tuple[str, int]:
    """(label, count): the best label of the most units (ties: the first label alphabetically).

    Units without a label (empty) are not counted; ('', 0) when no unit has one.
    """
    labels = [str(v) for v in units["label"] if not is_missing(v) and str(v) != ""]
    if not labels:
        return "", 0
    counts = pd.Series(labels).value_counts()
    label, count = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return str(label), int(count)


def fmt_interval(lo: Any, hi: Any, signed: bool = False) -> str:
    """' [lo, hi]' with one decimal ('+'/'-' signs when `signed`); '' when missing."""
    if is_missing(lo) or is_missing(hi):
        return ""
    f = "{:+.1f}" if signed else "{:.1f}"
    return f" [{f.format(float(lo))}, {f.format(float(hi))}]"


def clean_intervals(table2: pd.DataFrame, clean_attacks: Iterable[str]) -> dict[tuple[str, str, str, str], tuple]:
    """(dataset, model, layer, category) -> (ci_low, ci_high) of the clean set (thresholds self)."""
    if "ci_low_percent" not in table2.columns:
        return {}
    rows = table2.loc[table2["attack"].isin(set(clean_attacks)) & (table2["threshold_mode"] == "self")]
    return {
        (str(r["dataset"]), str(r["model"]), str(r["layer"]), str(r["category"])): (
            r["ci_low_percent"],
            r["ci_high_percent"],
        )
        for _, r in rows.iterrows()
    }


def concentration_section(
    units: Mapping[tuple[str, str, str], pd.DataFrame], intervals: Mapping[tuple, tuple] | None = None
) -> str:
    """Per (dataset, model, layer) clean units table: units, detectors %, object detectors %
    (with their intervals from `clean_intervals`, where given), and the most common best label
    with its share of all units."""
    intervals = intervals or {}
    multi = len({k[0] for k in units}) > 1
    header = (["dataset"] if multi else []) + [
        "model",
        "layer",
        "units",
        "detectors %",
        "object detectors %",
        "most common best label (% of all units)",
    ]
    rows = []
    for (dataset, model, layer), frame in units.items():
        n = int(len(frame))
        row = ([text(dataset)] if multi else []) + [text(model), text(layer)]
        if n == 0:
            row += [DASH, DASH, DASH, DASH]
        else:
            det = frame["detector"].astype(bool)
            objects = det & (frame["category"] == "object")
            label, count = most_common_label(frame)
            ci_all = intervals.get((dataset, model, layer, "all"), (None, None))
            ci_obj = intervals.get((dataset, model, layer, "object"), (None, None))
            row += [
                str(n),
                fmt_percent(100.0 * det.sum() / n) + fmt_interval(*ci_all),
                fmt_percent(100.0 * objects.sum() / n) + fmt_interval(*ci_obj),
                f"{text(label)} ({fmt_percent(100.0 * count / n)})" if label else DASH,
            ]
        rows.append(row)
    n_key = len(header) - 4
    return _section("concentration", md_table(header, rows, right=range(n_key, len(header) - 1)))


def effects_section(effects: pd.DataFrame, deepest: Sequence[tuple[str, str, str]]) -> str:
    """Rows (model, layer, thresholds, attack) of each deepest layer; per category C T M S P O
    All: the change in points with its interval, '*' where the interval excludes 0."""
    multi = _multi_dataset(effects)
    header = (["dataset"] if multi else []) + ["model", "layer", "thresholds", "attack"]
    header += [tables.CATEGORY_ABBREV[c] for c in tables.CATEGORY_ORDER] + ["All"]
    rows = []
    for dataset, model, layer in deepest:
        block = effects.loc[(effects["dataset"] == dataset) & (effects["model"] == model) & (effects["layer"] == layer)]
        for (mode, attack), group in block.groupby(["threshold_mode", "attack"], sort=False):
            by_cat = {r["category"]: r for _, r in group.iterrows()}
            row = ([text(dataset)] if multi else []) + [text(model), text(layer), text(mode), text(attack)]
            for category in tables.TABLE2_CATEGORIES:
                r = by_cat.get(category)
                if r is None:
                    row.append(DASH)
                    continue
                row.append(fmt_difference(r))
            rows.append(row)
    n_key = len(header) - len(tables.TABLE2_CATEGORIES)
    return _section("effects", md_table(header, rows, right=range(n_key, len(header))))


def fmt_difference(row: Mapping[str, Any]) -> str:
    """An effects row's difference in points, signed, with its interval and '*' when `shown`."""
    shown = "*" if str(row["shown"]).lower() == "true" else ""
    return f"{float(row['difference']):+.1f}{fmt_interval(row['ci_low'], row['ci_high'], signed=True)}{shown}"


def model_effects_section(model_effects: pd.DataFrame, deepest: Sequence[tuple[str, str, str]]) -> str:
    """Per model with a baseline, at its deepest layer, one row per category (C T M S P O, all):
    the baseline's and the model's detector share in %, and the difference with its interval,
    '*' where the interval excludes 0."""
    multi = _multi_dataset(model_effects)
    header = (["dataset"] if multi else []) + ["model", "baseline", "layer", "category"]
    header += ["baseline %", "model %", "difference"]
    rows = []
    for dataset, model, layer in deepest:
        block = model_effects.loc[
            (model_effects["dataset"] == dataset)
            & (model_effects["model"] == model)
            & (model_effects["layer"] == layer)
        ]
        by_cat = {r["category"]: r for _, r in block.iterrows()}
        for category in tables.TABLE2_CATEGORIES:
            r = by_cat.get(category)
            if r is None:
                continue
            row = ([text(dataset)] if multi else []) + [text(model), text(r["baseline"]), text(layer), text(category)]
            row += [fmt_percent(r["baseline_percent"]), fmt_percent(r["model_percent"]), fmt_difference(r)]
            rows.append(row)
    n_key = len(header) - 3
    return _section("model_effects", md_table(header, rows, right=range(n_key, len(header))))


def ablation_section(ablation: pd.DataFrame) -> str:
    """Per (model, layer, attack, thresholds): flipped predictions, units ablated, restored % by the
    drifted set and by the random sets (mean [min, max]), and whether the drifted set beats them all."""
    multi = _multi_dataset(ablation)
    header = (["dataset"] if multi else []) + ["model", "layer", "attack", "thresholds", "flipped", "ablated"]
    header += ["restored % drifted", "restored % random", "above"]
    rows = []
    keys = ["dataset", "model", "layer", "attack", "threshold_mode"]
    for key, group in ablation.groupby(keys, sort=False):
        drifted = group.loc[group["units_set"] == "drifted"]
        random = group.loc[group["units_set"] == "random", "restored_percent"].astype(float)
        if drifted.empty:
            continue
        d = drifted.iloc[0]
        row = ([text(key[0])] if multi else []) + [text(k) for k in key[1:]]
        row += [fmt_int(d["flipped"]), fmt_int(d["ablated"]), fmt_percent(d["restored_percent"])]
        if random.empty or random.isna().all():
            row += [DASH, DASH]
        else:
            row.append(f"{fmt_percent(random.mean())} [{fmt_percent(random.min())}, {fmt_percent(random.max())}]")
            row.append("yes" if float(d["restored_percent"]) > random.max() else "no")
        rows.append(row)
    n_key = len(header) - 5
    return _section("ablation", md_table(header, rows, right=range(n_key, len(header) - 1)))


def _map_size(frame: pd.DataFrame) -> str:
    sizes = [(h, w) for h, w in zip(frame["height"], frame["width"]) if not (is_missing(h) or is_missing(w))]
    if not sizes:
        return DASH
    h, w = sizes[0]
    return f"{int(h)}×{int(w)}"


def ceilings_section(ceilings: pd.DataFrame, deepest: Sequence[tuple[str, str, str]]) -> str:
    """Per deepest layer: its map size and, per category, the highest ideal-unit IoU and its
    concept ('0.540 (magenta)'; ties: the first name alphabetically)."""
    multi = len({k[0] for k in deepest}) > 1
    header = (["dataset"] if multi else []) + ["model", "layer", "map"]
    header += [tables.CATEGORY_ABBREV[c] for c in tables.CATEGORY_ORDER]
    rows = []
    for dataset, model, layer in deepest:
        sel = ceilings.loc[
            (ceilings["dataset"] == dataset) & (ceilings["model"] == model) & (ceilings["layer"] == layer)
        ]
        row = ([text(dataset)] if multi else []) + [text(model), text(layer), _map_size(sel)]
        for category in tables.CATEGORY_ORDER:
            cat = sel.loc[(sel["category"] == category) & sel["iou"].notna()]
            if cat.empty:
                row.append(DASH)
                continue
            cat = cat.assign(_name=cat["name"].astype(str)).sort_values(
                ["iou", "_name"], ascending=[False, True], kind="stable"
            )
            best = cat.iloc[0]
            row.append(f"{fmt_fixed(best['iou'], 3)} ({text(best['name'])})")
        rows.append(row)
    n_key = len(header) - len(tables.CATEGORY_ORDER)
    return _section("ceilings", md_table(header, rows, right=range(n_key - 1, len(header))))


def _first(values: Iterable[Any]) -> Any:
    for v in values:
        if not is_missing(v):
            return v
    return float("nan")


def training_section(training: pd.DataFrame, attack_order: Sequence[str] | None = None) -> str:
    """Per trained model: method, layer, accuracy clean and per attack, detector % clean and
    per attack (training.csv's clean_/adversarial_detector_ratio). Attack columns follow
    `attack_order` (e.g. `attack_columns(attacks)`), then any other attack as first seen."""
    names = _ordered(training["attack"], attack_order)
    multi = _multi_dataset(training)
    header = (["dataset"] if multi else []) + ["model", "method", "layer", "acc. clean"]
    header += [f"acc. {a}" for a in names] + ["det. % clean"] + [f"det. % {a}" for a in names]
    rows = []
    for (dataset, model), group in training.groupby(["dataset", "model"], sort=False):
        by_attack = {r["attack"]: r for _, r in group.iterrows()}
        row = ([text(dataset)] if multi else []) + [
            text(model),
            text(_first(group["method"])),
            text(_first(group["layer"])),
            fmt_fixed(_first(group["clean_accuracy"]), 3),
        ]
        row += [fmt_fixed(by_attack[a]["adversarial_accuracy"], 3) if a in by_attack else DASH for a in names]
        row.append(fmt_percent(_first(group["clean_detector_ratio"])))
        row += [fmt_percent(by_attack[a]["adversarial_detector_ratio"]) if a in by_attack else DASH for a in names]
        rows.append(row)
    n_key = len(header) - 2 * len(names) - 2
    return _section("training", md_table(header, rows, right=range(n_key, len(header))))


# --------------------------------------------------------------------------- the document


@dataclasses.dataclass(frozen=True)
class DemoTables:
    """The summary tables the demo results are written from, as the CSVs hold them.

    `units`: {(dataset, model, deepest layer): clean units table}, in the order the rows
    should appear; its keys name the deepest layers for Table 2 and the ceilings as well.
    The effects sections are written only when `effects` and `model_effects` have rows (the
    bootstrap is on; a model has a baseline), the ablation and training sections only when
    `ablation` and `training` are given.
    """

    models: pd.DataFrame
    attacks: pd.DataFrame
    table2: pd.DataFrame
    ceilings: pd.DataFrame
    units: Mapping[tuple[str, str, str], pd.DataFrame]
    training: pd.DataFrame | None = None
    effects: pd.DataFrame | None = None
    ablation: pd.DataFrame | None = None
    model_effects: pd.DataFrame | None = None


def demo_results_markdown(frames: DemoTables) -> str:
    """Every section, in order, separated by blank lines; ends with one newline."""
    deepest = list(frames.units)
    attacks, effects, model_effects = frames.attacks, frames.effects, frames.model_effects
    model_order = [str(m) for m in frames.models["model"]]
    clean = attacks.loc[attacks["method"] == "clean", "attack"].astype(str)
    parts = [
        models_section(frames.models),
        attacks_section(attacks, model_order),
        table2_section(frames.table2, deepest),
        concentration_section(frames.units, clean_intervals(frames.table2, clean)),
    ]
    if effects is not None and not effects.empty:
        parts.append(effects_section(effects, deepest))
    if model_effects is not None and not model_effects.empty:
        parts.append(model_effects_section(model_effects, deepest))
    parts.append(ceilings_section(frames.ceilings, deepest))
    if frames.ablation is not None:
        parts.append(ablation_section(frames.ablation))
    if frames.training is not None:
        parts.append(training_section(frames.training, attack_columns(attacks)))
    return "\n\n".join(parts) + "\n"


def section_titles(markdown: str) -> list[str]:
    """The bold title lines of a demo-results text, in order."""
    return [line for line in markdown.splitlines() if line.startswith("**")]


def table_headers(markdown: str) -> list[str]:
    """The header row of every table of a demo-results text, in order."""
    lines = markdown.splitlines()
    return [
        line for i, line in enumerate(lines) if line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))
    ]


def embedded_block(readme: str) -> str:
    """The text between the README's start and end marker lines (both on lines of their own)."""
    lines = readme.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == START_MARKER]
    ends = [i for i, line in enumerate(lines) if line.rstrip("\n") == END_MARKER]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError(f"expected one {START_MARKER} line followed by one {END_MARKER} line")
    return "".join(lines[starts[0] + 1 : ends[0]])


@dataclasses.dataclass(frozen=True)
class DemoInputs:
    """The summary CSVs the demo results are read from.

    `units`: [{dataset, model, layer, path}] of each model's deepest dissected layer (clean,
    thresholds self), in model order. The optional tables are left out when None.
    """

    models_csv: PathLike
    attacks_csv: PathLike
    table2_csv: PathLike
    ceilings_csv: PathLike
    units: Sequence[Mapping[str, Any]]
    training_csv: PathLike | None = None
    effects_csv: PathLike | None = None
    ablation_csv: PathLike | None = None
    model_effects_csv: PathLike | None = None


def _optional_csv(path: PathLike | None) -> pd.DataFrame | None:
    return tables.read_summary_csv(path) if path else None


def read_demo_tables(inputs: DemoInputs) -> DemoTables:
    """The tables of `inputs`, read."""
    return DemoTables(
        models=tables.read_summary_csv(inputs.models_csv),
        attacks=tables.read_summary_csv(inputs.attacks_csv),
        table2=tables.read_summary_csv(inputs.table2_csv),
        ceilings=read_ceilings(inputs.ceilings_csv),
        units={(str(u["dataset"]), str(u["model"]), str(u["layer"])): read_units(u["path"]) for u in inputs.units},
        training=_optional_csv(inputs.training_csv),
        effects=_optional_csv(inputs.effects_csv),
        ablation=_optional_csv(inputs.ablation_csv),
        model_effects=_optional_csv(inputs.model_effects_csv),
    )


def write_demo_results(out: PathLike, inputs: DemoInputs) -> str:
    """Read the summary tables and write `demo_results_markdown(...)` to `out`."""
    frames = read_demo_tables(inputs)
    markdown = demo_results_markdown(frames)
    store.write_text(out, markdown)
    log.info("demo results: %d sections, %d units tables", len(section_titles(markdown)), len(frames.units))
    return markdown
