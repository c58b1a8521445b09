"""Models: architecture registry, weight files, input normalisation and layer hooks.

Every network is wrapped in `NormalizedModel`, which takes images in [0, 1] and normalises
them inside, so attacks, their ε and the stored images all live in pixel space.

Weights files are data, never code: they are read with `torch.load(weights_only=True)`, and a
file that holds anything but tensors and plain values is refused before anything runs.
A weights file the workflow writes (`save_weights`) records its sha256 beside it, in
`<file>.sha256` (`sha256sum -c` reads it); a file with such a record, or one whose digest the
config pins (`weights.sha256`), is checked against it before it is read.

Layers are addressed by their module names inside the bare network (`features.10`, `layer3`,
`layer4.1.conv2`, as `dissectable_layers` lists them) or by these aliases:

- AlexNet and VGG: `conv1` .. `convN` is the ReLU after the N-th convolution of `features`
  (alexnet: conv1..conv5 = features.1, .4, .7, .9, .11; vgg11: conv1..conv8 = features.1, .4,
  .7, .9, .12, .14, .17, .19); `last_conv` is the last ReLU of `features`, i.e. the output of
  the last conv block before the final max-pool (the paper's "feature layer").
- ResNet family (resnet*, resnext*, wide_resnet*) and the stand-in resnet18_shapes: `layer1` ..
  `layer4` are module names already; `last_conv` is `layer4`.

A layer's output is read as a feature map (N, C, h, w) in one of three layouts (`layer_layout`),
told apart by the module's type, never by the tensor's shape alone:

- "maps": the (N, C, h, w) map itself, as convolutions and CNN blocks return it.
- "tokens": (N, 1 + h*w, d) tokens of a vision transformer's encoder (torchvision's `EncoderBlock`,
  e.g. vit_b_16's `encoder.layers.encoder_layer_<i>`, a Sequential of them, or the `Encoder`): the
  class token first, dropped; the patch tokens, row-major on the square h x w patch grid as
  torchvision's ViT lays them out, read as (N, d, h, w): unit u is channel u of the embedding.
- "channels_last": (N, h, w, C) of a Swin transformer's stages (torchvision's `SwinTransformerBlock`,
  `PatchMerging`, and a Sequential ending in one: swin_t's `features.<i>`, the patch embedding
  `features.0`), read as (N, C, h, w).

Inside a torchvision VisionTransformer or SwinTransformer, a module whose type does not tell its
layout (a LayerNorm, an MLP or an attention inside a block) is refused rather than guessed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import pickle
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models.swin_transformer import PatchMerging, PatchMergingV2, SwinTransformer, SwinTransformerBlock
from torchvision.models.vision_transformer import Encoder, EncoderBlock, VisionTransformer
from torchvision.ops.misc import Permute

from ..data.download import RETRIES, WAIT, download_checked
from ..errors import ConfigError, ModelError
from ..specs import ModelSpec
from ..store import atomic_path, read_sha256_record, sha256_of, sha256_record, write_sha256_record
from .stand_ins import STAND_INS

log = logging.getLogger(__name__)

NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}

# Keys under which training checkpoints commonly nest their state_dict.
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")
# Prefixes added by DataParallel/DDP, torch.compile and by saving a NormalizedModel itself.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# The madrylab `robustness` library's AttackerModel: the network under "model.", a second
# reference to it under "attacker.model.", and its input normaliser's mean and std.
_ROBUSTNESS_PARTS = ("model.", "attacker.", "normalizer.")
_SHOW_KEYS = 5
_SHOW_LAYERS = 40


# ---------------------------------------------------------------- architectures


def list_architectures() -> list[str]:
    """Names of torchvision's classification models (e.g. alexnet, vgg11, resnet18), then the
    stand-ins of `advdissect.nets.stand_ins` (resnet18_shapes, vit_tiny, swin_tiny)."""
    return list(torchvision.models.list_models(module=torchvision.models)) + list(STAND_INS)


def build_network(arch: str, num_classes: int) -> nn.Module:
    """A randomly initialised torchvision classifier with `num_classes` outputs."""
    valid = list_architectures()
    if arch not in valid:
        raise ModelError(f"unknown architecture {arch!r}; valid names: {', '.join(valid)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive integer, got {num_classes!r} (arch {arch})")
    if arch in STAND_INS:
        return STAND_INS[arch](num_classes=int(num_classes))
    return torchvision.models.get_model(arch, weights=None, num_classes=int(num_classes))


def resolve_normalization(
    normalization: str | Mapping[str, Sequence[float]],
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) for a name in NORMALIZATIONS or a dict {"mean": [3 floats], "std": [3 floats]}."""
    allowed = f"allowed: {', '.join(NORMALIZATIONS)} or {{'mean': [3 floats], 'std': [3 floats > 0]}}"
    if isinstance(normalization, str):
        if normalization not in NORMALIZATIONS:
            raise ModelError(f"unknown normalization {normalization!r}; {allowed}")
        return NORMALIZATIONS[normalization]
    if isinstance(normalization, Mapping) and set(normalization) == {"mean", "std"}:
        try:
            mean = tuple(float(v) for v in normalization["mean"])
            std = tuple(float(v) for v in normalization["std"])
        except (TypeError, ValueError):
            raise ModelError(f"normalization {dict(normalization)!r} is not numeric; {allowed}") from None
        if len(mean) == 3 and len(std) == 3 and all(s > 0 for s in std) and all(map(math.isfinite, mean + std)):
            return mean, std
    raise ModelError(f"normalization {normalization!r} cannot be used; {allowed}")


