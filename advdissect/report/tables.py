"""Summary tables: Table 2, attack and model effects, models, attacks, concept drift and the training comparison.

Every function here takes plain data (paths, dicts, DataFrames) and returns DataFrames or text;
the `write_*` helpers are what the thin Snakemake scripts call, so each script stays one call.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import store
from ..dissect.bootstrap import DETECTOR_COLUMNS, basic_interval, read_bootstrap
from ..dissect.drift import DRIFT_COLUMNS, DRIFT_STATUSES, concept_drift, drift_summary
from ..dissect.tally import read_units
from ..errors import ArtifactError, ConfigError
from ..specs import TRAIN_METHODS as TRAINING_METHODS
from ..store import PathLike
from .dissections import THRESHOLD_MODES, check_entries, entry_key, is_clean_entry, with_clean_in_both_modes
from .markdown import md_escape, md_table

log = logging.getLogger(__name__)

# Table 2 of the study orders its columns C T M S P O; every table and figure uses this order.
CATEGORY_ORDER = ("color", "texture", "material", "scene", "part", "object")
CATEGORY_ABBREV = {"color": "C", "texture": "T", "material": "M", "scene": "S", "part": "P", "object": "O"}
TABLE2_CATEGORIES = CATEGORY_ORDER + ("all",)

TABLE2_COLUMNS = [
    "dataset",
    "model",
    "layer",
    "attack",
    "threshold_mode",
    "category",
    "units",
    "detectors",
    "ratio_percent",
    "concepts",
    "ci_low_percent",
    "ci_high_percent",
]
EFFECT_COLUMNS = [
    "dataset",
    "model",
    "layer",
    "threshold_mode",
    "attack",
    "category",
    "units",
    "clean_percent",
    "attack_percent",
    "difference",
    "ci_low",
    "ci_high",
    "shown",
]
MODEL_EFFECT_COLUMNS = [
    "dataset",
    "model",
    "baseline",
    "layer",
    "threshold_mode",
    "category",
    "units",
    "baseline_percent",
    "model_percent",
    "difference",
    "ci_low",
    "ci_high",
    "shown",
]
IOU_SWEEP_COLUMNS = [
    "dataset",
    "model",
    "layer",
    "attack",
    "threshold_mode",
    "cut",
    "units",
    "detectors",
    "ratio_percent",
]
# The IoU cuts of the sweep: 0.02 to 0.20 in steps of 0.01 (Network Dissection's 0.04 among them).
IOU_CUTS = tuple(round(0.02 + 0.01 * i, 2) for i in range(19))
ATTACK_COLUMNS = [
    "dataset",
    "model",
    "attack",
    "method",
    "eps",
    "n_images",
    "agreement",
    "success_rate",
    "linf_max",
    "l2_mean",
    "clean_accuracy",
    "adversarial_accuracy",
]


# --------------------------------------------------------------------------- row order


def _first_seen(values: Iterable[Any]) -> dict[Any, int]:
    order: dict[Any, int] = {}
    for v in values:
        order.setdefault(v, len(order))
    return order


def _sort_frame(frame: pd.DataFrame, clean_attacks: set[str], mode_col: str = "threshold_mode") -> pd.DataFrame:
    """Order rows by first appearance (config order), modes self→clean, the clean set first."""
    if frame.empty:
        return frame.reset_index(drop=True)
    keys = {}
    for col in ("dataset", "model", "layer"):
        if col in frame:
            rank = _first_seen(frame[col])
            keys[col] = frame[col].map(rank)
    if mode_col in frame:
        keys[mode_col] = frame[mode_col].map(
            lambda m: THRESHOLD_MODES.index(m) if m in THRESHOLD_MODES else len(THRESHOLD_MODES)
        )
    if "attack" in frame:
        rank = _first_seen(frame["attack"])
        keys["attack"] = frame["attack"].map(lambda a: -1 if a in clean_attacks else rank[a])
    if "category" in frame:
        keys["category"] = frame["category"].map(
            lambda c: TABLE2_CATEGORIES.index(c) if c in TABLE2_CATEGORIES else len(TABLE2_CATEGORIES)
        )
    order = pd.DataFrame(keys)
    idx = order.sort_values(list(order.columns), kind="stable").index
    return frame.loc[idx].reset_index(drop=True)


# --------------------------------------------------------------------------- Table 2


def table2_rows(units: pd.DataFrame) -> list[dict]:
    """Per category (and 'all'): units, detectors, ratio_percent, distinct concepts."""
    n_units = int(len(units))
    det = units.loc[units["detector"]]
    rows = []
    for category in TABLE2_CATEGORIES:
        sel = det if category == "all" else det.loc[det["category"] == category]
        n_det = int(len(sel))
        rows.append(
            {
                "category": category,
                "units": n_units,
                "detectors": n_det,
                "ratio_percent": 100.0 * n_det / n_units if n_units else 0.0,
                "concepts": int(sel["label"].nunique()),
            }
        )
    return rows


def _resampled_percent(entry: Mapping[str, Any]) -> pd.DataFrame:
    """The detector share (% of units) of each category, per resample, of one dissection: its
    bootstrap table read once. Indexed by the resample number."""
    # The clean set is dissected once, with its own thresholds: mode 'clean' is its 'self' run.
    mode = "self" if is_clean_entry(entry) else entry["mode"]
    frame = read_bootstrap(entry["bootstrap"], mode=mode, layer=entry["layer"])
    units = frame["units"].to_numpy(np.float64)
    return pd.DataFrame(
        {c: 100.0 * frame[c].to_numpy(np.float64) / units for c in DETECTOR_COLUMNS},
        index=pd.Index(frame["resample"].to_numpy(np.int64), name="resample"),
    )


def table2(entries: Sequence[Mapping[str, Any]], level: float = 0.95) -> pd.DataFrame:
    """Tidy Table 2: one row per dataset/model/layer/attack/threshold_mode/category.

    `entries`: dicts {dataset, model, layer, attack, mode, path[, method][, bootstrap]}. The
    clean set, run only with mode 'self', is repeated under mode 'clean' (its thresholds are
    the clean ones). With a bootstrap table, ci_*_percent is the ratio's `level` basic
    bootstrap interval (advdissect.dissect.bootstrap); without, they are empty.
    """
    entries = with_clean_in_both_modes(check_entries(entries))
    rows = []
    for e in entries:
        units = read_units(e["path"])
        resampled = _resampled_percent(e) if e.get("bootstrap") else None
        for r in table2_rows(units):
            lo = hi = float("nan")
            if resampled is not None:
                values = resampled[r["category"]].to_numpy()
                lo, hi = basic_interval(r["ratio_percent"], values, level, bounds=(0.0, 100.0))
            r.update(ci_low_percent=lo, ci_high_percent=hi)
            rows.append(
                {
                    **entry_key(e),
                    **r,
                }
            )
    frame = pd.DataFrame(rows, columns=TABLE2_COLUMNS)
    clean = {e["attack"] for e in entries if is_clean_entry(e)}
    return _sort_frame(frame, clean)


_MODE_TITLES = {
    "self": "Thresholds recomputed on each image set (threshold_mode = self)",
    "clean": "Thresholds fixed from the clean images (threshold_mode = clean)",
}


def table2_markdown(df: pd.DataFrame, level: float = 0.95) -> str:
    """The study's Table 2 layout: a block per threshold mode; rows model/layer/attack;
    columns C T M S P O and All as 'percent (detectors) [interval]', then units and distinct concepts."""
    missing = [c for c in TABLE2_COLUMNS if c not in df.columns]
    if missing:
        raise ArtifactError(f"table2 frame lacks column(s) {missing}")
    parts = [
        "# Table 2: interpretable units per concept category",
        "",
        "Each cell: percentage of the layer's units that are detectors of a concept in that "
        "category, with the number of detectors in parentheses. C color, T texture, M material, "
        "S scene, P part, O object; Concepts = distinct concepts detected."
        + (
            f" In brackets: {100 * level:g} % bootstrap interval over the dissected images."
            if df["ci_low_percent"].notna().any()
            else ""
        ),
    ]
    multi_dataset = df["dataset"].nunique() > 1
    modes = [m for m in THRESHOLD_MODES if m in set(df["threshold_mode"])]
    modes += sorted(set(df["threshold_mode"]) - set(modes))
    for mode in modes:
        block = df.loc[df["threshold_mode"] == mode]
        header = (["Dataset"] if multi_dataset else []) + ["Model", "Layer", "Attack"]
        header += [CATEGORY_ABBREV[c] for c in CATEGORY_ORDER] + ["All", "Units", "Concepts"]
        rows = []
        keys = ["dataset", "model", "layer", "attack"]
        for key, group in block.groupby(keys, sort=False):
            by_cat = group.set_index("category")
            row = [md_escape(k) for k in (key if multi_dataset else key[1:])]
            for cat in TABLE2_CATEGORIES:
                if cat in by_cat.index:
                    r = by_cat.loc[cat]
                    cell = f"{float(r['ratio_percent']):.1f} ({int(r['detectors'])})"
                    if pd.notna(r["ci_low_percent"]):
                        cell += f" [{float(r['ci_low_percent']):.1f}, {float(r['ci_high_percent']):.1f}]"
                    row.append(cell)
                else:
                    row.append("")
            all_row = by_cat.loc["all"] if "all" in by_cat.index else None
            row.append(str(int(all_row["units"])) if all_row is not None else "")
            row.append(str(int(all_row["concepts"])) if all_row is not None else "")
            rows.append(row)
        n_key = len(header) - 9
        parts += ["", f"## {_MODE_TITLES.get(mode, f'threshold_mode = {mode}')}", ""]
        parts.append(md_table(header, rows, right=set(range(n_key, len(header)))))
    return "\n".join(parts) + "\n"


def _paired_difference(point: float, resampled: np.ndarray, level: float) -> dict[str, Any]:
    """An effect's difference, its `level` basic bootstrap interval from the resampled
    differences, and whether the interval excludes 0 (`shown`)."""
    lo, hi = basic_interval(point, resampled, level)
    return {"difference": point, "ci_low": lo, "ci_high": hi, "shown": bool(lo > 0 or hi < 0)}


def attack_effects(entries: Sequence[Mapping[str, Any]], level: float = 0.95) -> pd.DataFrame:
    """Attack minus clean detector ratio (points of %), per category, with a paired interval.

    Each attack entry with a bootstrap table is paired with its clean set (same dataset, model
    and layer): the difference is taken resample by resample (the resamples draw the same
    images), its `level` basic bootstrap interval computed, and `shown` says whether the
    interval excludes 0.
    """
    entries = check_entries(entries)
    clean = {(e["dataset"], e["model"], e["layer"]): e for e in entries if is_clean_entry(e) and e["mode"] == "self"}
    rows = []
    for e in entries:
        base = clean.get((e["dataset"], e["model"], e["layer"]))
        if is_clean_entry(e) or base is None or not e.get("bootstrap") or not base.get("bootstrap"):
            continue
        attacked, reference = read_units(e["path"]), read_units(base["path"])
        resampled = _resampled_percent(e) - _resampled_percent(base)
        for r_att, r_ref in zip(table2_rows(attacked), table2_rows(reference)):
            category = r_att["category"]
            point = r_att["ratio_percent"] - r_ref["ratio_percent"]
            rows.append(
                {
                    **entry_key(e),
                    "category": category,
                    "units": r_att["units"],
                    "clean_percent": r_ref["ratio_percent"],
                    "attack_percent": r_att["ratio_percent"],
                    **_paired_difference(point, resampled[category].to_numpy(), level),
                }
            )
    frame = pd.DataFrame(rows, columns=EFFECT_COLUMNS)
    return _sort_frame(frame, {e["attack"] for e in entries if is_clean_entry(e)})


def model_effects(
    entries: Sequence[Mapping[str, Any]], baselines: Mapping[str, str | None], level: float = 0.95
) -> pd.DataFrame:
    """A model's detector share (% of units) minus its baseline's, on the same clean images with
    each model's own thresholds (threshold_mode 'self'), per dataset, layer and category.

    `baselines`: {model: the model it is compared with} (config.model_baselines). A row needs the
    clean dissection of both models at the layer, each with a bootstrap table; a layer the
    baseline does not dissect gives none. The bootstrap weights depend only on the dataset's
    image count and the seed, so both tables resample the same images: the difference is taken
    resample by resample, its `level` basic bootstrap interval computed, and `shown` says
    whether the interval excludes 0.
    """
    entries = check_entries(entries)
    clean = {(e["dataset"], e["model"], e["layer"]): e for e in entries if is_clean_entry(e) and e["mode"] == "self"}
    rows = []
    for (dataset, model, layer), e in clean.items():
        baseline = baselines.get(model)
        base = clean.get((dataset, baseline, layer)) if baseline is not None else None
        if base is None or not e.get("bootstrap") or not base.get("bootstrap"):
            continue
        ours, theirs = _resampled_percent(e), _resampled_percent(base)
        if not ours.index.equals(theirs.index):
            raise ArtifactError(
                f"{e['bootstrap']} and {base['bootstrap']}: {len(ours)} and {len(theirs)} resamples of "
                f"{dataset}/{layer}, numbered differently; they cannot be paired (re-run the bootstrap jobs)"
            )
        resampled = ours - theirs
        for r_model, r_base in zip(table2_rows(read_units(e["path"])), table2_rows(read_units(base["path"]))):
            category = r_model["category"]
            point = r_model["ratio_percent"] - r_base["ratio_percent"]
            rows.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "baseline": baseline,
                    "layer": layer,
                    "threshold_mode": "self",
                    "category": category,
                    "units": r_model["units"],
                    "baseline_percent": r_base["ratio_percent"],
                    "model_percent": r_model["ratio_percent"],
                    **_paired_difference(point, resampled[category].to_numpy(), level),
                }
            )
    frame = pd.DataFrame(rows, columns=MODEL_EFFECT_COLUMNS)
    return _sort_frame(frame, set())


def iou_sweep(entries: Sequence[Mapping[str, Any]], cuts: Sequence[float] = IOU_CUTS) -> pd.DataFrame:
    """Detectors of any category at each IoU cut (a unit counts when its best IoU exceeds the cut),
    per dissection entry; the clean set appears under both threshold modes."""
    entries = with_clean_in_both_modes(check_entries(entries))
    rows = []
    for e in entries:
        units = read_units(e["path"])
        best = units["iou"].to_numpy(np.float64)
        for cut in cuts:
            n_det = int(np.sum(best > float(cut)))  # NaN (no concept) is never above a cut
            rows.append(
                {
                    **entry_key(e),
                    "cut": float(cut),
                    "units": int(len(units)),
                    "detectors": n_det,
                    "ratio_percent": 100.0 * n_det / len(units) if len(units) else 0.0,
                }
            )
    frame = pd.DataFrame(rows, columns=IOU_SWEEP_COLUMNS)
    return _sort_frame(frame, {e["attack"] for e in entries if is_clean_entry(e)})


def write_table2(
    entries: Sequence[Mapping[str, Any]],
    csv_path: PathLike,
    md_path: PathLike,
    effects_path: PathLike | None = None,
    level: float = 0.95,
    model_effects_path: PathLike | None = None,
    baselines: Mapping[str, str | None] | None = None,
) -> pd.DataFrame:
    frame = table2(entries, level)
    store.write_csv(csv_path, frame)
    store.write_text(md_path, table2_markdown(frame, level))
    if effects_path is not None:
        store.write_csv(effects_path, attack_effects(entries, level))
    if model_effects_path is not None:
        store.write_csv(model_effects_path, model_effects(entries, baselines or {}, level))
    log.info("table2: %d rows from %d units files", len(frame), len(entries))
    return frame


# --------------------------------------------------------------------------- models and attacks

MODELS_COLUMNS = [
    "model",
    "arch",
    "weights",
    "dataset",
    "heldout_accuracy",
    "weights_detail",
    "training_method",
    "train_accuracy",
    "epochs",
]


def _weights_source(weights: Any) -> tuple[str, str]:
    if weights is None:
        return "random", ""
    if isinstance(weights, str):
        return weights, ""
    if isinstance(weights, Mapping):
        detail = "; ".join(f"{k}={weights[k]}" for k in sorted(weights) if k != "source")
        return str(weights.get("source", "")), detail
    return str(weights), ""


def _training_dataset(weights: Any) -> str:
    """The config name of the dataset a model is trained on here; empty for other sources."""
    if isinstance(weights, Mapping) and weights.get("source") == "train":
        return str(weights.get("dataset", ""))
    return ""


def models_table(models: Mapping[str, Mapping[str, Any]], metrics: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per configured model; accuracy columns only for models trained here."""
    unknown = sorted(set(metrics) - set(models))
    if unknown:
        raise ConfigError(f"metrics given for model(s) {unknown} that are not in the models config")
    rows = []
    for name, spec in models.items():
        if not isinstance(spec, Mapping) or "arch" not in spec:
            raise ConfigError(f"models.{name}: needs an 'arch' key")
        source, detail = _weights_source(spec.get("weights"))
        m = metrics.get(name, {})
        rows.append(
            {
                "model": name,
                "arch": spec["arch"],
                "weights": source,
                "dataset": _training_dataset(spec.get("weights")),
                "heldout_accuracy": m.get("heldout_accuracy", np.nan),
                "weights_detail": detail,
                "training_method": m.get("method", ""),
                "train_accuracy": m.get("train_accuracy", np.nan),
                "epochs": m.get("epochs", np.nan),
            }
        )
    frame = pd.DataFrame(rows, columns=MODELS_COLUMNS)
    # Integers stay integers in the CSV even with empty cells.
    frame["epochs"] = frame["epochs"].astype("Int64")
    return frame


