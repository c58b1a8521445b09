"""Ablation of drifted units: the stacked pass against a hand-written forward, unit sets, counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from advdissect.dissect import ablation
from advdissect.nets.models import load_model

from helpers import random_images, tiny_swin, tiny_vit, write_shards


def tiny_model(seed=0):
    return load_model("resnet18", 5, seed=seed).eval()


def images(n=6, size=32, seed=0):
    return random_images(n, size, seed)


def reference_predictions(model, x_uint8, layer, mask, mean):
    """ResNet-18's forward written out, the layer's output edited by hand."""
    net = model.net
    x = torch.from_numpy(x_uint8).float() / 255.0
    x = (x - model.mean) / model.std
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(net, name)(x)
        if name == layer:
            x = x.clone()
            x[:, torch.from_numpy(mask)] = torch.from_numpy(mean[mask]).float()
    return net.fc(torch.flatten(net.avgpool(x), 1)).argmax(1).numpy()


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_stacked_ablation_equals_the_written_out_forward(layer):
    model, x = tiny_model(), images()
    with torch.no_grad():
        n_units = {"layer3": 256, "layer4": 512}[layer]
        rng = np.random.default_rng(1)
        mean = rng.normal(size=(n_units, 2 if layer == "layer3" else 1, 2 if layer == "layer3" else 1)) * 3
        masks = np.zeros((4, n_units), bool)
        masks[1, :10] = True
        masks[2, rng.choice(n_units, 200, replace=False)] = True
        masks[3] = True
        got = ablation.ablated_predictions(model, x, layer, masks, mean, batch_size=4, stacked=True)
        each = ablation.ablated_predictions(model, x, layer, masks, mean, batch_size=4, stacked=False)
        np.testing.assert_array_equal(got, each)
        for k in range(4):
            np.testing.assert_array_equal(got[k], reference_predictions(model, x, layer, masks[k], mean))
        np.testing.assert_array_equal(got[0], model(torch.from_numpy(x).float() / 255).argmax(1).numpy())
        assert len(set(map(tuple, got))) > 1  # the ablations change predictions


def test_inner_layer_falls_back_to_one_pass_per_variant():
    model, x = tiny_model(), images(n=5)
    layer = "layer4.0.conv2"  # its output meets the block's input: the stack cannot pass
    mean = np.random.default_rng(2).normal(size=(512, 1, 1)) * 5
    masks = np.zeros((3, 512), bool)
    masks[1, ::2] = True
    masks[2] = True
    with torch.no_grad():
        got = ablation.ablated_predictions(model, x, layer, masks, mean, batch_size=2)
        want = ablation.ablated_predictions(model, x, layer, masks, mean, batch_size=2, stacked=False)
        with pytest.raises(RuntimeError):
            ablation.ablated_predictions(model, x, layer, masks, mean, batch_size=2, stacked=True)
    np.testing.assert_array_equal(got, want)


def test_out_of_memory_halves_the_batch_and_keeps_the_stack(monkeypatch):
    """An out-of-memory stacked batch is retried smaller, not taken for a layer that cannot stack."""
    model, x = tiny_model(), images(n=6)
    mean = np.random.default_rng(3).normal(size=(512, 1, 1)) * 5
    masks = np.zeros((3, 512), bool)
    masks[1, ::3] = True
    masks[2] = True
    forward = model.forward
    seen = []

    def small_memory(inputs):
        seen.append(inputs.shape[0])
        if inputs.shape[0] > 2:  # the images of one batch, before the stack multiplies them
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return forward(inputs)

    monkeypatch.setattr(model, "forward", small_memory)
    with torch.no_grad():
        got = ablation.ablated_predictions(model, x, "layer4", masks, mean, batch_size=4, stacked=None)
    monkeypatch.setattr(model, "forward", forward)
    with torch.no_grad():
        want = ablation.ablated_predictions(model, x, "layer4", masks, mean, batch_size=6, stacked=False)
    np.testing.assert_array_equal(got, want)
    assert seen == [4, 2, 2, 2]  # one refused batch of 4, then stacked batches of 2 (no per-variant passes)


def units(rows):
    return pd.DataFrame(rows, columns=["unit", "label", "category", "iou", "detector"])


CLEAN = units(
    [
        (1, "red", "color", 0.10, True),
        (2, "dog", "object", 0.08, True),
        (3, "dog", "object", 0.05, True),
        (4, "grass", "material", 0.03, False),
        (5, "", "", float("nan"), False),
    ]
)
ATTACKED = units(
    [
        (1, "red", "color", 0.09, True),  # kept
        (2, "cat", "object", 0.06, True),  # changed
        (3, "dog", "object", 0.02, False),  # lost
        (4, "grass", "material", 0.05, True),  # gained
        (5, "", "", float("nan"), False),  # none
    ]
)


def test_drifted_units_are_the_changed_and_the_lost():
    np.testing.assert_array_equal(ablation.drifted_units(CLEAN, ATTACKED), [1, 2])
    np.testing.assert_array_equal(ablation.drifted_units(CLEAN, CLEAN), [])


def test_random_units_are_seeded_and_distinct():
    a = ablation.random_units(100, 7, seed=3)
    assert len(set(a)) == 7 and list(a) == sorted(a) and a.max() < 100
    np.testing.assert_array_equal(a, ablation.random_units(100, 7, seed=3))
    assert not np.array_equal(a, ablation.random_units(100, 7, seed=4))


def test_sets_and_table_by_hand():
    sets = ablation.ablation_sets({"self": (CLEAN, ATTACKED), "clean": (CLEAN, CLEAN)}, n_units=5, random_sets=2)
    assert [(s["threshold_mode"], s["units_set"], s["seed"], len(s["units"])) for s in sets] == [
        ("self", "drifted", None, 2),
        ("self", "random", 0, 2),
        ("self", "random", 1, 2),
        ("clean", "drifted", None, 0),
        ("clean", "random", 0, 0),
        ("clean", "random", 1, 0),
    ]
    clean_pred = np.array([0, 1, 2, 3, 4, 5])
    predictions = np.array(
        [
            [9, 9, 9, 3, 4, 5],  # unablated: the attack flipped images 0-2
            [0, 1, 9, 3, 4, 9],  # restores 2 of 3, keeps 2 of 3
            [0, 9, 9, 3, 4, 5],
            [9, 9, 9, 3, 4, 5],
            [0, 1, 2, 3, 4, 5],
            [9, 9, 9, 9, 9, 9],
            [9, 9, 9, 3, 4, 5],
        ]
    )
    table = ablation.ablation_table(sets, predictions, clean_pred, n_units=5)
    assert table["flipped"].tolist() == [3] * 6
    assert table["restored"].tolist() == [2, 1, 0, 3, 0, 0]
    assert table["restored_percent"].round(4).tolist() == [66.6667, 33.3333, 0.0, 100.0, 0.0, 0.0]
    assert table["kept_percent"].round(4).tolist() == [66.6667, 100.0, 100.0, 100.0, 0.0, 100.0]


def test_mean_map_over_shards():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 4, 2, 2)), rng.normal(size=(5, 4, 2, 2))
    np.testing.assert_allclose(ablation.mean_map([a, b]), np.concatenate([a, b]).mean(axis=0))


@pytest.mark.parametrize("rows_per_block", [1, 7, 1000])
def test_mean_map_read_in_blocks_is_bit_for_bit_the_whole_shards(monkeypatch, rows_per_block):
    # A shard is summed a block of rows at a time in row order: the same float64 additions as
    # numpy's sum over the whole shard, so the ablated maps do not move by one ulp.
    rng = np.random.default_rng(1)
    shards = [rng.normal(size=(n, 6, 3, 2)).astype(np.float32) for n in (40, 13)]
    whole = sum(np.asarray(a, np.float64).sum(axis=0) for a in shards) / 53
    monkeypatch.setattr(ablation, "BLOCK_BYTES", rows_per_block * 8 * 6 * 3 * 2)
    np.testing.assert_array_equal(ablation.mean_map(shards), whole)


def test_sharded_images_read_any_range_across_shards(tmp_path):
    from advdissect.dissect.ablation import ShardedImages

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (11, 3, 4, 4), dtype=np.uint8)
    ident = {"dataset": "d", "model": "m", "attack": "fgsm"}
    arrays = {"rows": np.arange(11), "images": images, "clean_pred": np.arange(11), "adv_pred": np.arange(11) + 1}
    paths = write_shards(tmp_path, "images", ident, arrays, [(0, 4), (4, 5), (5, 11)])
    sharded = ShardedImages(paths, ident)
    assert sharded.shape == images.shape
    np.testing.assert_array_equal(sharded.clean_pred, np.arange(11))
    np.testing.assert_array_equal(sharded.adv_pred, np.arange(11) + 1)
    for start in range(12):
        for stop in range(start, 12):
            np.testing.assert_array_equal(sharded[start:stop], images[start:stop])


# ---------------------------------------------------------------- transformers


def _vit_and_swin():
    vit = tiny_vit()
    torch.nn.init.normal_(vit.net.heads.head.weight)  # torchvision starts it at zero: every logit 0
    return {"encoder.layers.encoder_layer_0": (vit, 16, 4), "features.1": (tiny_swin(), 8, 8)}


def _edited_by_hand(model, x, layer, mask, mean):
    """Logits with the layer's raw output edited in its own layout: a ViT block's patch tokens
    (the class token kept), a Swin stage's channels-last map."""
    from advdissect.nets.layers import find_layer

    def edit(_m, _i, out):
        out = out.clone()
        for u in np.flatnonzero(mask):
            if out.ndim == 3:
                out[:, 1:, u] = torch.from_numpy(mean[u].reshape(-1)).float()
            else:
                out[..., u] = torch.from_numpy(mean[u]).float()
        return out

    handle = find_layer(model, layer).register_forward_hook(edit)
    try:
        return model(x)
    finally:
        handle.remove()