class NormalizedModel(nn.Module):
    """A classifier that takes float images in [0, 1] (NCHW) and normalises them inside."""

    def __init__(self, net: nn.Module, arch: str, normalization: str | Mapping = "imagenet"):
        super().__init__()
        mean, std = resolve_normalization(normalization)
        self.net = net
        self.arch = arch
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ModelError(
                f"{self.arch} expects float images in [0, 1] shaped (N, 3, H, W); got {x.dtype} {tuple(x.shape)}"
            )
        return self.net((x - self.mean) / self.std)


def load_model(
    arch: str,
    num_classes: int,
    weights_file: str | Path | None = None,
    normalization: str | Mapping = "imagenet",
    seed: int = 0,
    weights_sha256: str | None = None,
) -> NormalizedModel:
    """Build `arch`, load `weights_file` (or keep the init seeded by `seed`), in eval mode, on CPU.

    The seeded init leaves the caller's global RNG state untouched. `weights_sha256` pins the
    file's digest (see `check_sha256`).
    """
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only: torch.manual_seed would also reseed (and not restore) CUDA's.
        torch.default_generator.manual_seed(int(seed))
        net = build_network(arch, num_classes)
    if weights_file is not None:
        state = load_state_dict_file(weights_file, weights_sha256, normalization)
        load_into(net, state, weights_file, arch=arch, num_classes=num_classes)
    model = NormalizedModel(net, arch, normalization)
    model.eval()
    return model


def load_model_spec(model_spec: ModelSpec, weights_file: str | Path | None = None) -> NormalizedModel:
    """load_model from a job's model spec and weights file."""
    return load_model(
        model_spec.arch,
        model_spec.num_classes,
        weights_file=weights_file or None,
        normalization=model_spec.normalization,
        seed=model_spec.seed,
        weights_sha256=model_spec.weights_sha256,
    )


# ---------------------------------------------------------------- weights files


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


# ---------------------------------------------------------------- layers


def _bare(model: nn.Module) -> nn.Module:
    return model.net if isinstance(model, NormalizedModel) else model


def _arch_name(model: nn.Module) -> str:
    return model.arch if isinstance(model, NormalizedModel) else type(model).__name__


def dissectable_layers(model: nn.Module) -> list[str]:
    """Module names inside the bare network, in definition order (the root excluded)."""
    return [name for name, _ in _bare(model).named_modules() if name]


def layer_aliases(model: nn.Module) -> dict[str, str]:
    """Alias -> module name for this network (see the module docstring)."""
    net = _bare(model)
    kind = type(net).__name__
    aliases: dict[str, str] = {}
    if kind in ("AlexNet", "VGG") and isinstance(getattr(net, "features", None), nn.Sequential):
        children = list(net.features.named_children())
        n_conv = 0
        last_relu = None
        for i, (name, module) in enumerate(children):
            if isinstance(module, nn.ReLU):
                last_relu = f"features.{name}"
            if not isinstance(module, nn.Conv2d):
                continue
            n_conv += 1
            target = f"features.{name}"
            # The ReLU after this conv (after a BatchNorm in vgg*_bn), before the next conv.
            for later_name, later in children[i + 1 :]:
                if isinstance(later, nn.Conv2d):
                    break
                if isinstance(later, nn.ReLU):
                    target = f"features.{later_name}"
                    break
            aliases[f"conv{n_conv}"] = target
        if last_relu is not None:
            aliases["last_conv"] = last_relu
    elif kind in ("ResNet", "ResNet18Shapes") and hasattr(net, "layer4"):
        aliases["last_conv"] = "layer4"
    return aliases


