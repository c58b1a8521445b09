"""Activation extraction on a tiny stand-in network (no dependency on the model registry)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from advdissect import store
from advdissect.dissect import activations
from advdissect.dissect.activations import ActivationJob, extract_activations, extract_layers, write_activation_shard
from advdissect.errors import ArtifactError, ModelError
from advdissect.nets.layers import find_layer

from helpers import random_images, tiny_swin, tiny_vit


class Wrapper(nn.Module):
    """Like NormalizedModel: images in [0, 1], normalisation inside, the network under `.net`."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((x - 0.5) / 0.25)


class Boom(nn.Module):
    def forward(self, x):
        raise AssertionError("ran past the dissected layer")


def tiny_net(after: nn.Module | None = None) -> Wrapper:
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("conv1", nn.Conv2d(3, 4, 3, padding=1))
    net.add_module("relu1", nn.ReLU(inplace=True))
    net.add_module("conv2", nn.Conv2d(4, 5, 3, stride=2, padding=1))
    net.add_module("relu2", nn.ReLU(inplace=True))
    net.add_module("rest", after or nn.Flatten())
    return Wrapper(net).eval()


def images(n=7, size=12, seed=0):
    return random_images(n, size, seed)


def reference(model, imgs, upto):
    x = (torch.from_numpy(imgs).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        for name, module in model.net.named_children():
            x = module(x)
            if name == upto:
                return x.numpy()


def test_values_shape_and_early_stop():
    model = tiny_net(after=Boom())
    imgs = images()
    acts = extract_activations(model, imgs, "conv2", batch_size=3, device="cpu")
    assert acts.shape == (7, 5, 6, 6) and acts.dtype == np.float32
    np.testing.assert_allclose(acts, reference(tiny_net(), imgs, "conv2"), rtol=1e-5, atol=1e-6)
    # the in-place ReLU after conv2 never ran on the captured tensor: negative values remain
    assert (acts < 0).any()


def test_independent_of_batch_size():
    model = tiny_net()
    imgs = images(n=9)
    full = extract_activations(model, imgs, "relu1", batch_size=9, device="cpu")
    for bs in (1, 2, 4):
        # oneDNN picks kernels by batch shape: equal up to float32 rounding
        np.testing.assert_allclose(extract_activations(model, imgs, "relu1", bs, "cpu"), full, rtol=1e-5, atol=1e-6)


def test_float16_and_bad_inputs():
    model = tiny_net()
    imgs = images(n=3)
    acts16 = extract_activations(model, imgs, "conv1", 2, "cpu", dtype="float16")
    assert acts16.dtype == np.float16
    np.testing.assert_array_equal(acts16, extract_activations(model, imgs, "conv1", 2, "cpu").astype(np.float16))
    with pytest.raises(ArtifactError, match="uint8"):
        extract_activations(model, imgs.astype(np.float32), "conv1", 2, "cpu")
    with pytest.raises(ArtifactError, match="dtype"):
        extract_activations(model, imgs, "conv1", 2, "cpu", dtype="int8")
    with pytest.raises(ModelError, match="4-D"):
        extract_activations(model, imgs, "rest", 2, "cpu")


def test_out_of_memory_halves_the_batch():
    calls = []

    class Picky(nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            if x.shape[0] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate")
            return x

    net = nn.Sequential()
    net.add_module("picky", Picky())
    net.add_module("conv", nn.Conv2d(3, 2, 1))
    model = Wrapper(net).eval()
    imgs = images(n=5)
    acts = extract_activations(model, imgs, "conv", batch_size=8, device="cpu")
    assert calls == [5, 2, 2, 1]
    np.testing.assert_allclose(acts, extract_activations(model, imgs, "conv", 1, "cpu"), rtol=1e-5, atol=1e-6)


def test_find_layer_by_module_name():
    model = tiny_net()
    assert find_layer(model, "conv2") is model.net.conv2
    assert find_layer(model, "net.conv1") is model.net.conv1


def test_layers_from_one_pass():
    # one pass for every layer, stopped after the last of them; an earlier layer's output is
    # kept as it was returned, before the in-place ReLU that follows it
    model = tiny_net(after=Boom())
    imgs = images()
    out = extract_layers(model, imgs, ["conv2", "conv1"], batch_size=3, device="cpu")
    assert list(out) == ["conv2", "conv1"]
    for layer in ("conv1", "conv2"):
        np.testing.assert_allclose(out[layer], reference(model, imgs, layer), rtol=1e-5, atol=1e-6)
    assert (out["conv1"] < 0).any()
    with pytest.raises(ArtifactError, match="no layers"):
        extract_layers(model, imgs, [], 3, "cpu")


def test_write_activation_shard(tmp_path):
    ident = {"dataset": "d", "model": "m", "attack": "fgsm", "shard": 3}
    imgs = images(n=4)
    store.write_h5(
        tmp_path / "images.h5", "images", dict(ident, eps=2 / 255), {"images": imgs, "rows": np.array([10, 11, 12, 13])}
    )
    model = tiny_net()
    out = tmp_path / "acts.h5"
    write_activation_shard(
        out,
        ActivationJob(
            images_path=tmp_path / "images.h5",
            weights_file=None,
            model_spec={},
            layers=["conv2", "conv1"],
            identity=ident,
            batch_size=3,
            dtype="float16",
        ),
        device="cpu",
        model=model,
    )
    with store.open_h5(out, "activations", expect=dict(ident, layers=["conv2", "conv1"], dtype="float16")) as f:
        np.testing.assert_array_equal(f["rows"][()], [10, 11, 12, 13])
    # every layer from the one pass equals that layer extracted alone
    for layer, chunks in (("conv2", (1, 5, 6, 6)), ("conv1", (1, 4, 12, 12))):
        with store.open_layer(out, dict(ident, layer=layer)) as (_, acts):
            assert acts.dtype == np.float16
            assert acts.chunks == chunks
            want = extract_activations(model, imgs, layer, 3, "cpu", "float16")
            np.testing.assert_array_equal(acts[()], want)
    with pytest.raises(ArtifactError, match="no activations of layer 'relu1'"):
        with store.open_layer(out, dict(ident, layer="relu1")):
            pass
    with pytest.raises(ArtifactError, match="attack"):
        write_activation_shard(
            tmp_path / "x.h5",
            ActivationJob(
                images_path=tmp_path / "images.h5",
                weights_file=None,
                model_spec={},
                layers=["conv2"],
                identity=dict(ident, attack="clean"),
                batch_size=3,
            ),
            device="cpu",
            model=model,
        )
    assert not (tmp_path / "x.h5").exists()


def test_a_shard_written_block_by_block_is_the_shard_written_whole(tmp_path, monkeypatch):
    # Blocks are whole batches, so the batches and every stored map are those of one pass.
    ident = {"dataset": "d", "model": "m", "attack": "clean", "shard": 0}
    imgs = images(n=11)
    store.write_h5(tmp_path / "images.h5", "images", ident, {"images": imgs, "rows": np.arange(11)})
    model = tiny_net()

    def write(name):
        write_activation_shard(
            tmp_path / name,
            ActivationJob(
                images_path=tmp_path / "images.h5",
                weights_file=None,
                model_spec={},
                layers=["conv2", "conv1"],
                identity=ident,
                batch_size=2,
            ),
            device="cpu",
            model=model,
        )

    write("whole.h5")
    per_image = (5 * 6 * 6 + 4 * 12 * 12) * 4
    monkeypatch.setattr(activations, "BLOCK_BYTES", 3 * 2 * per_image)  # blocks of 3 batches
    assert activations.block_images(per_image, 2) == 6
    write("blocks.h5")
    with (
        store.open_h5(tmp_path / "whole.h5", "activations") as a,
        store.open_h5(tmp_path / "blocks.h5", "activations") as b,
    ):
        assert store.read_attrs(a) == store.read_attrs(b)
        names = []
        a.visititems(lambda name, item: names.append(name) if hasattr(item, "chunks") else None)
        assert len(names) == 3  # rows and two layers
        for name in names:
            assert a[name].chunks == b[name].chunks and a[name].dtype == b[name].dtype
            np.testing.assert_array_equal(a[name][()], b[name][()])


def test_block_images_are_whole_batches():
    assert activations.block_images(activations.BLOCK_BYTES, 8) == 8  # at least one batch
    assert activations.block_images(2**20, 32) % 32 == 0
    assert activations.block_images(2**20, 32) * 2**20 <= activations.BLOCK_BYTES


def test_aliases_resolve_through_the_model_registry():
    from advdissect.nets import models

    model = models.load_model("resnet18", 10)
    assert find_layer(model, "last_conv") is model.net.layer4
    with pytest.raises(ModelError, match="nope"):
        find_layer(model, "nope")


# ---------------------------------------------------------------- transformers


def _raw_output(model, imgs, layer):
    seen = {}
    handle = find_layer(model, layer).register_forward_hook(lambda _m, _i, out: seen.update(out=out.clone()))
    with torch.no_grad():
        model(torch.from_numpy(imgs).float() / 255)
    handle.remove()
    return seen["out"]


def test_transformer_blocks_are_extracted_as_maps():
    vit, swin = tiny_vit(), tiny_swin()
    imgs = images(n=5, size=32)
    acts = extract_layers(vit, imgs, ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"], 2, "cpu")
    for layer, maps in acts.items():
        tokens = _raw_output(vit, imgs, layer)  # (5, 1 + 16, 16): the class token, then 4 x 4 patches
        assert maps.shape == (5, 16, 4, 4) and tokens.shape == (5, 17, 16)
        for i in range(4):
            for j in range(4):
                np.testing.assert_allclose(maps[:, :, i, j], tokens[:, 1 + 4 * i + j].numpy(), rtol=1e-5, atol=1e-6)
    acts = extract_layers(swin, imgs, ["features.1", "features.3"], 3, "cpu")
    for layer, shape in (("features.1", (5, 8, 8, 8)), ("features.3", (5, 16, 4, 4))):
        raw = _raw_output(swin, imgs, layer)  # (N, h, w, C)
        assert acts[layer].shape == shape
        np.testing.assert_allclose(acts[layer], raw.permute(0, 3, 1, 2).numpy(), rtol=1e-5, atol=1e-6)
    message = r"'features.1.0.mlp' \(features.1.0.mlp\) of tiny_swin is a MLP in a transformer"
    with pytest.raises(ModelError, match=message):
        extract_layers(swin, imgs, ["features.1.0.mlp"], 2, "cpu")
