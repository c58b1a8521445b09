"""Models: building, normalisation, weight files (and what they refuse), layer names, hooks."""

from __future__ import annotations

import logging
import runpy
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from advdissect import store
from advdissect.errors import ConfigError, ModelError
from advdissect.nets import architectures, models, weights
from advdissect.nets import layers as net_layers
from advdissect.nets.architectures import NormalizedModel
from advdissect.nets.layers import capture, dissectable_layers, feature_shapes, resolve_layer
from advdissect.nets.models import load_model, predict
from advdissect.nets.weights import load_state_dict_file, read_weights_meta, save_weights

import helpers
from helpers import robustness_checkpoint

REPO = Path(__file__).resolve().parents[1]
N_CLASSES = 7
SIZE = 64  # alexnet needs >= 63 px
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def alexnet():
    return load_model("alexnet", N_CLASSES, seed=0)


@pytest.fixture(scope="module")
def vgg11():
    return load_model("vgg11", N_CLASSES, seed=0)


@pytest.fixture(scope="module")
def resnet18():
    return load_model("resnet18", N_CLASSES, seed=0)


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _model(request, arch):
    return request.getfixturevalue(arch)


# ---------------------------------------------------------------- building


def test_list_architectures_has_the_papers_models():
    names = architectures.list_architectures()
    assert {"alexnet", "vgg11", "resnet18"} <= set(names)


@pytest.mark.parametrize("arch", ["alexnet", "vgg11", "resnet18"])
def test_builds_with_num_classes_in_eval_mode(request, arch, images):
    model = _model(request, arch)
    assert isinstance(model, NormalizedModel)
    assert model.arch == arch
    assert not model.training and not model.net.training
    last_linear = [m for m in model.net.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert last_linear.out_features == N_CLASSES
    with torch.no_grad():
        assert model(images).shape == (2, N_CLASSES)


def test_stand_in_has_resnet18s_dissected_shapes():
    """resnet18_shapes: ResNet-18's layer3 and layer4 shapes at 224 px, a twenty-fifth of its multiply-adds."""
    assert "resnet18_shapes" in architectures.list_architectures()
    shapes = {}
    for arch in ("resnet18", "resnet18_shapes"):
        model = models.load_model(arch, num_classes=7, seed=0)
        shapes[arch] = net_layers.feature_shapes(model, ["layer3", "last_conv"], (224, 224))
        assert net_layers.resolve_layer(model, "last_conv") == "layer4"
    assert shapes["resnet18_shapes"] == shapes["resnet18"]
    assert list(shapes["resnet18"].values()) == [(256, 14, 14), (512, 7, 7)]

    def macs(net):
        total = []
        hooks = [
            m.register_forward_hook(lambda mod, _i, out: total.append(out[0].numel() * mod.weight[0].numel()))
            for m in net.modules()
            if isinstance(m, torch.nn.Conv2d)
        ]
        with torch.no_grad():
            net(torch.zeros(1, 3, 224, 224))
        for h in hooks:
            h.remove()
        return sum(total)

    small, full = (
        macs(architectures.build_network("resnet18_shapes", 7)),
        macs(architectures.build_network("resnet18", 7)),
    )
    assert 60e6 < small < 80e6 and full / small > 24


def test_build_network_takes_num_classes_from_the_argument():
    net = architectures.build_network("resnet18", 3)
    assert net.fc.out_features == 3


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(ModelError) as err:
        architectures.build_network("alexnet2", 5)
    msg = str(err.value)
    assert msg.startswith("unknown architecture 'alexnet2'; valid names: alexnet, ")
    assert ", resnet18, " in msg and ", vgg11, " in msg


def test_bad_num_classes():
    with pytest.raises(ModelError, match=r"num_classes must be a positive integer, got 0 \(arch resnet18\)"):
        architectures.build_network("resnet18", 0)


def test_seeded_init_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = load_model("resnet18", 3, seed=5)
    after = torch.rand(1)
    b = load_model("resnet18", 3, seed=5)
    c = load_model("resnet18", 3, seed=6)
    assert torch.equal(after, expected_next)
    for (key, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), key
    assert not torch.equal(a.net.conv1.weight, c.net.conv1.weight)


# ---------------------------------------------------------------- normalisation


def test_normalisation_inside_equals_normalising_outside(resnet18, images):
    with torch.no_grad():
        inside = resnet18(images)
        outside = resnet18.net((images - IMAGENET_MEAN) / IMAGENET_STD)
    torch.testing.assert_close(inside, outside, rtol=0, atol=0)


def test_custom_and_no_normalisation(resnet18, images):
    custom = NormalizedModel(resnet18.net, "resnet18", {"mean": [0.5, 0.25, 0.0], "std": [2, 4, 0.5]})
    none = NormalizedModel(resnet18.net, "resnet18", "none")
    mean = torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)
    std = torch.tensor([2.0, 4.0, 0.5]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(custom(images), resnet18.net((images - mean) / std), rtol=0, atol=0)
        torch.testing.assert_close(none(images), resnet18.net(images), rtol=0, atol=0)


@pytest.mark.parametrize("bad", ["imagenet2", {"mean": [0, 0, 0], "std": [1, 0, 1]}, {"mean": [0, 0]}])
def test_bad_normalisation(bad):
    with pytest.raises(ModelError, match="allowed: imagenet, none or"):
        architectures.resolve_normalization(bad)


def test_uint8_images_are_refused(resnet18):
    with pytest.raises(
        ModelError, match=r"resnet18 expects float images in \[0, 1\] shaped \(N, 3, H, W\); got torch.uint8"
    ):
        resnet18(torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8))