def read_metrics(path: PathLike) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot be read as metrics JSON ({exc})") from None
    if not isinstance(data, dict) or "heldout_accuracy" not in data:
        raise ArtifactError(f"{path}: metrics JSON needs a 'heldout_accuracy' key")
    return data


def write_models_table(
    models: Mapping[str, Mapping[str, Any]], trained: Sequence[str], metrics_paths: Sequence[PathLike], out: PathLike
) -> pd.DataFrame:
    trained = list(trained)
    if len(trained) != len(metrics_paths):
        raise ConfigError(
            f"{len(trained)} trained model names but {len(metrics_paths)} metrics files: "
            "params.trained and input.metrics must list the same models in the same order"
        )
    metrics = {name: read_metrics(p) for name, p in zip(trained, metrics_paths)}
    frame = models_table(models, metrics)
    store.write_csv(out, frame)
    return frame


def read_attack_stats(path: PathLike) -> pd.DataFrame:
    frame = read_summary_csv(path)
    missing = [c for c in ATTACK_COLUMNS if c not in frame.columns]
    if missing:
        raise ArtifactError(f"{path}: attack stats lack column(s) {missing}; expected {ATTACK_COLUMNS}")
    if frame.empty:
        raise ArtifactError(f"{path}: attack stats file has no row")
    return frame


