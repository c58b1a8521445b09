"""Weights files: read, checked, matched to a network, saved, and torchvision's published ones
downloaded.

Weights files are data, never code: they are read with `torch.load(weights_only=True)`, and a
file that holds anything but tensors and plain values is refused before anything runs.
A weights file the workflow writes (`save_weights`) records its sha256 beside it, in
`<file>.sha256` (`sha256sum -c` reads it); a file with such a record, or one whose digest the
config pins (`weights.sha256`), is checked against it before it is read.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

from ..errors import ModelError
from ..store import atomic_path, read_sha256_record, sha256_of, sha256_record, write_sha256_record
from .architectures import build_network, list_architectures, resolve_normalization

log = logging.getLogger(__name__)


# Keys under which training checkpoints commonly nest their state_dict.
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")

# Prefixes added by DataParallel/DDP, torch.compile and by saving a NormalizedModel itself.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# The madrylab `robustness` library's AttackerModel: the network under "model.", a second
# reference to it under "attacker.model.", and its input normaliser's mean and std.
_ROBUSTNESS_PARTS = ("model.", "attacker.", "normalizer.")

_SHOW_KEYS = 5


def check_sha256(path: str | Path, pinned: str | None = None) -> None:
    """Raise ModelError unless the weights file matches the digest `pinned` (the config's
    `weights.sha256`) and the one its `.sha256` record holds, where there are such."""
    path = Path(path)
    record = sha256_record(path)
    recorded = read_sha256_record(record) if record.is_file() else None
    if pinned is None and recorded is None:
        return
    actual = sha256_of(path)
    if pinned is not None and actual != pinned.lower():
        raise ModelError(
            f"weights file {path}: its sha256 is {actual}, but the config pins weights.sha256: {pinned}; "
            "the file was changed or damaged: restore the file that was pinned"
        )
    if recorded is not None and actual != recorded:
        raise ModelError(
            f"weights file {path}: its sha256 is {actual}, but {record.name} beside it records {recorded}; "
            f"the file was changed or damaged after it was written: delete {path} and {record.name} "
            "and re-run, and the workflow makes it again"
        )


def load_state_dict_file(
    path: str | Path, sha256: str | None = None, normalization: str | Mapping | None = None
) -> dict[str, torch.Tensor]:
    """Read a weights file as a state_dict of tensors, refusing anything else.

    Accepts a plain state_dict or a checkpoint holding one under "state_dict",
    "model_state_dict" or "model" (as `save_weights` writes); strips "module." /
    "_orig_mod." prefixes and the "net." prefix of a saved NormalizedModel, and reads the
    robustness library's layout (`_from_robustness`), whose normaliser must equal
    `normalization` where that is given. The file is checked against its recorded or pinned
    digest first (`check_sha256`).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    check_sha256(path, sha256)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickling_reason(exc)
        if "global" in reason.lower():
            raise ModelError(
                f"weights file {path} refused: it holds Python objects other than tensors and plain "
                f"values, which could run code when loaded ({reason}); only state_dict files are accepted"
            ) from None
        raise ModelError(f"weights file {path} cannot be read as a PyTorch weights file ({reason})") from None
    except Exception as exc:  # torch raises RuntimeError/EOFError/OSError/... for a non-torch file
        raise ModelError(f"weights file {path} cannot be read as a PyTorch weights file: {exc}") from None

    state = _find_state_dict(obj, path)
    state = _strip_prefixes(state)
    if any(key.startswith(_ROBUSTNESS_PARTS[1:]) for key in state):
        state = _from_robustness(state, path, normalization)
    for key, value in state.items():
        if value.is_floating_point() or value.is_complex():
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise ModelError(
                    f"weights file {path}: tensor {key!r} holds NaN or Inf values "
                    f"({bad} of {value.numel()}); refusing to load it"
                )
    return state


def _unpickling_reason(exc: Exception) -> str:
    # torch wraps the useful part ("Unsupported global: GLOBAL exec was not an allowed global
    # by default.") in paragraphs of advice; keep only that part.
    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n|$)", text)
    reason = match.group(1) if match else (text.strip().splitlines() or [type(exc).__name__])[0]
    first_sentence = re.match(r"(.+?\.)(\s|$)", reason)
    return (first_sentence.group(1) if first_sentence else reason).strip()


def _find_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and obj and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _CHECKPOINT_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        else:
            if not any(isinstance(v, torch.Tensor) for v in obj.values()):
                raise ModelError(
                    f"weights file {path}: a checkpoint of unknown layout, with keys "
                    f"{_head([str(k) for k in obj], _SHOW_KEYS)}; none of {', '.join(_CHECKPOINT_KEYS)} holds "
                    "a state_dict"
                )
    if not isinstance(obj, Mapping) or not obj:
        raise ModelError(
            f"weights file {path} holds {type(obj).__name__!r}, not a state_dict (a non-empty mapping "
            f"of parameter names to tensors, optionally under one of {', '.join(_CHECKPOINT_KEYS)})"
        )
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelError(
                f"weights file {path}: entry {key!r} holds {type(value).__name__!r}, not a tensor; "
                "a state_dict maps parameter names to tensors"
            )
    return dict(obj)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    def strip(key: str) -> str:
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        return key

    state = {strip(k): v for k, v in state.items()}
    # A NormalizedModel's own state_dict: the net under "net." plus the mean/std buffers,
    # which come from the model spec instead.
    rest = [k for k in state if k not in ("mean", "std")]
    if rest and all(k.startswith("net.") for k in rest):
        state = {k[len("net.") :]: state[k] for k in rest}
    return state