# ---------------------------------------------------------------- weights files


def test_weights_round_trip(tmp_path, images):
    trained = load_model("resnet18", N_CLASSES, seed=1)
    path = tmp_path / "w" / "resnet18.pt"
    save_weights(
        path,
        trained.net.state_dict(),
        {"arch": "resnet18", "epochs": np.int64(3), "lr": 0.1, "tags": ("a", "b"), "note": None},
    )
    # no temp file left; the digest beside the file, in sha256sum's format
    assert sorted(p.name for p in path.parent.iterdir()) == ["resnet18.pt", "resnet18.pt.sha256"]
    assert (path.parent / "resnet18.pt.sha256").read_text() == f"{store.sha256_of(path)}  resnet18.pt\n"
    loaded = load_model("resnet18", N_CLASSES, weights_file=path, seed=2)
    fresh = load_model("resnet18", N_CLASSES, seed=2)
    with torch.no_grad():
        assert torch.equal(loaded(images), trained(images))
        assert not torch.equal(fresh(images), trained(images))
    assert read_weights_meta(path) == {"arch": "resnet18", "epochs": 3, "lr": 0.1, "tags": ["a", "b"], "note": None}
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict", "meta"}
    # the same weights give the same bytes, whatever temporary name the write went through
    again = tmp_path / "again.pt"
    save_weights(
        again,
        trained.net.state_dict(),
        {"arch": "resnet18", "epochs": np.int64(3), "lr": 0.1, "tags": ("a", "b"), "note": None},
    )
    assert again.read_bytes() == path.read_bytes()


def _flip_a_tensor_byte(path: Path) -> None:
    """Flip one byte in the middle of the file (tensor data in a weights file), as a bad disk would."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def test_a_changed_weights_file_is_refused_against_its_record(tmp_path):
    path = tmp_path / "weights.pt"
    save_weights(path, load_model("resnet18", N_CLASSES, seed=1).net.state_dict(), {"arch": "resnet18"})
    _flip_a_tensor_byte(path)
    torch.load(path, map_location="cpu", weights_only=True)  # torch itself does not notice
    message = rf"weights file {path}: its sha256 is [0-9a-f]{{64}}, but weights.pt.sha256 beside it records"
    for load in (
        lambda: load_model("resnet18", N_CLASSES, weights_file=path),
        lambda: load_state_dict_file(path),
        lambda: read_weights_meta(path),
    ):
        with pytest.raises(ModelError, match=message + r".*delete .*weights.pt and weights.pt.sha256"):
            load()
    # Writing the weights again writes their record again.
    save_weights(path, load_model("resnet18", N_CLASSES, seed=1).net.state_dict(), {"arch": "resnet18"})
    load_state_dict_file(path)
    (tmp_path / "weights.pt.sha256").write_text("not a digest\n")
    with pytest.raises(ModelError, match=r"weights.pt.sha256: holds no sha256 digest"):
        load_state_dict_file(path)


def test_a_users_weights_file_can_be_pinned(tmp_path, images):
    from advdissect.specs import ModelSpec

    path = tmp_path / "mine.pt"
    net = load_model("resnet18", N_CLASSES, seed=1)
    torch.save(net.net.state_dict(), path)
    digest = store.sha256_of(path)
    assert not (tmp_path / "mine.pt.sha256").exists()
    spec = ModelSpec("resnet18", N_CLASSES, weights_sha256=digest.upper())
    with torch.no_grad():
        assert torch.equal(models.load_model_spec(spec, path)(images), net(images))
    _flip_a_tensor_byte(path)
    load_state_dict_file(path)  # unpinned and without a record: nothing to check against
    with pytest.raises(ModelError, match=rf"weights file {path}: its sha256 is .*but the config pins weights.sha256"):
        models.load_model_spec(spec, path)
    # Unpinned, a job's model spec is the one it always was (no re-runs).
    assert ModelSpec("resnet18", N_CLASSES).to_dict() == {
        "arch": "resnet18",
        "num_classes": N_CLASSES,
        "normalization": "imagenet",
        "seed": 0,
    }
    assert ModelSpec(**spec.to_dict()) == spec


def test_checkpoint_layouts_are_accepted(tmp_path, resnet18):
    state = resnet18.net.state_dict()
    layouts = {
        "plain.pt": state,
        "model.pt": {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
        "msd.pt": {"model_state_dict": state, "optimizer": {"lr": 0.1}},
        "wrapper.pt": resnet18.state_dict(),  # a NormalizedModel: net.* plus mean/std
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
        loaded = load_state_dict_file(tmp_path / name)
        assert list(loaded) == list(state), name
        assert all(torch.equal(loaded[k], state[k]) for k in state), name


class _Payload:
    """Pickles to a call that writes a marker file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_pickle_with_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "extra": _Payload(marker)}, path)
    with pytest.raises(ModelError) as err:
        load_state_dict_file(path)
    assert str(err.value).startswith(f"weights file {path} refused: it holds Python objects other than tensors")
    assert "(Unsupported global: GLOBAL exec was not an allowed global by default.)" in str(err.value)
    assert str(err.value).endswith("only state_dict files are accepted")
    with pytest.raises(ModelError, match="refused"):
        load_model("resnet18", 2, weights_file=path)
    assert not marker.exists()

    # The payload is real: an unsafe load does run it.
    armed = tmp_path / "armed"
    torch.save(_Payload(armed), tmp_path / "armed.pt")
    torch.load(tmp_path / "armed.pt", weights_only=False)
    assert armed.read_text() == "pwned"