def attacks_table(stat_csv_paths: Sequence[PathLike]) -> pd.DataFrame:
    """All attack_stats.csv rows, sorted by dataset, model, (clean first) method, eps, attack."""
    frames = [read_attack_stats(p) for p in stat_csv_paths]
    if not frames:
        return pd.DataFrame(columns=ATTACK_COLUMNS)
    frame = pd.concat(frames, ignore_index=True)
    extra = [c for c in frame.columns if c not in ATTACK_COLUMNS]
    frame = frame[ATTACK_COLUMNS + extra]
    frame["_clean_first"] = (frame["method"] != "clean").astype(int)
    frame = frame.sort_values(["dataset", "model", "_clean_first", "method", "eps", "attack"], kind="stable")
    return frame.drop(columns="_clean_first").reset_index(drop=True)


def write_attacks_table(stat_csv_paths: Sequence[PathLike], out: PathLike) -> pd.DataFrame:
    frame = attacks_table(stat_csv_paths)
    store.write_csv(out, frame)
    return frame


# --------------------------------------------------------------------------- concept drift

DRIFT_KEYS = ["dataset", "model", "layer", "attack", "threshold_mode"]


def concept_drift_tables(entries: Sequence[Mapping[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drift of every adversarial dissection against the clean one of its dataset/model/layer.

    Both modes compare with the clean set's own (self) result: with mode 'clean' the attacked
    images were thresholded at the clean thresholds, so that is the matching clean dissection.
    Returns (per-unit rows with the key columns, one summary row of status counts per key).
    """
    entries = check_entries(entries)
    clean = {(e["dataset"], e["model"], e["layer"]): e for e in entries if is_clean_entry(e) and e["mode"] == "self"}
    unit_frames, summaries = [], []
    clean_cache: dict[str, pd.DataFrame] = {}
    for e in entries:
        if is_clean_entry(e):
            continue
        ref = clean.get((e["dataset"], e["model"], e["layer"]))
        if ref is None:
            raise ConfigError(
                f"no clean dissection (mode self) for dataset={e['dataset']} model={e['model']} "
                f"layer={e['layer']}: concept drift of attack {e['attack']} needs one"
            )
        if ref["path"] not in clean_cache:
            clean_cache[ref["path"]] = read_units(ref["path"])
        drift = concept_drift(clean_cache[ref["path"]], read_units(e["path"]))
        key = {
            "dataset": e["dataset"],
            "model": e["model"],
            "layer": e["layer"],
            "attack": e["attack"],
            "threshold_mode": e["mode"],
        }
        unit_frames.append(drift.assign(**key))
        summaries.append({**key, **drift_summary(drift)})
    units = (
        pd.concat(unit_frames, ignore_index=True) if unit_frames else pd.DataFrame(columns=DRIFT_COLUMNS + DRIFT_KEYS)
    )
    units = units[DRIFT_KEYS + DRIFT_COLUMNS]
    summary = pd.DataFrame(summaries, columns=DRIFT_KEYS + list(DRIFT_STATUSES) + ["units"])
    return _sort_frame(units, set()), _sort_frame(summary, set())


# --------------------------------------------------------------------------- training comparison

TRAINING_COLUMNS = [
    "arch",
    "method",
    "clean_accuracy",
    "attack",
    "adversarial_accuracy",
    "model",
    "dataset",
    "eps",
    "agreement",
    "heldout_accuracy",
    "layer",
    "clean_detector_ratio",
    "adversarial_detector_ratio",
]


def _deepest_layer(table2_df: pd.DataFrame, dataset: str, model: str) -> str | None:
    layers = table2_df.loc[(table2_df["dataset"] == dataset) & (table2_df["model"] == model), "layer"]
    # Layers appear in config order, which lists them from shallow to deep.
    return None if layers.empty else str(list(dict.fromkeys(layers))[-1])


def _ratio(table2_df: pd.DataFrame, dataset: str, model: str, layer: str | None, attack: str) -> float:
    if layer is None:
        return np.nan
    sel = table2_df.loc[
        (table2_df["dataset"] == dataset)
        & (table2_df["model"] == model)
        & (table2_df["layer"] == layer)
        & (table2_df["attack"] == attack)
        & (table2_df["threshold_mode"] == "self")
        & (table2_df["category"] == "all"),
        "ratio_percent",
    ]
    return float(sel.iloc[0]) if len(sel) else np.nan


def training_table(
    models_df: pd.DataFrame,
    attacks_df: pd.DataFrame,
    table2_df: pd.DataFrame,
    training_models: Mapping[str, Mapping[str, Any]],
) -> pd.DataFrame:
    """One row per (trained model, dataset, adversarial attack): accuracy and detector ratios.

    Accuracies come from the attack stats (clean and adversarial on the same dissected images);
    detector ratios are the all-category share with mode 'self' at the model's deepest
    dissected layer (or `layer` in its training_models entry).
    """
    rows = []
    heldout = dict(zip(models_df["model"], models_df["heldout_accuracy"])) if len(models_df) else {}
    for name, spec in training_models.items():
        for key in ("arch", "method"):
            if key not in spec:
                raise ConfigError(f"training model {name}: needs '{key}'")
        stats = attacks_df.loc[attacks_df["model"] == name]
        clean_rows = stats.loc[stats["method"] == "clean"]
        for _, st in stats.loc[stats["method"] != "clean"].iterrows():
            dataset = st["dataset"]
            layer = spec.get("layer") or _deepest_layer(table2_df, dataset, name)
            clean_attack = clean_rows.loc[clean_rows["dataset"] == dataset, "attack"]
            clean_name = str(clean_attack.iloc[0]) if len(clean_attack) else None
            rows.append(
                {
                    "arch": spec["arch"],
                    "method": spec["method"],
                    "clean_accuracy": st["clean_accuracy"],
                    "attack": st["attack"],
                    "adversarial_accuracy": st["adversarial_accuracy"],
                    "model": name,
                    "dataset": dataset,
                    "eps": st["eps"],
                    "agreement": st["agreement"],
                    "heldout_accuracy": heldout.get(name, np.nan),
                    "layer": layer or "",
                    "clean_detector_ratio": (
                        _ratio(table2_df, dataset, name, layer, clean_name) if clean_name else np.nan
                    ),
                    "adversarial_detector_ratio": _ratio(table2_df, dataset, name, layer, st["attack"]),
                }
            )
    frame = pd.DataFrame(rows, columns=TRAINING_COLUMNS)
    method_rank = {m: i for i, m in enumerate(TRAINING_METHODS)}
    if not frame.empty:
        frame = frame.assign(_m=frame["method"].map(lambda m: method_rank.get(m, len(method_rank))))
        frame = frame.sort_values(["arch", "_m", "model", "dataset", "eps", "attack"], kind="stable")
        frame = frame.drop(columns="_m").reset_index(drop=True)
    return frame


# Name columns stay text ("4" is a layer name, "NA" could be a model name).
_NAME_COLUMNS = (
    "dataset",
    "model",
    "baseline",
    "layer",
    "attack",
    "threshold_mode",
    "category",
    "method",
    "arch",
    "weights",
)


def read_summary_csv(path: PathLike) -> pd.DataFrame:
    """Read one of the summary CSVs (models, attacks, table2) with name columns as text."""
    try:
        head = pd.read_csv(path, nrows=0)
        dtypes = {c: str for c in head.columns if c in _NAME_COLUMNS}
        missing = {c: ["", "nan", "NaN", "NA", "N/A", "null"] for c in head.columns if c not in dtypes}
        return pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=missing)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ArtifactError(f"{path}: cannot be read as a summary CSV ({exc})") from None