def resolve_layer(model: nn.Module, name: str) -> str:
    """The module name `name` stands for: a module name itself, or an alias."""
    names = dissectable_layers(model)
    if name in names:
        return name
    aliases = layer_aliases(model)
    if name in aliases:
        return aliases[name]
    net = _bare(model)
    top = [n for n, _ in net.named_children()]
    alias_text = ", ".join(f"{a}={t}" for a, t in aliases.items()) or "none"
    shown = ", ".join(names[:_SHOW_LAYERS])
    if len(names) > _SHOW_LAYERS:
        shown += f", ... (first {_SHOW_LAYERS} of {len(names)}; see advdissect.nets.models.dissectable_layers)"
    raise ModelError(
        f"unknown layer {name!r} for {_arch_name(model)}; top-level blocks: {', '.join(top)}; "
        f"aliases: {alias_text}; dissectable layers: {shown}"
    )


def find_layer(model: nn.Module, layer: str) -> nn.Module:
    """The module called `layer`: a module name inside `model.net` (or `model`), or an alias
    that `resolve_layer` knows (e.g. conv5, last_conv)."""
    name = _module_name(model, layer)  # raises ModelError naming the layers there are
    for root in _roots(model):
        modules = dict(root.named_modules())
        if name in modules:
            return modules[name]
    raise ModelError(f"layer {layer!r} resolves to {name!r}, which is not a module of the network")


def _roots(model: nn.Module) -> list[nn.Module]:
    """Where layer names are looked up: the bare network of a NormalizedModel first, then the model."""
    return [r for r in (getattr(model, "net", None), model) if isinstance(r, nn.Module)]


def _module_name(model: nn.Module, layer: str) -> str:
    """The module name `layer` stands for: itself where a root has a module of that name, else
    what `resolve_layer` makes of it (an alias)."""
    if layer and any(layer in dict(root.named_modules()) for root in _roots(model)):
        return layer
    return resolve_layer(model, layer)


@contextlib.contextmanager
def hook_layer(model: nn.Module, layer: str, hook: Callable[[nn.Module, Any, Any], Any]) -> Iterator[nn.Module]:
    """Call hook(module, inputs, output) after every forward of `layer` while inside (PyTorch's
    forward-hook rules: a returned value replaces the output); removed on exit, also on errors."""
    module = find_layer(model, layer)
    handle = module.register_forward_hook(hook)
    try:
        yield module
    finally:
        handle.remove()


MAPS, TOKENS, CHANNELS_LAST = "maps", "tokens", "channels_last"

# Modules whose output layout their type tells (the V2 Swin block subclasses SwinTransformerBlock).
_TOKEN_MODULES = (EncoderBlock, Encoder)
_CHANNELS_LAST_MODULES = (SwinTransformerBlock, PatchMerging, PatchMergingV2)
_TRANSFORMERS = (VisionTransformer, SwinTransformer)
# Modules that return their input's layout: a Sequential ending in them has its earlier child's.
_KEEPS_LAYOUT = (nn.LayerNorm, nn.Dropout, nn.Identity)


def _type_layout(module: nn.Module) -> str | None:
    """The layout of what `module` returns, as its type tells it; None where it does not."""
    if isinstance(module, _TOKEN_MODULES):
        return TOKENS
    if isinstance(module, _CHANNELS_LAST_MODULES):
        return CHANNELS_LAST
    if isinstance(module, Permute):
        dims = [int(d) for d in module.dims]
        return CHANNELS_LAST if dims == [0, 2, 3, 1] else MAPS if dims == [0, 3, 1, 2] else None
    if isinstance(module, nn.Conv2d):
        return MAPS
    if isinstance(module, nn.Sequential):
        if len(module) and all(isinstance(child, EncoderBlock) for child in module):
            return TOKENS
        for child in reversed(module):
            if not isinstance(child, _KEEPS_LAYOUT):
                return _type_layout(child)
    return None


