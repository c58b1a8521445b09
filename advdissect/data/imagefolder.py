"""ImageFolder training data: torchvision's layout, <root>/train/<class>/<image> and <root>/val/<class>/<image>.

Classes are the train folder's sub-folders in sorted order and files are listed as torchvision's
ImageFolder lists them, so class indices match a model trained with torchvision on the same
folders (ImageNet's 1000 synset folders give ImageNet's class order). Images are read from disk
batch by batch, never all at once: torchvision's Resize(size) (shorter side, bilinear) and
CenterCrop(size), as uint8 (3, size, size), a batch's images decoded by a pool of threads. The same image always gives
the same pixels; training's random horizontal flips are applied later, per epoch and seed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from ..errors import DatasetError

SPLITS = ("train", "val")


class ImageFolderImages:
    """uint8 images (N, 3, size, size) of one ImageFolder split, read on indexing."""

    dtype = torch.uint8

    def __init__(self, files: Sequence[str | os.PathLike], size: int, workers: int | None = None):
        if size < 1:
            raise DatasetError(f"image size must be positive, got {size}")
        self.files = [str(f) for f in files]
        self.size = int(size)
        # PIL decodes and resizes outside the GIL, so a batch is read by a pool of threads, as
        # many as torch may use (a job's `compute.threads`).
        self.workers = max(1, int(workers if workers is not None else torch.get_num_threads()))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), 3, self.size, self.size)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> np.ndarray:
        path = self.files[i]
        try:
            with Image.open(path) as img:
                img = TF.resize(img.convert("RGB"), self.size, interpolation=TF.InterpolationMode.BILINEAR)
                img = TF.center_crop(img, [self.size, self.size])
                return np.asarray(img, np.uint8).transpose(2, 0, 1)
        except OSError as exc:
            raise DatasetError(f"{path}: cannot be read as an image ({exc})") from None

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            positions = range(*index.indices(len(self)))
        else:
            positions = np.asarray(index, np.int64).reshape(-1)
        batch = np.empty((len(positions), 3, self.size, self.size), np.uint8)
        if self.workers == 1 or len(positions) < 2:
            for j, i in enumerate(positions):
                batch[j] = self.load(int(i))
        else:
            with ThreadPoolExecutor(max_workers=min(self.workers, len(positions))) as pool:
                for j, image in enumerate(pool.map(self.load, [int(i) for i in positions])):
                    batch[j] = image
        return torch.from_numpy(batch)


def list_split(root: str | os.PathLike, split: str) -> tuple[list[str], list[str], np.ndarray]:
    """(classes, files, labels) of <root>/<split> in torchvision's ImageFolder order."""
    from torchvision.datasets import ImageFolder

    folder = Path(root) / split
    if not folder.is_dir():
        raise DatasetError(f"{folder}: missing; an ImageFolder dataset needs {' and '.join(SPLITS)} folders")
    try:
        listing = ImageFolder(str(folder), loader=lambda path: path)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DatasetError(f"{folder}: {exc}") from None
    files = [path for path, _ in listing.samples]
    labels = np.array([label for _, label in listing.samples], np.int64)
    return list(listing.classes), files, labels


def load_imagefolder(
    root: str | os.PathLike, size: int
) -> tuple[ImageFolderImages, torch.Tensor, ImageFolderImages, torch.Tensor, list[str]]:
    """Training and held-out images and labels of an ImageFolder dataset, and its classes."""
    classes, train_files, train_labels = list_split(root, "train")
    val_classes, val_files, val_labels = list_split(root, "val")
    if val_classes != classes:
        extra = sorted(set(val_classes) ^ set(classes))
        raise DatasetError(
            f"{root}: train and val hold different class folders ({', '.join(extra[:5])} in only one); "
            "the class indices would not match"
        )
    return (
        ImageFolderImages(train_files, size),
        torch.from_numpy(train_labels),
        ImageFolderImages(val_files, size),
        torch.from_numpy(val_labels),
        classes,
    )
