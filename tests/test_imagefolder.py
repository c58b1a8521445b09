"""ImageFolder training data: listing, pixels against torchvision's transforms, training on it."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torchvision import transforms

from advdissect.data.imagefolder import ImageFolderImages, load_imagefolder
from advdissect.errors import ConfigError, DatasetError
from advdissect.nets.training import TrainJob, train_model_to_files
from advdissect.specs import ModelSpec, train_spec


def test_listing_and_pixels_follow_torchvision(tiny_imagefolder):
    train_x, train_y, val_x, val_y, classes = load_imagefolder(tiny_imagefolder, 16)
    assert classes == ["ant", "bee", "cat"]
    assert train_x.shape == (24, 3, 16, 16) and val_x.shape == (12, 3, 16, 16)
    assert train_y.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    reference = transforms.Compose([transforms.Resize(16), transforms.CenterCrop(16), transforms.PILToTensor()])
    for i in (0, 5, 11):
        with Image.open(train_x.files[i]) as img:
            want = reference(img.convert("RGB"))
        torch.testing.assert_close(train_x[[i]][0], want, rtol=0, atol=0)
    assert train_x[2:5].shape == (3, 3, 16, 16) and train_x[torch.tensor([7, 1])].dtype == torch.uint8
    # the thread pool reads the same pixels in the same order as one thread
    one = ImageFolderImages(train_x.files, 16, workers=1)
    many = ImageFolderImages(train_x.files, 16, workers=4)
    order = torch.tensor([5, 0, 23, 11, 7])
    torch.testing.assert_close(many[order], one[order], rtol=0, atol=0)


def test_mismatched_classes_and_broken_files_are_refused(tiny_imagefolder, tmp_path):
    root = tiny_imagefolder
    (root / "val" / "dog").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "dog" / "a.png")
    with pytest.raises(DatasetError, match="different class folders"):
        load_imagefolder(root, 16)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="cannot be read"):
        ImageFolderImages([broken], 8)[[0]]
    with pytest.raises(DatasetError, match="missing"):
        load_imagefolder(tmp_path / "nowhere", 16)


def test_training_on_an_imagefolder(tiny_imagefolder, tmp_path):
    root = tiny_imagefolder
    spec = ModelSpec("resnet18", 3)
    out = tmp_path / "model"
    job = TrainJob(
        dataset_root=root,
        model_spec=spec,
        training=train_spec({"method": "atda", "epochs": 2, "batch_size": 8, "lr": 0.01, "eps": "2/255"}),
        out_weights=out / "weights.pt",
        out_metrics=out / "metrics.json",
        out_history=out / "history.csv",
        checkpoint_path=out / "checkpoint.pt",
        dataset_source="imagefolder",
        image_size=32,
    )
    metrics = train_model_to_files(job, device="cpu", progress=False)
    assert metrics["n_train"] == 24 and metrics["n_val"] == 12 and metrics["epochs"] == 2
    assert 0.0 <= metrics["heldout_accuracy"] <= 1.0 and "heldout_fgsm_accuracy" in metrics
    assert json.loads((out / "metrics.json").read_text())["dataset"] == str(root)
    assert not (out / "checkpoint.pt").exists()
    with pytest.raises(ConfigError, match="num_classes"):
        job = TrainJob(
            dataset_root=root,
            model_spec=ModelSpec("resnet18", 5),
            training=train_spec({"method": "standard", "epochs": 1}),
            out_weights=out / "w2.pt",
            out_metrics=out / "m2.json",
            out_history=out / "h2.csv",
            checkpoint_path=out / "c2.pt",
            dataset_source="imagefolder",
            image_size=32,
        )
        train_model_to_files(job, device="cpu", progress=False)