def test_checkpoint_of_another_architecture_names_file_and_keys(tmp_path, resnet18):
    path = tmp_path / "resnet18.pt"
    save_weights(path, resnet18.net.state_dict())
    with pytest.raises(ModelError) as err:
        load_model("alexnet", N_CLASSES, weights_file=path)
    msg = str(err.value)
    assert msg.startswith(f"weights file {path} does not fit alexnet (num_classes={N_CLASSES}): ")
    assert (
        "missing keys (16): features.0.weight, features.0.bias, features.3.weight, "
        "features.3.bias, features.6.weight, ... (+11 more)"
    ) in msg
    assert "unexpected keys (122): conv1.weight, bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var, " in msg


def test_wrong_num_classes_names_shape_mismatches(tmp_path, resnet18):
    path = tmp_path / "resnet18.pt"
    save_weights(path, resnet18.net.state_dict())
    with pytest.raises(ModelError) as err:
        load_model("resnet18", 5, weights_file=path)
    assert str(err.value) == (
        f"weights file {path} does not fit resnet18 (num_classes=5): shape mismatches (2): "
        "fc.weight (file (7, 512), model (5, 512)), fc.bias (file (7,), model (5,))"
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, bad):
    path = tmp_path / "bad.pt"
    second = torch.zeros(3, 4)
    second[1, 2] = bad
    third = torch.full((2,), bad)
    save_weights(path, {"a": torch.ones(2), "b": second, "c": third, "n": torch.tensor(3)})
    with pytest.raises(ModelError) as err:
        load_state_dict_file(path)
    assert str(err.value) == f"weights file {path}: tensor 'b' holds NaN or Inf values (1 of 12); refusing to load it"