def layer_layout(model: nn.Module, layer: str) -> str:
    """How `layer`'s output is read as a map: MAPS, TOKENS or CHANNELS_LAST (see the module
    docstring). The module's type decides: a transformer block's own type, else "maps" as in any
    CNN; a module inside a torchvision ViT or Swin whose type does not tell its layout raises
    ModelError."""
    name = _module_name(model, layer)
    module = find_layer(model, layer)
    layout = _type_layout(module)
    if layout is not None and layout != MAPS:
        return layout
    root = next(r for r in _roots(model) if name in dict(r.named_modules()))
    modules = dict(root.named_modules())
    parts = name.split(".")
    ancestors = [modules[".".join(parts[:i])] for i in range(1, len(parts))]
    in_transformer = isinstance(_bare(model), _TRANSFORMERS) or any(
        isinstance(m, _TOKEN_MODULES + _CHANNELS_LAST_MODULES) for m in ancestors
    )
    if layout == MAPS or not in_transformer:
        return MAPS
    raise ModelError(
        f"layer {layer!r} ({name}) of {_arch_name(model)} is a {type(module).__name__} in a transformer, a module "
        "whose output is not known to be a map; name an encoder block (encoder.layers.encoder_layer_<i>) of a ViT or a "
        "stage (features.<i>) of a Swin"
    )


def output_as_map(layout: str, output: Any, where: str) -> torch.Tensor:
    """A layer's output (a tensor in `layout`) as an (N, C, h, w) map; `where` names the layer in
    the ModelError for anything else."""
    if not isinstance(output, torch.Tensor):
        raise ModelError(f"{where} returns {type(output).__name__}, not a 4-D feature map (N, C, h, w)")
    shape = tuple(output.shape)
    if layout == TOKENS:
        side = math.isqrt(max(shape[1] - 1, 0)) if output.ndim == 3 else 0
        if output.ndim != 3 or side < 1 or side * side != shape[1] - 1:
            raise ModelError(
                f"{where} returns {shape}, not the (N, 1 + h*w, d) tokens of a square patch grid with the "
                "class token first; only such token outputs are read as maps"
            )
        return output[:, 1:, :].transpose(1, 2).reshape(shape[0], shape[2], side, side)
    if output.ndim != 4:
        want = "channels-last map (N, h, w, C)" if layout == CHANNELS_LAST else "4-D feature map (N, C, h, w)"
        raise ModelError(f"{where} returns {shape}, not a {want}; pick a convolution or a block")
    return output.permute(0, 3, 1, 2) if layout == CHANNELS_LAST else output


