"""Dissection entries: the {dataset, model, layer, attack, mode, path} records the summary tables
and figures are built from, as the Snakemake rules list them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from ..store import PathLike

# Thresholds of an attacked set: recomputed on its own activations, or kept from the clean images.
THRESHOLD_MODES = ("self", "clean")


def is_clean_entry(entry: Mapping[str, Any]) -> bool:
    """The clean image set is the attack whose method is 'clean' (or, without a method, named 'clean')."""
    if entry.get("method") is not None:
        return entry["method"] == "clean"
    return entry["attack"] == "clean"


def check_entries(entries: Sequence[Mapping[str, Any]], need_path: bool = True) -> list[dict]:
    """Validate dissection entries {dataset, model, layer, attack, mode, [method], path}."""
    keys = ["dataset", "model", "layer", "attack", "mode"] + (["path"] if need_path else [])
    out, seen = [], set()
    for i, entry in enumerate(entries):
        missing = [k for k in keys if k not in entry]
        if missing:
            raise ConfigError(f"entry {i} ({dict(entry)}) lacks key(s) {missing}; each needs {keys}")
        if entry["mode"] not in THRESHOLD_MODES:
            raise ConfigError(f"entry {i}: mode {entry['mode']!r} unknown; allowed: {', '.join(THRESHOLD_MODES)}")
        key = tuple(str(entry[k]) for k in ("dataset", "model", "layer", "attack", "mode"))
        if key in seen:
            raise ConfigError(f"entry {i}: {dict(zip(keys, key))} is listed twice")
        seen.add(key)
        out.append(dict(entry))
    return out


def entry_key(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The columns that name a dissection in the summary tables."""
    return {
        "dataset": entry["dataset"],
        "model": entry["model"],
        "layer": entry["layer"],
        "attack": entry["attack"],
        "threshold_mode": entry["mode"],
    }


def zip_entries(
    entries: Sequence[Mapping[str, Any]], paths: Sequence[PathLike], key: str = "path", what: str = "units"
) -> list[dict]:
    """Attach the input paths (same order) to entries given without them, under `key`."""
    entries, paths = list(entries), [str(p) for p in paths]
    if len(entries) != len(paths):
        raise ConfigError(
            f"{len(entries)} entries but {len(paths)} {what} files: params.entries and input.{what} "
            "must list the same dissections in the same order"
        )
    return [{**dict(e), key: p} for e, p in zip(entries, paths)]


def with_clean_in_both_modes(entries: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Add the clean set under mode 'clean' too: its own thresholds are the clean thresholds."""
    entries = [dict(e) for e in entries]
    have = {(e["dataset"], e["model"], e["layer"], e["attack"], e["mode"]) for e in entries}
    extra = []
    for e in entries:
        if is_clean_entry(e) and e["mode"] == "self":
            key = (e["dataset"], e["model"], e["layer"], e["attack"], "clean")
            if key not in have:
                extra.append({**e, "mode": "clean"})
    return entries + extra
