"""Training loop on a tiny conv net and tiny tensors: methods, resume, atomic checkpoints, config."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from advdissect.errors import ConfigError
from advdissect.nets import training
from advdissect.specs import ModelSpec, TrainSpec, schema_defaults, train_spec

N_CLASSES = 3
SIZE = 12


class TinyNet(nn.Module):
    """Conv + BatchNorm + dropout: everything whose state a resume must restore."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(6 * 4, N_CLASSES)

    def forward(self, x):
        return self.fc(self.drop(self.pool(self.features(x)).flatten(1)))


def toy_data(n: int, seed: int, separable: bool = True):
    """uint8 images whose class is the brightest colour channel (easy to learn)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, n)
    images = rng.integers(0, 90, (n, 3, SIZE, SIZE))
    if separable:
        images[np.arange(n), labels] += 150
    return torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels.astype(np.int64))


def cfg(**kw):
    base = dict(method="standard", epochs=1, batch_size=8, lr=1e-2, eps=8 / 255, seed=0)
    base.update(kw)
    return TrainSpec(**base)


def run(tmp_path, config, model=None, name="ckpt.pt", **kw):
    xt, yt = toy_data(24, 0)
    xv, yv = toy_data(12, 1)
    model = TinyNet() if model is None else model
    data = training.TrainingSet(xt, yt, xv, yv)
    metrics = training.train(model, data, config, checkpoint_path=tmp_path / name, device="cpu", progress=False, **kw)
    return model, metrics


USED = {
    "standard": {"ce_clean"},
    "at": {"ce_clean", "ce_adv"},
    "consistency": {"ce_clean", "ce_adv", "consistency"},
    "atda": {"ce_clean", "ce_adv", "coral", "mmd"},
    "atda_margin": {"ce_clean", "ce_adv", "coral", "mmd", "margin"},
    "atda_layer": {"ce_clean", "ce_adv", "coral", "mmd"},
}


@pytest.mark.parametrize("variant", list(USED))
def test_each_method_logs_its_terms(tmp_path, variant):
    method = variant.split("_")[0]
    extra = {"margin": True} if variant == "atda_margin" else {}
    if variant == "atda_layer":
        extra = {"feature": "pool"}
    _, metrics = run(tmp_path, cfg(method=method, **extra), history_path=tmp_path / "history.csv")
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.columns) == list(training.HISTORY_COLUMNS)
    assert len(history) == 1
    row = history.iloc[0]
    for term in training.LOSS_TERMS:
        if term in USED[variant]:
            assert math.isfinite(row[term]), term
        else:
            assert math.isnan(row[term]), term
    assert math.isfinite(row["loss"]) and 0 <= row["val_accuracy"] <= 1
    for key in ("heldout_accuracy", "train_accuracy", "heldout_fgsm_accuracy", "seconds"):
        assert math.isfinite(metrics[key]), key
    assert metrics["epochs"] == 1 and metrics["method"] == method


def test_standard_training_learns_a_separable_toy_set(tmp_path):
    _, metrics = run(tmp_path, cfg(epochs=8, lr=3e-2, augment=False))
    history = metrics["history"]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert metrics["heldout_accuracy"] >= 0.9


def test_fgsm_lowers_heldout_accuracy_of_a_standard_model(tmp_path):
    _, metrics = run(tmp_path, cfg(epochs=8, lr=3e-2, eps=100 / 255))
    assert metrics["heldout_fgsm_accuracy"] < metrics["heldout_accuracy"]


class Killed(Exception):
    pass


def _kill_after(epoch):
    def hook(record):
        if record["epoch"] == epoch:
            raise Killed

    return hook


@pytest.mark.parametrize("method", ["standard", "atda"])
def test_resume_after_kill_gives_identical_weights(tmp_path, method):
    config = cfg(method=method, epochs=2, margin=method == "atda")
    straight, m1 = run(tmp_path, config, name="a.pt")

    with pytest.raises(Killed):
        run(tmp_path, config, name="b.pt", on_epoch_end=_kill_after(1))
    assert (tmp_path / "b.pt").is_file()
    torch.manual_seed(12345)  # a new process starts from another RNG state
    resumed, m2 = run(tmp_path, config, model=TinyNet(seed=99), name="b.pt")

    assert m2["resumed_from_epoch"] == 1
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert m1["heldout_accuracy"] == m2["heldout_accuracy"]
    assert [r["loss"] for r in m1["history"]] == [r["loss"] for r in m2["history"]]


def test_same_seed_same_weights(tmp_path):
    a, _ = run(tmp_path, cfg(method="at"), name="a.pt")
    b, _ = run(tmp_path, cfg(method="at"), name="b.pt")
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_checkpoint_of_another_config_is_not_resumed(tmp_path):
    run(tmp_path, cfg(epochs=1, lr=1e-2))
    _, metrics = run(tmp_path, cfg(epochs=1, lr=2e-2))
    assert metrics["resumed_from_epoch"] == 0


def test_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    real_save = torch.save
    calls = []

    def crashing_save(obj, path, *args, **kwargs):
        path = Path(path)
        calls.append(path)
        # Never the final name while writing.
        assert path.name != "ckpt.pt"
        if len(calls) == 2:
            path.write_bytes(b"partial")
            raise OSError("disk full")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(training.torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, cfg(epochs=2))
    state = training.load_checkpoint(tmp_path / "ckpt.pt")
    assert state is not None and state["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_lr_schedule_warms_up_then_decays():
    factors = [training.lr_factor(s, 100, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(b <= a for a, b in zip(factors[9:], factors[10:]))
    assert factors[-1] < 0.01
    assert training.lr_factor(0, 10, 0.0) == 1.0


def test_train_spec_from_settings_and_errors():
    key = "models.m.weights"
    settings = {"source": "train", "dataset": "d", "method": "atda", "eps": "4/255", "lr": 1, "margin": True}
    spec = train_spec(settings, key)
    assert spec.eps == pytest.approx(4 / 255) and spec.lr == 1.0 and spec.lam == pytest.approx(1 / 3)
    with pytest.raises(ConfigError, match=r"models\.m\.weights: unknown key.*learning_rate"):
        train_spec({"learning_rate": 0.1}, key)
    with pytest.raises(ConfigError, match=r"models\.m\.weights\.method.*allowed: standard, at, consistency, atda"):
        train_spec({"method": "trades"}, key)
    with pytest.raises(ConfigError, match=r"models\.m\.weights\.eps.*needs eps > 0"):
        train_spec({"method": "at", "eps": 0}, key)
    with pytest.raises(ConfigError, match="optimizer"):
        TrainSpec(optimizer="rmsprop")
    with pytest.raises(ConfigError, match=r"training\.margin"):
        TrainSpec(method="at", margin=True)


def test_train_spec_defaults_are_the_schemas():
    """The schema is the one source of defaults: a spec built from nothing holds them all."""
    defaults = schema_defaults("weights.train")
    spec = TrainSpec().to_dict()
    assert set(spec) == set(defaults)
    for key, value in defaults.items():
        assert spec[key] == (4 / 255 if key == "eps" else value), key
    assert defaults["eps"] == "4/255"


def test_num_classes_mismatch_message():
    with pytest.raises(ConfigError, match=r"num_classes is 10.*has 24 classes.*set num_classes: 24"):
        training.check_num_classes(ModelSpec("resnet18", 10), 24, "resources/synthetic/demo")
    training.check_num_classes(ModelSpec("resnet18", 24), 24, "x")


def test_negative_labels_are_refused(tmp_path):
    xt, yt = toy_data(8, 0)
    yt[0] = -1
    with pytest.raises(ValueError, match="-1"):
        data = training.TrainingSet(xt, yt, xt, yt)
        training.train(TinyNet(), data, cfg(), checkpoint_path=tmp_path / "c.pt", progress=False)


def test_train_model_to_files(tiny_broden, tiny_broden_spec, tmp_path):
    from advdissect.nets.models import load_model
    from advdissect.nets.weights import read_weights_meta

    out = tmp_path / "model"
    n_classes = tiny_broden_spec["n_classes"]
    spec = ModelSpec("resnet18", n_classes)
    job = training.TrainJob(
        dataset_root=tiny_broden,
        model_spec=spec,
        training=train_spec({"method": "at", "epochs": 1, "batch_size": 8, "eps": "4/255"}),
        out_weights=out / "weights.pt",
        out_metrics=out / "metrics.json",
        out_history=out / "history.csv",
        checkpoint_path=out / "checkpoint.pt",
    )
    metrics = training.train_model_to_files(job, device="cpu", progress=False)
    assert 0 <= metrics["heldout_accuracy"] <= 1
    assert not (out / "checkpoint.pt").exists()
    assert len(pd.read_csv(out / "history.csv")) == 1
    meta = read_weights_meta(out / "weights.pt")
    assert meta["method"] == "at" and meta["num_classes"] == n_classes and meta["arch"] == "resnet18"
    load_model("resnet18", n_classes, weights_file=out / "weights.pt")


def test_train_model_to_files_refuses_wrong_num_classes(tiny_broden, tiny_broden_spec, tmp_path):
    spec = ModelSpec("resnet18", 5)
    job = training.TrainJob(
        dataset_root=tiny_broden,
        model_spec=spec,
        training={},
        out_weights=tmp_path / "w.pt",
        out_metrics=tmp_path / "m.json",
        out_history=tmp_path / "h.csv",
        checkpoint_path=tmp_path / "c.pt",
    )
    with pytest.raises(ConfigError, match=f"num_classes is 5.*{tiny_broden_spec['n_classes']} classes"):
        training.train_model_to_files(job, device="cpu", progress=False)


@pytest.mark.parametrize("precision", ["bf16", "float32"])
def test_precision_of_the_update_and_of_what_is_measured(precision):
    # bf16: the update's conv runs in bfloat16 on channels-last weights with a fused optimizer
    # step; the training FGSM batch and the held-out accuracy stay float32 either way.
    model = TinyNet()
    config = cfg(method="at", precision=precision)
    if precision == "bf16":
        model.to(memory_format=torch.channels_last)
    seen = []
    model.features[0].register_forward_hook(lambda m, i, o: seen.append((m.training, o.dtype)))
    optimizer = training.make_optimizer(model, config)
    assert optimizer.defaults.get("fused") == (True if precision == "bf16" else None)
    x, y = toy_data(8, 0)
    values, _ = training.train_step(model, x.float() / 255, y, config, optimizer)
    update = torch.bfloat16 if precision == "bf16" else torch.float32
    assert seen == [(False, torch.float32), (True, update)]  # the FGSM pass, then the update
    assert all(np.isfinite(v) for v in values.values())
    seen.clear()
    training.accuracy(model, x, y, batch_size=4, device=torch.device("cpu"))
    assert {dtype for _, dtype in seen} == {torch.float32}


def test_bf16_training_learns_the_toy_set_as_float32_does(tmp_path):
    accuracies = {}
    for precision in ("bf16", "float32"):
        _, metrics = run(tmp_path, cfg(epochs=6, precision=precision), name=f"{precision}.pt")
        accuracies[precision] = metrics["heldout_accuracy"]
    assert accuracies["float32"] == 1.0 and accuracies["bf16"] == 1.0