@pytest.mark.parametrize("layer", ["encoder.layers.encoder_layer_0", "features.1"])
def test_transformer_ablation_edits_the_tokens_and_takes_the_stack(layer):
    """Encoder blocks and Swin stages keep their residual sums inside: variants stacked along the
    batch pass the rest of the network, and equal the output edited by hand, one variant at a time."""
    from advdissect.nets.layers import layer_outputs

    model, units, side = _vit_and_swin()[layer]
    x_uint8 = images(n=3)
    x = torch.from_numpy(x_uint8).float() / 255
    rng = np.random.default_rng(3)
    mean = rng.normal(size=(units, side, side)) * 3
    masks = np.zeros((3, units), bool)
    masks[1, :3] = True
    masks[2] = True
    hook = ablation._Ablate(torch.from_numpy(masks), torch.from_numpy(mean).float(), stacked=True)
    with torch.no_grad():
        with layer_outputs(model, [layer], hook):
            stacked = model(x).reshape(3, 3, -1)
        for k in range(3):
            torch.testing.assert_close(
                stacked[k], _edited_by_hand(model, x, layer, masks[k], mean), rtol=1e-4, atol=1e-5
            )
        torch.testing.assert_close(stacked[0], model(x), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(stacked[2], stacked[0])
        got = ablation.ablated_predictions(model, x_uint8, layer, masks, mean, batch_size=2)
        each = ablation.ablated_predictions(model, x_uint8, layer, masks, mean, batch_size=2, stacked=False)
    np.testing.assert_array_equal(got, each)
    np.testing.assert_array_equal(got, stacked.argmax(-1).numpy())


def test_write_ablation_reads_its_job_files(tmp_path):
    from advdissect import store
    from advdissect.dissect.activations import ActivationJob, write_activation_shard

    model, bounds = tiny_model(), [(0, 3), (3, 6)]
    clean, attacked = images(seed=0), images(seed=1)
    with torch.no_grad():
        clean_pred = model(torch.from_numpy(clean).float() / 255).argmax(1).numpy()
    ident = {"dataset": "d", "model": "m"}
    arrays = {"rows": np.arange(6), "clean_pred": clean_pred, "adv_pred": clean_pred}
    clean_paths = write_shards(
        tmp_path, "images", dict(ident, attack="clean"), dict(arrays, images=clean), bounds, "c{shard}.h5"
    )
    adv_paths = write_shards(
        tmp_path, "images", dict(ident, attack="fgsm"), dict(arrays, images=attacked), bounds, "a{shard}.h5"
    )
    act_paths = []
    for shard, path in enumerate(clean_paths):
        act_paths.append(tmp_path / f"act{shard}.h5")
        job = ActivationJob(path, None, {}, ["layer4"], dict(ident, attack="clean", shard=shard), batch_size=4)
        write_activation_shard(act_paths[-1], job, device="cpu", model=model)
    rest = units([(u, "", "", float("nan"), False) for u in range(6, 513)])
    tables = {"self": (pd.concat([CLEAN, rest], ignore_index=True), pd.concat([ATTACKED, rest], ignore_index=True))}
    store.write_csv(tmp_path / "clean.csv", tables["self"][0])
    store.write_csv(tmp_path / "attacked.csv", tables["self"][1])
    job = ablation.AblationJob(
        images_paths=adv_paths,
        clean_activation_paths=act_paths,
        units_paths={"self": (tmp_path / "clean.csv", tmp_path / "attacked.csv")},
        weights_file=None,
        model_spec={},
        identity=dict(ident, attack="fgsm", layer="layer4"),
        random_sets=2,
        batch_size=4,
    )
    frame = ablation.write_ablation(tmp_path / "table.csv", job, model=model)
    sets = ablation.ablation_sets(tables, 512, 2)
    masks = np.zeros((1 + len(sets), 512), bool)
    for i, s in enumerate(sets, start=1):
        masks[i, s["units"]] = True
    mean = ablation.mean_map(ablation_maps(act_paths, ident))
    want = ablation.ablation_table(
        sets, ablation.ablated_predictions(model, attacked, "layer4", masks, mean, 4), clean_pred, 512
    )
    assert list(frame.columns) == ablation.ABLATION_COLUMNS
    assert frame[["dataset", "model", "layer", "attack"]].drop_duplicates().values.tolist() == [
        ["d", "m", "layer4", "fgsm"]
    ]
    pd.testing.assert_frame_equal(frame[list(want.columns)], want)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "table.csv").iloc[:, :4], frame.iloc[:, :4])


def ablation_maps(paths, ident):
    from advdissect import store

    for shard, path in enumerate(paths):
        with store.open_layer(path, dict(ident, attack="clean", shard=shard, layer="layer4")) as (_, acts):
            yield acts[()]