def _from_robustness(
    state: dict[str, torch.Tensor], path: Path, normalization: str | Mapping | None
) -> dict[str, torch.Tensor]:
    """The network's own state_dict out of a robustness-library checkpoint: "model.*" with the
    prefix stripped; the attacker's copy dropped; the normaliser dropped after checking that it
    equals `normalization`, since NormalizedModel normalises inside."""
    other = [k for k in state if not k.startswith(_ROBUSTNESS_PARTS)]
    if other:
        raise ModelError(
            f"weights file {path}: a robustness-library checkpoint (keys under {', '.join(_ROBUSTNESS_PARTS)}) "
            f"with other keys too: {_head(other, _SHOW_KEYS)}; not a layout this reads"
        )
    if normalization is not None and "normalizer.new_mean" in state:
        _check_normalizer(state, path, normalization)
    return {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}


def _check_normalizer(state: Mapping[str, torch.Tensor], path: Path, normalization: str | Mapping) -> None:
    mean, std = resolve_normalization(normalization)
    saved = [state[f"normalizer.new_{k}"].flatten().double() for k in ("mean", "std")]
    wanted = [torch.tensor(v, dtype=torch.float64) for v in (mean, std)]
    if any(s.shape != w.shape or not torch.allclose(s, w, atol=1e-6) for s, w in zip(saved, wanted)):
        shown = [[round(x, 4) for x in s.tolist()] for s in saved]
        raise ModelError(
            f"weights file {path}: its normaliser has mean {shown[0]} and std {shown[1]}"
            f", but the model's normalization {normalization!r} is mean {list(mean)}, std {list(std)}; "
            "set the model's `normalization` to the checkpoint's"
        )


def load_into(
    net: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | Path,
    arch: str | None = None,
    num_classes: int | None = None,
) -> None:
    """Load `state` into `net`, naming the first missing/unexpected/mismatched keys on failure."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        what = arch or type(net).__name__
        if num_classes is not None:
            what += f" (num_classes={num_classes})"
        parts = []
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if items:
                parts.append(f"{label} ({len(items)}): {_head(items, _SHOW_KEYS)}")
        raise ModelError(f"weights file {path} does not fit {what}: " + "; ".join(parts))
    net.load_state_dict(state, strict=True)


def _head(items: Sequence[str], n: int) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


def save_weights(
    path: str | Path, state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None
) -> None:
    """Write {"state_dict": ..., "meta": {...}} atomically; loadable with weights_only=True.
    Its sha256 goes to `sha256_record(path)`."""
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ModelError(f"cannot save {path}: the state_dict is empty or not a mapping")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelError(f"cannot save {path}: entry {key!r} holds {type(value).__name__!r}, not a tensor")
        value = value.detach().cpu()
        # A view would drag its whole storage into the file.
        if value.untyped_storage().nbytes() != value.nbytes or not value.is_contiguous():
            value = value.clone(memory_format=torch.contiguous_format)
        tensors[key] = value
    payload = {"state_dict": tensors, "meta": _plain(dict(meta or {}), path, "meta")}
    # A record of earlier weights goes first: a write killed midway leaves a file unchecked,
    # never one that a stale record calls damaged.
    record = sha256_record(path)
    record.unlink(missing_ok=True)
    # Saved through a file object: torch names the archive's root folder after a file name,
    # which would put the random temporary name into the bytes.
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
        digest = sha256_of(tmp)
    write_sha256_record(path, digest)


def _plain(value: Any, path: str | Path, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, path, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ModelError(f"cannot save {path}: {where} has a non-string key {k!r}")
            out[k] = _plain(v, path, f"{where}.{k}")
        return out
    raise ModelError(
        f"cannot save {path}: {where} holds {type(value).__name__!r}; "
        "only str, int, float, bool, None, lists and dicts are stored"
    )


def read_weights_meta(path: str | Path) -> dict[str, Any]:
    """The "meta" dict a `save_weights` file carries ({} for a plain state_dict)."""
    path = Path(path)
    check_sha256(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"weights file {path} cannot be read safely: {exc}") from None
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    return dict(meta) if isinstance(meta, Mapping) else {}


def download_torchvision_weights(arch: str, weights_name: str, dest: str | Path) -> None:
    """Fetch torchvision's pretrained `weights_name` (e.g. IMAGENET1K_V1) for `arch` into `dest`.

    Goes through torchvision's weights API (hash-checked download into the torch hub cache),
    checks the state_dict fits the architecture, and stores it with `save_weights`.
    """
    weights = torchvision_weights(arch, weights_name)
    num_classes = len(weights.meta["categories"])
    log.info("downloading %s weights %s (%d classes) from %s", arch, weights.name, num_classes, weights.url)
    state = weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    load_into(build_network(arch, num_classes), state, weights.url, arch=arch, num_classes=num_classes)
    meta = {
        "arch": arch,
        "weights": weights.name,
        "weights_requested": weights_name,
        "num_classes": num_classes,
        "url": weights.url,
        "categories": list(weights.meta["categories"]),
        "normalization": "imagenet",
    }
    save_weights(dest, state, meta)
    log.info("wrote %s", dest)


def torchvision_weights(arch: str, weights_name: str):
    """torchvision's weights enum member `weights_name` for `arch` (no download)."""
    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise ModelError(
            f"torchvision has no pretrained weights for architecture {arch!r}; "
            f"architectures: {', '.join(list_architectures())}"
        ) from None
    try:
        return enum[weights_name]
    except KeyError:
        raise ModelError(
            f"unknown weights {weights_name!r} for {arch}; available: {', '.join(enum.__members__)}"
        ) from None
