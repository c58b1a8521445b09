"""A network's layers: their names and aliases, the layout of their outputs, and the hooks that
read (or replace) a layer's output as a feature map.

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
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.swin_transformer import PatchMerging, PatchMergingV2, SwinTransformer, SwinTransformerBlock
from torchvision.models.vision_transformer import Encoder, EncoderBlock, VisionTransformer
from torchvision.ops.misc import Permute

from ..errors import ConfigError, ModelError
from .architectures import NormalizedModel, build_network

_SHOW_LAYERS = 40


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
        shown += f", ... (first {_SHOW_LAYERS} of {len(names)}; see advdissect.nets.layers.dissectable_layers)"
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