def test_files_that_are_not_state_dicts(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ModelError, match=r"list.pt holds 'list', not a state_dict"):
        load_state_dict_file(tmp_path / "list.pt")
    torch.save({"a": torch.zeros(1), "b": 3}, tmp_path / "mixed.pt")
    with pytest.raises(ModelError, match=r"mixed.pt: entry 'b' holds 'int', not a tensor"):
        load_state_dict_file(tmp_path / "mixed.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match=r"junk.pt cannot be read as a PyTorch weights file \(Unsupported operand"):
        load_state_dict_file(tmp_path / "junk.pt")
    with pytest.raises(ModelError, match=r"weights file .*absent.pt does not exist"):
        load_state_dict_file(tmp_path / "absent.pt")


def test_save_weights_refuses_non_plain_meta(tmp_path):
    with pytest.raises(ModelError, match=r"meta.opt holds 'object'; only str, int, float, bool, None"):
        save_weights(tmp_path / "w.pt", {"a": torch.zeros(1)}, {"opt": object()})
    assert list(tmp_path.iterdir()) == []


def test_save_weights_does_not_store_a_views_whole_storage(tmp_path):
    big = torch.zeros(1000, 100)
    save_weights(tmp_path / "w.pt", {"row": big[3]})
    assert (tmp_path / "w.pt").stat().st_size < 20_000


# ---------------------------------------------------------------- torchvision weights (no network)


def test_unknown_torchvision_weights_name(tmp_path):
    with pytest.raises(ModelError) as err:
        weights.download_torchvision_weights("alexnet", "IMAGENET9K", tmp_path / "w.pt")
    assert str(err.value) == "unknown weights 'IMAGENET9K' for alexnet; available: IMAGENET1K_V1, DEFAULT"
    with pytest.raises(ModelError, match="torchvision has no pretrained weights for architecture 'resnet7'"):
        weights.download_torchvision_weights("resnet7", "IMAGENET1K_V1", tmp_path / "w.pt")
    assert not (tmp_path / "w.pt").exists()


def test_download_saves_state_dict_and_meta(tmp_path, monkeypatch, images):
    source = architectures.build_network("resnet18", 1000)
    calls = []

    def fake_get_state_dict(self, **kwargs):
        calls.append(kwargs)
        return source.state_dict()

    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", fake_get_state_dict)
    dest = tmp_path / "resnet18_imagenet.pt"
    weights.download_torchvision_weights("resnet18", "DEFAULT", dest)
    assert calls == [{"progress": True, "check_hash": True, "weights_only": True}]
    meta = read_weights_meta(dest)
    assert {k: meta[k] for k in ("arch", "weights", "weights_requested", "num_classes")} == {
        "arch": "resnet18",
        "weights": "IMAGENET1K_V1",
        "weights_requested": "DEFAULT",
        "num_classes": 1000,
    }
    assert meta["categories"][:2] == ["tench", "goldfish"]
    model = load_model("resnet18", 1000, weights_file=dest)
    with torch.no_grad():
        assert torch.equal(model(images), NormalizedModel(source.eval(), "resnet18")(images))


def test_download_script_passes_its_snakemake_names(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(weights, "download_torchvision_weights", lambda *a: calls.append(a))
    fake = types.SimpleNamespace(
        output=types.SimpleNamespace(weights=str(tmp_path / "w.pt")),
        params=types.SimpleNamespace(arch="alexnet", weights="IMAGENET1K_V1"),
        log=[str(tmp_path / "log.txt")],
    )
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        runpy.run_path(str(REPO / "workflow" / "scripts" / "download_weights.py"), init_globals={"snakemake": fake})
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert calls == [("alexnet", "IMAGENET1K_V1", str(tmp_path / "w.pt"))]
    assert (tmp_path / "log.txt").exists()


# ---------------------------------------------------------------- layer names


def test_alexnet_aliases(alexnet):
    expected = {
        "conv1": "features.1",
        "conv2": "features.4",
        "conv3": "features.7",
        "conv4": "features.9",
        "conv5": "features.11",
        "last_conv": "features.11",
    }
    assert net_layers.layer_aliases(alexnet) == expected
    for alias, name in expected.items():
        assert resolve_layer(alexnet, alias) == name


def test_vgg11_aliases(vgg11):
    expected = {f"conv{i + 1}": f"features.{n}" for i, n in enumerate([1, 4, 7, 9, 12, 14, 17, 19])}
    assert net_layers.layer_aliases(vgg11) == {**expected, "last_conv": "features.19"}
    assert resolve_layer(vgg11, "last_conv") == "features.19"
    assert resolve_layer(vgg11, "conv5") == "features.12"


def test_vgg_bn_aliases_skip_batchnorm():
    with torch.device("meta"):  # structure only: no 130M parameters to initialise
        net = torchvision.models.vgg11_bn(num_classes=2)
    aliases = net_layers.layer_aliases(net)
    assert aliases["conv1"] == "features.2" and aliases["last_conv"] == "features.27"
    assert isinstance(dict(net.named_modules())["features.27"], torch.nn.ReLU)


def test_resnet_names(resnet18):
    for name in ("layer1", "layer2", "layer3", "layer4", "layer4.1.conv2", "conv1"):
        assert resolve_layer(resnet18, name) == name
    assert resolve_layer(resnet18, "last_conv") == "layer4"


def test_dissectable_layers(alexnet, resnet18):
    names = dissectable_layers(alexnet)
    assert names[:3] == ["features", "features.0", "features.1"] and "classifier.6" in names
    assert "" not in names
    assert {"layer3", "layer4.1.conv2", "fc"} <= set(dissectable_layers(resnet18))


def test_unknown_layer_lists_dissectable_names(resnet18, alexnet):
    names = dissectable_layers(resnet18)
    assert len(names) > 40
    with pytest.raises(ModelError) as err:
        resolve_layer(resnet18, "layer5")
    assert str(err.value) == (
        "unknown layer 'layer5' for resnet18; top-level blocks: conv1, bn1, relu, maxpool, layer1, layer2, "
        "layer3, layer4, avgpool, fc; aliases: last_conv=layer4; dissectable layers: "
        + ", ".join(names[:40])
        + f", ... (first 40 of {len(names)}; see advdissect.nets.layers.dissectable_layers)"
    )
    with pytest.raises(ModelError) as err:
        resolve_layer(alexnet, "conv6")
    msg = str(err.value)
    assert msg.startswith(
        "unknown layer 'conv6' for alexnet; top-level blocks: features, avgpool, classifier; "
        "aliases: conv1=features.1, conv2=features.4, "
    )
    assert msg.endswith("classifier.5, classifier.6")


def test_check_layer_names_for_config():
    net_layers.check_layer_names("vgg11", 5, ["conv1", "last_conv", "features.20"], where="models.v.layers")
    with pytest.raises(ConfigError) as err:
        net_layers.check_layer_names("resnet18", 5, ["layer4", "layer5"], where="models.r.layers")
    assert str(err.value).startswith("config: models.r.layers: unknown layer 'layer5' for resnet18; top-level blocks: ")
    with pytest.raises(ConfigError, match=r"^config: models.x.layers: unknown architecture 'resnet7'; valid names: "):
        net_layers.check_layer_names("resnet7", 5, ["layer4"], where="models.x.layers")


@pytest.mark.parametrize(
    ("arch", "layers", "first", "second", "module"),
    [
        ("resnet18", ["layer3", "layer4", "last_conv"], "layer4", "last_conv", "layer4"),
        ("alexnet", ["conv5", "conv2", "features.11"], "conv5", "features.11", "features.11"),
        ("vgg11", ["last_conv", "conv8"], "last_conv", "conv8", "features.19"),
    ],
)
def test_one_module_under_two_names_is_refused(arch, layers, first, second, module):
    with pytest.raises(ConfigError) as err:
        net_layers.check_layer_names(arch, 5, layers, where="models.m.layers")
    assert str(err.value) == (
        f"config: models.m.layers: {first!r} and {second!r} are the same module ({module}) of {arch}; list it once"
    )


# ---------------------------------------------------------------- hooks


def _no_hooks(model):
    return all(not m._forward_hooks for m in model.modules())


def test_alexnet_capture_matches_manual_forward(alexnet, images):
    layers = ["features.10", "conv5", "features.4"]
    with torch.no_grad():
        logits, out = capture(alexnet, images, layers)
        x = (images - IMAGENET_MEAN) / IMAGENET_STD
        feats = alexnet.net.features
        pre_relu = feats[:11](x.clone())  # features.10 is the conv before an inplace ReLU
        conv5 = feats[:12](x.clone())
        conv2 = feats[:5](x.clone())
        torch.testing.assert_close(logits, alexnet(images), rtol=0, atol=0)
    assert list(out) == layers
    torch.testing.assert_close(out["features.10"], pre_relu, rtol=0, atol=0)
    assert (out["features.10"] < 0).any()  # not overwritten by the inplace ReLU
    torch.testing.assert_close(out["conv5"], conv5, rtol=0, atol=0)
    torch.testing.assert_close(out["features.4"], conv2, rtol=0, atol=0)
    assert out["conv5"].shape == (2, 256, 3, 3)
    assert _no_hooks(alexnet)


def test_vgg11_capture_matches_manual_forward(vgg11, images):
    with torch.no_grad():
        _, out = capture(vgg11, images, ["last_conv"])
        manual = vgg11.net.features[:20]((images - IMAGENET_MEAN) / IMAGENET_STD)
    torch.testing.assert_close(out["last_conv"], manual, rtol=0, atol=0)
    assert out["last_conv"].shape == (2, 512, 4, 4)
    assert _no_hooks(vgg11)


def test_resnet18_capture_matches_manual_forward(resnet18, images):
    net = resnet18.net
    with torch.no_grad():
        logits, out = capture(resnet18, images, ["layer3", "layer4", "layer4.1.bn2"])
        x = (images - IMAGENET_MEAN) / IMAGENET_STD
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        l3 = net.layer3(net.layer2(net.layer1(x)))
        mid = net.layer4[0](l3)
        block = net.layer4[1]
        bn2 = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(mid)))))  # before `out += identity`
        l4 = block(mid)
    torch.testing.assert_close(out["layer3"], l3, rtol=0, atol=0)
    torch.testing.assert_close(out["layer4"], l4, rtol=0, atol=0)
    torch.testing.assert_close(out["layer4.1.bn2"], bn2, rtol=0, atol=0)
    assert out["layer3"].shape == (2, 256, 4, 4) and out["layer4"].shape == (2, 512, 2, 2)
    torch.testing.assert_close(logits, resnet18(images), rtol=0, atol=0)
    assert _no_hooks(resnet18)