def map_as_output(layout: str, new_map: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """The layer output `new_map` (N', C, h, w) stands for, in `output`'s layout: the inverse of
    `output_as_map`. N' may be a multiple k of `output`'s batch (variants stacked along the batch,
    k blocks of N): the class token of each image is then repeated k times, unchanged."""
    if layout == TOKENS:
        n, d = new_map.shape[:2]
        patches = new_map.reshape(n, d, -1).transpose(1, 2)
        cls = output[:, :1, :].to(new_map.dtype)
        if n % cls.shape[0]:
            raise ModelError(f"a map of batch {n} cannot replace tokens of batch {cls.shape[0]}")
        return torch.cat([cls.repeat(n // cls.shape[0], 1, 1), patches], dim=1)
    if layout == CHANNELS_LAST:
        return new_map.permute(0, 2, 3, 1).contiguous()
    return new_map


@contextlib.contextmanager
def layer_outputs(
    model: nn.Module,
    layers: Sequence[str],
    on_output: Callable[[str, torch.Tensor], Any],
    maps: bool = True,
) -> Iterator[None]:
    """Hooks on the named layers that every reader of a layer's output goes through (activations,
    ablation, captured features), so that they agree on what a layer's output is: the one
    tensor the layer returns in a forward pass of `model`, read as an (N, C, h, w) map where
    `maps` (`layer_layout`: a CNN's map as it is, a ViT block's tokens on the patch grid, a Swin
    stage's channels-last map transposed). A layer that runs a second time in the same pass, or
    returns anything else, raises ModelError. `on_output(layer, output)` is called with it and may
    return a replacement (PyTorch's forward-hook rule), a map where `maps`, which goes back into
    the layer's own layout (`map_as_output`). Hooks are removed on exit, also on errors."""
    calls: dict[str, int] = {}
    resolved = {layer: _module_name(model, layer) for layer in dict.fromkeys(layers)}
    layouts = {layer: layer_layout(model, layer) if maps else None for layer in resolved}

    def new_pass(_module: nn.Module, _inputs: Any) -> None:
        calls.clear()

    def hook_for(layer: str, target: str):
        where = f"layer {layer!r} ({target}) of {_arch_name(model)}"

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            calls[layer] = calls.get(layer, 0) + 1
            if calls[layer] > 1:
                raise ModelError(
                    f"{where} runs {calls[layer]} times in one forward pass, so it has no single output; "
                    "name the block that contains it, or a module that runs once"
                )
            if not maps:
                if not isinstance(output, torch.Tensor):
                    raise ModelError(f"{where} returns {type(output).__name__}, not a tensor")
                return on_output(layer, output)
            layout = layouts[layer]
            replaced = on_output(layer, output_as_map(layout, output, where))
            return None if replaced is None else map_as_output(layout, replaced, output)

        return hook

    with contextlib.ExitStack() as hooks:
        handle = model.register_forward_pre_hook(new_pass)
        hooks.callback(handle.remove)
        for layer, target in resolved.items():
            hooks.enter_context(hook_layer(model, layer, hook_for(layer, target)))
        yield


def _probe_size(model: nn.Module) -> int:
    """The image side of a shape probe: a ViT's own `image_size` (it takes no other), else 224."""
    size = getattr(_bare(model), "image_size", None)
    return int(size) if isinstance(size, int) else 224


def fixed_image_size(arch: str, num_classes: int) -> int | None:
    """The one image side `arch` takes (torchvision's ViTs: their `image_size`), None where any
    size goes. Built on the meta device."""
    with torch.device("meta"):
        net = build_network(arch, num_classes)
    size = getattr(net, "image_size", None)
    return int(size) if isinstance(size, int) else None


def check_layer_names(arch: str, num_classes: int, layers: Sequence[str], where: str = "layers") -> None:
    """Raise ConfigError (prefixed `config: <where>`) unless `arch` exists and has every layer,
    each a different module (an alias and its module name would be dissected twice) whose output
    reads as a map (`layer_layout`).

    The network is built on the meta device: structure only, no memory, no init cost.
    """
    try:
        with torch.device("meta"):
            model = NormalizedModel(build_network(arch, num_classes), arch, "none")
        named: dict[str, str] = {}
        for layer in layers:
            module = resolve_layer(model, layer)
            if module in named:
                raise ModelError(
                    f"{named[module]!r} and {layer!r} are the same module ({module}) of {arch}; list it once"
                )
            named[module] = layer
        _check_single_map_calls(model, arch, named)
    except ModelError as exc:
        raise ConfigError(f"config: {where}: {exc}") from None


def _check_single_map_calls(model: nn.Module, arch: str, named: Mapping[str, str]) -> None:
    """Each named module runs once per forward pass and returns an output read as a map: one
    meta forward pass (shapes only) with a hook on each. A module run twice (ResNet's `relu` of a
    block runs after bn1 and after the sum) has no single output to dissect."""
    layouts = {module: layer_layout(model, layer) for module, layer in named.items()}
    calls: dict[str, list[Any]] = {module: [] for module in named}
    with contextlib.ExitStack() as hooks:
        for module in named:
            hooks.enter_context(
                hook_layer(_bare(model), module, lambda _m, _i, out, key=module: calls[key].append(out))
            )
        size = _probe_size(model)
        with torch.no_grad():
            model(torch.empty(1, 3, size, size, device="meta"))
    for module, layer in named.items():
        outs = calls[module]
        if len(outs) != 1:
            raise ModelError(
                f"{layer!r} ({module}) runs {len(outs)} times in one forward pass of {arch}, so it has no "
                "single output to dissect; name the block that contains it, or a module that runs once"
            )
        out = outs[0]
        try:
            output_as_map(layouts[module], out, f"{layer!r} ({module}) of {arch}")
        except ModelError as exc:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(
                f"{layer!r} ({module}) of {arch} returns {shape}, not a feature map (N, C, h, w) "
                f"({layouts[module]} layout); pick a convolution or a block, a ViT's encoder block or a Swin's stage"
            ) from exc


class LayerCapture:
    """Context manager: forward hooks that record the named layers' outputs during a forward pass.

    Outputs are cloned as they are produced, because a later in-place op (an inplace ReLU,
    ResNet's `out += identity`) would otherwise overwrite what was recorded. Clones keep the
    autograd graph, so captured features can carry a loss. Hooks are removed on exit.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]):
        if isinstance(layers, str):
            layers = [layers]
        self.model = model
        self.layers = list(layers)
        self.resolved = {layer: resolve_layer(model, layer) for layer in self.layers}
        # One hook per module: two names of the same module read the same output.
        self._names = {target: layer for layer, target in reversed(self.resolved.items())}
        self._records: dict[str, torch.Tensor] = {}
        self._hooks = contextlib.ExitStack()

    def __enter__(self) -> LayerCapture:
        self._hooks.enter_context(layer_outputs(self.model, list(self._names.values()), self._record, maps=False))
        return self

    def _record(self, layer: str, output: torch.Tensor) -> None:
        self._records[self.resolved[layer]] = output.clone()

    def __exit__(self, *exc: Any) -> None:
        self._hooks.close()

    def reset(self) -> None:
        self._records.clear()

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        """{layer as given: output} of the last forward pass."""
        out = {}
        for layer, target in self.resolved.items():
            if target not in self._records:
                raise ModelError(
                    f"layer {layer!r} ({target}) of {_arch_name(self.model)} did not run in the forward pass"
                )
            out[layer] = self._records[target]
        return out


def capture(model: nn.Module, x: torch.Tensor, layers: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, {layer: output}) from ONE forward pass of `model` on `x`; hooks removed after."""
    with LayerCapture(model, layers) as cap:
        logits = model(x)
        return logits, cap.outputs


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def feature_shapes(
    model: nn.Module, layers: Sequence[str], image_size: int | Sequence[int]
) -> dict[str, tuple[int, ...]]:
    """{layer: (C, h, w)} of each layer's output read as a map (`layer_outputs`: a ViT block's
    (d, h, w) on the patch grid, a Swin stage's channels first) for an input of `image_size`
    (int or (h, w)), from a dummy forward pass."""
    h, w = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)
    x = torch.zeros(1, 3, int(h), int(w), device=_model_device(model))
    shapes: dict[str, tuple[int, ...]] = {}

    def keep(layer: str, output: torch.Tensor) -> None:
        shapes[layer] = tuple(int(s) for s in output.shape[1:])

    with torch.no_grad(), layer_outputs(model, layers, keep):
        try:
            model(x)
        except AssertionError as exc:  # torchvision's ViT asserts its one image size
            raise ModelError(f"{_arch_name(model)} does not take {h}x{w} images: {exc}") from None
    for layer in layers:
        if layer not in shapes:
            raise ModelError(f"layer {layer!r} of {_arch_name(model)} did not run in the forward pass")
    return shapes


# ---------------------------------------------------------------- predictions


def softmax_prediction(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax int64, its softmax probability float32) per row of `logits`."""
    logits = logits.detach()
    pred = logits.argmax(dim=1)
    conf = torch.softmax(logits.float(), dim=1).gather(1, pred[:, None]).squeeze(1)
    return pred.to(torch.int64), conf.to(torch.float32)


def predict(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class int64, softmax probability of that class float32) for images `x`."""
    with torch.no_grad():
        return softmax_prediction(model(x))


# ---------------------------------------------------------------- weights from a URL


def download_url_weights(
    url: str,
    dest: str | Path,
    model_spec: ModelSpec,
    *,
    retries: int = RETRIES,
    wait: float = WAIT,
    timeout: float = 60.0,
) -> None:
    """Fetch the weights file at `url` into `dest` (checked against the model's pinned sha256 and
    any record beside `dest`), check that it loads into the model, then record its sha256 beside it."""
    dest = Path(dest)
    digest = download_checked(
        [url],
        dest,
        lambda path: load_model_spec(model_spec, path),
        what="download",
        error=ModelError,
        sha256=model_spec.weights_sha256,
        retries=retries,
        wait=wait,
        timeout=timeout,
        hint="check the URL, or download the file by hand and use `weights: {source: file, path: ...}`",
    )
    log.info("wrote %s (sha256 %s)", dest, digest)