def test_capture_keeps_gradients(alexnet, images):
    x = images.clone().requires_grad_(True)
    _, out = capture(alexnet, x, ["last_conv"])
    out["last_conv"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_capture_removes_hooks_after_an_error(resnet18, images):
    with pytest.raises(ModelError, match=r"layer 'layer1.0.relu' \(layer1.0.relu\) of resnet18 runs 2 times"):
        with torch.no_grad():
            capture(resnet18, images, ["layer1", "layer1.0.relu"])
    assert _no_hooks(resnet18)


def test_feature_shapes(alexnet, vgg11, resnet18):
    assert feature_shapes(alexnet, ["conv1", "last_conv"], SIZE) == {"conv1": (64, 15, 15), "last_conv": (256, 3, 3)}
    assert feature_shapes(vgg11, ["last_conv"], (SIZE, SIZE)) == {"last_conv": (512, 4, 4)}
    assert feature_shapes(resnet18, ["layer3", "layer4"], 112) == {"layer3": (256, 7, 7), "layer4": (512, 4, 4)}


# ---------------------------------------------------------------- predictions


def test_predict_against_numpy_softmax(resnet18, images):
    pred, conf = predict(resnet18, images)
    assert pred.dtype == torch.int64 and conf.dtype == torch.float32
    with torch.no_grad():
        logits = resnet18(images).double().numpy()
    expected_pred = logits.argmax(1)
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    expected_conf = shifted[np.arange(len(logits)), expected_pred] / shifted.sum(1)
    np.testing.assert_array_equal(pred.numpy(), expected_pred)
    np.testing.assert_allclose(conf.numpy(), expected_conf, rtol=1e-6)


def test_softmax_prediction_on_known_logits():
    pred, conf = models.softmax_prediction(torch.tensor([[0.0, 0.0, np.log(2.0)], [5.0, 1.0, 1.0]]))
    assert pred.tolist() == [2, 0]
    np.testing.assert_allclose(conf.numpy(), [0.5, np.exp(5) / (np.exp(5) + 2 * np.e)], rtol=1e-6)


def test_layers_that_run_twice_or_are_no_map_are_refused_at_planning():
    # one meta forward pass (no memory, no weights): ResNet's block ReLU runs twice, fc is no map
    from advdissect.errors import ConfigError
    from advdissect.nets.layers import check_layer_names

    with pytest.raises(ConfigError, match=r"models.m.layers: 'layer4.0.relu' \(layer4.0.relu\) runs 2 times"):
        check_layer_names("resnet18", 16, ["layer4", "layer4.0.relu"], where="models.m.layers")
    with pytest.raises(ConfigError, match=r"'fc' \(fc\) of resnet18 returns \(1, 16\), not a feature map"):
        check_layer_names("resnet18", 16, ["fc"])
    for arch, layers in (
        ("resnet18", ["layer3", "layer4", "layer4.0.conv1"]),
        ("alexnet", ["conv2", "conv5"]),
        ("vgg11_bn", ["conv6", "last_conv"]),
        ("vgg11", ["last_conv"]),
    ):
        check_layer_names(arch, 16, layers)


class _TwiceReLU(torch.nn.Module):
    """A block whose ReLU runs twice per pass, as ResNet's blocks do."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2))

    def forward(self, x):
        return self.head(self.relu(self.conv(self.relu(x))))


def test_every_reader_of_a_layer_refuses_one_that_runs_twice():
    """Activations, ablation and captured features read layers through one helper, so a module
    run twice per pass is refused by all three with the same message (and none keeps a hook).
    Activations stop after the last wanted layer, so they see a second call only before it;
    the workflow refuses such layers when it plans (check_layer_names)."""
    from advdissect.dissect.ablation import ablated_predictions
    from advdissect.dissect.activations import extract_layers

    model = architectures.NormalizedModel(_TwiceReLU(), "twice", "none").eval()
    imgs = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    message = r"layer 'relu' \(relu\) of twice runs 2 times in one forward pass"
    with pytest.raises(ModelError, match=message):
        extract_layers(model, imgs, ["relu", "head.0"], 2, "cpu")
    with pytest.raises(ModelError, match=message):
        ablated_predictions(model, imgs, "relu", np.ones((1, 3), bool), np.zeros((3, 8, 8)), 2)
    with pytest.raises(ModelError, match=message), torch.no_grad():
        capture(model, torch.rand(2, 3, 8, 8), ["relu"])
    # the same module once per pass is read by all three, and passes do not count against each other
    assert extract_layers(model, imgs, ["conv"], 1, "cpu")["conv"].shape == (2, 3, 8, 8)
    assert ablated_predictions(model, imgs, "conv", np.ones((1, 3), bool), np.zeros((3, 8, 8)), 1).shape == (1, 2)
    assert _no_hooks(model)


# ---------------------------------------------------------------- the robustness library's checkpoints


def test_robustness_checkpoints_load_without_attacker_and_normaliser(tmp_path, robust_net):
    torch.save(robustness_checkpoint(robust_net), tmp_path / "robust.ckpt")
    state = load_state_dict_file(tmp_path / "robust.ckpt", normalization="imagenet")
    assert list(state) == list(robust_net.state_dict())  # no attacker., normalizer. or model. keys
    model = load_model("resnet18", 3, weights_file=tmp_path / "robust.ckpt")
    for key, value in robust_net.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key


def test_a_robustness_normaliser_must_equal_the_models(tmp_path, robust_net):
    torch.save(robustness_checkpoint(robust_net, std=(0.2, 0.2, 0.2)), tmp_path / "robust.ckpt")
    with pytest.raises(ModelError) as err:
        load_model("resnet18", 3, weights_file=tmp_path / "robust.ckpt")
    assert str(err.value) == (
        f"weights file {tmp_path / 'robust.ckpt'}: its normaliser has mean [0.485, 0.456, 0.406] and std "
        "[0.2, 0.2, 0.2], but the model's normalization 'imagenet' is mean [0.485, 0.456, 0.406], std "
        "[0.229, 0.224, 0.225]; set the model's `normalization` to the checkpoint's"
    )
    model = load_model("resnet18", 3, tmp_path / "robust.ckpt", {"mean": [0.485, 0.456, 0.406], "std": [0.2] * 3})
    assert torch.equal(model.net.fc.weight, robust_net.fc.weight)


def test_unknown_checkpoint_layouts_are_refused_naming_their_keys(tmp_path, robust_net):
    torch.save({"weights": robust_net.state_dict(), "epoch": 3}, tmp_path / "other.ckpt")
    with pytest.raises(ModelError) as err:
        load_state_dict_file(tmp_path / "other.ckpt")
    assert str(err.value) == (
        f"weights file {tmp_path / 'other.ckpt'}: a checkpoint of unknown layout, with keys weights, epoch; "
        "none of state_dict, model_state_dict, model holds a state_dict"
    )
    checkpoint = robustness_checkpoint(robust_net)
    checkpoint["model"]["module.ema.fc.weight"] = robust_net.fc.weight
    torch.save(checkpoint, tmp_path / "robust.ckpt")
    with pytest.raises(ModelError, match=r"robustness-library checkpoint .* with other keys too: ema.fc.weight;"):
        load_state_dict_file(tmp_path / "robust.ckpt")


# ---------------------------------------------------------------- token grids of transformers


from torchvision.models.swin_transformer import SwinTransformerBlock  # noqa: E402
from torchvision.models.vision_transformer import EncoderBlock  # noqa: E402


class _Tokens(EncoderBlock):
    """An encoder block that returns a known pattern instead of computing: the (N, 1 + h*w, d)
    tokens, token 1 + i*w + j of image n holding 1000 n + 100 u + 10 i + j in channel u, the
    class token -1."""

    def __init__(self, d=3, side=4, extra=0):
        super().__init__(1, d, 4, 0.0, 0.0)
        self.d, self.side, self.extra = d, side, extra

    def forward(self, x):
        n, s, d = x.shape[0], self.side, self.d
        grid = torch.arange(s)
        pattern = 1000.0 * torch.arange(n)[:, None, None, None] + 100.0 * torch.arange(d)[None, :, None, None]
        pattern = pattern + 10.0 * grid[None, None, :, None] + grid[None, None, None, :]  # (n, d, s, s)
        tokens = torch.empty(n, 1 + s * s + self.extra, d)
        tokens[:, 0] = -1.0
        for i in range(s):
            for j in range(s):
                tokens[:, 1 + i * s + j] = pattern[:, :, i, j]
        return tokens


class _ChannelsLast(SwinTransformerBlock):
    """A Swin block that returns (N, h, w, C) with 1000 n + 100 c + 10 i + j at [n, i, j, c]."""

    def __init__(self, c=3, h=2, w=5):
        super().__init__(c, 1, [2, 2], [0, 0])
        self.c, self.h, self.w = c, h, w

    def forward(self, x):
        n = x.shape[0]
        out = torch.empty(n, self.h, self.w, self.c)
        for i in range(self.h):
            for j in range(self.w):
                for c in range(self.c):
                    out[:, i, j, c] = 1000.0 * torch.arange(n) + 100 * c + 10 * i + j
        return out


class _Seen(torch.nn.Module):
    """Records what it is given (after a hook on the module before it replaced it)."""

    def forward(self, x):
        self.seen = x.clone()
        return x.flatten(1)[:, :2]


def _grid_net(block):
    return NormalizedModel(torch.nn.Sequential(block, _Seen()), "grid", "none").eval()


def _read(model, layer, edit=None):
    got = {}

    def on_output(name, output):
        got[name] = output.clone()
        return edit(output) if edit else None

    with torch.no_grad(), net_layers.layer_outputs(model, [layer], on_output):
        model(torch.zeros(2, 3, 8, 8))
    return got[layer]


def test_token_outputs_read_as_maps_on_the_patch_grid():
    model = _grid_net(_Tokens(d=3, side=4))
    assert net_layers.layer_layout(model, "0") == net_layers.TOKENS
    maps = _read(model, "0")
    assert maps.shape == (2, 3, 4, 4)  # (N, d, h, w): the class token dropped
    for n, u, i, j in [(0, 0, 0, 0), (1, 2, 3, 1), (0, 1, 2, 3), (1, 0, 0, 3)]:
        assert maps[n, u, i, j] == 1000 * n + 100 * u + 10 * i + j
    assert not (maps == -1).any()
    assert feature_shapes(model, ["0"], 8) == {"0": (3, 4, 4)}


def test_channels_last_outputs_read_as_maps():
    model = _grid_net(_ChannelsLast(c=3, h=2, w=5))
    assert net_layers.layer_layout(model, "0") == net_layers.CHANNELS_LAST
    maps = _read(model, "0")
    assert maps.shape == (2, 3, 2, 5)
    for n, c, i, j in [(0, 0, 0, 0), (1, 2, 1, 4), (0, 1, 1, 2)]:
        assert maps[n, c, i, j] == 1000 * n + 100 * c + 10 * i + j


def test_an_edited_map_goes_back_into_tokens_there_only():
    model = _grid_net(_Tokens(d=3, side=4))

    def edit(maps):
        maps = maps.clone()
        maps[:, 2, 1, 3] = 7.0
        return maps

    _read(model, "0", edit)
    tokens = model.net[1].seen
    want = _Tokens(d=3, side=4)(torch.zeros(2, 3, 8, 8))
    want[:, 1 + 1 * 4 + 3, 2] = 7.0
    torch.testing.assert_close(tokens, want, rtol=0, atol=0)
    assert (tokens[:, 0] == -1).all()  # the class token unchanged
    # variants stacked along the batch: each image's class token repeated per variant
    _read(model, "0", lambda maps: torch.cat([maps, maps + 1]))
    tokens = model.net[1].seen
    assert tokens.shape == (4, 17, 3) and (tokens[:, 0] == -1).all()
    plain = _Tokens(d=3, side=4)(torch.zeros(2, 3, 8, 8))
    torch.testing.assert_close(tokens[:2], plain, rtol=0, atol=0)
    torch.testing.assert_close(tokens[2:, 1:], plain[:, 1:] + 1, rtol=0, atol=0)


def test_an_edited_map_goes_back_channels_last():
    model = _grid_net(_ChannelsLast(c=3, h=2, w=5))

    def edit(maps):
        maps = maps.clone()
        maps[:, 1, 0, 4] = -5.0
        return maps

    _read(model, "0", edit)
    want = _ChannelsLast(c=3, h=2, w=5)(torch.zeros(2, 3, 8, 8))
    want[:, 0, 4, 1] = -5.0
    torch.testing.assert_close(model.net[1].seen, want, rtol=0, atol=0)


def test_ambiguous_or_unknown_layouts_are_refused():
    # tokens that are not 1 + a square: no grid to put them on
    with pytest.raises(ModelError, match=r"layer '0' \(0\) of grid returns \(2, 18, 3\), not the \(N, 1 \+ h\*w, d\)"):
        _read(_grid_net(_Tokens(d=3, side=4, extra=1)), "0")
    # a CNN map whose channels equal its height and width stays (N, C, h, w): the type decides
    conv = torch.nn.Conv2d(3, 4, 1, stride=2)
    model = NormalizedModel(torch.nn.Sequential(conv, torch.nn.Flatten()), "cnn", "none").eval()
    assert net_layers.layer_layout(model, "0") == net_layers.MAPS
    assert feature_shapes(model, ["0"], 8) == {"0": (4, 4, 4)}


@pytest.fixture(scope="module")
def tiny_vit():
    return helpers.tiny_vit()


@pytest.fixture(scope="module")
def tiny_swin():
    return helpers.tiny_swin()


def test_feature_shapes_of_transformer_blocks(tiny_vit, tiny_swin):
    blocks = ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    assert feature_shapes(tiny_vit, blocks + ["conv_proj"], 32) == dict.fromkeys(blocks + ["conv_proj"], (16, 4, 4))
    assert feature_shapes(tiny_swin, ["features.1", "features.3"], 32) == {
        "features.1": (8, 8, 8),
        "features.3": (16, 4, 4),
    }
    assert {"encoder.layers.encoder_layer_1", "features.3"} <= set(
        dissectable_layers(tiny_vit) + dissectable_layers(tiny_swin)
    )
    with pytest.raises(ModelError, match="does not take 48x48 images"):
        feature_shapes(tiny_vit, blocks, 48)


def test_the_patch_grid_is_torchvisions_patch_order(tiny_vit):
    """Token 1 + i*w + j is the patch at row i, column j: conv_proj's map, plus the position
    embedding, is what the first block's input holds there."""
    net = tiny_vit.net
    x = torch.rand(2, 3, 32, 32)
    seen = {}
    handle = net.encoder.layers.encoder_layer_0.register_forward_pre_hook(lambda _m, i: seen.update(x=i[0]))
    with torch.no_grad():
        _, out = capture(tiny_vit, x, ["conv_proj"])
    handle.remove()
    grid = out["conv_proj"]  # (N, d, 4, 4)
    pos = net.encoder.pos_embedding[0, 1:].detach()
    for i, j in [(0, 0), (1, 3), (3, 2)]:
        torch.testing.assert_close(seen["x"][:, 1 + i * 4 + j], grid[:, :, i, j] + pos[i * 4 + j])


def test_transformer_layers_at_planning():
    check_ok = net_layers.check_layer_names
    check_ok("vit_b_16", 1000, ["encoder.layers.encoder_layer_5", "encoder.layers.encoder_layer_11"])
    check_ok("swin_t", 1000, ["features.3", "features.7"])
    check_ok("vit_tiny", 5, ["encoder.layers.encoder_layer_1"])  # its own 64 px, not 224
    check_ok("swin_tiny", 5, ["features.1", "features.3"])
    for arch, layer in (("vit_b_16", "encoder.layers.encoder_layer_5.mlp"), ("swin_t", "features.1.0.norm1")):
        with pytest.raises(
            ConfigError, match=rf"^config: models.m.layers: layer '{layer}' .* of {arch} is a \w+ in a "
        ):
            check_ok(arch, 1000, [layer], where="models.m.layers")
    with pytest.raises(ConfigError, match=r"^config: models.m.layers: .*'heads' \(heads\) of vit_b_16"):
        check_ok("vit_b_16", 1000, ["heads"], where="models.m.layers")


def test_ceilings_map_size_of_transformers():
    from advdissect.dissect.ceilings import map_size

    assert map_size("vit_b_16", 1000, "encoder.layers.encoder_layer_11", 224) == (14, 14)
    assert map_size("swin_t", 1000, "features.5", 224) == (14, 14)
    assert map_size("vit_tiny", 5, "encoder.layers.encoder_layer_0", 64) == (8, 8)
    assert map_size("swin_tiny", 5, "features.3", 64) == (8, 8)
