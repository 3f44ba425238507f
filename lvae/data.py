"""MNIST as tensors on the compute device, with dynamic binarization (PAPER.md §4).

The whole dataset lives on the device as one tensor of pixel intensities in
[0, 1]; a training batch is an index into it, re-binarized on the fly, so every
epoch sees a fresh binarization and no per-image DataLoader work runs. The test
set is binarized once with a fixed seed, so every run scores the same binary images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from omegaconf import DictConfig

DATA_ROOT_ENV = "LVAE_DATA_ROOT"
IMAGE_SIZE = 28


class DatasetError(RuntimeError):
    """The dataset cannot be used; the message says where it looked and what to do."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset files are neither on disk nor downloadable."""


class DatasetInvalidError(DatasetError):
    """A dataset file is there but is not what it should be (truncated, wrong format)."""


@dataclass
class ImageData:
    train: torch.Tensor  # (N, D) float intensities in [0, 1]
    train_labels: torch.Tensor  # (N,)
    test: torch.Tensor  # (M, D): binarized once (binary data) or intensities
    test_labels: torch.Tensor  # (M,)
    binarize: bool

    @property
    def dim(self) -> int:
        return self.train.shape[1]

    def binarized(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels drawn as Bernoulli(intensity) when the data are binary, else unchanged."""
        return torch.bernoulli(images, generator=generator) if self.binarize else images

    def batches_per_epoch(self, batch_size: int) -> int:
        """The incomplete last batch is dropped (batch norm needs full batches),
        unless the set is smaller than one batch."""
        return max(1, len(self.train) // batch_size)

    def epoch_order(self) -> torch.Tensor:
        """A fresh shuffle of the training set (one per epoch)."""
        return torch.randperm(len(self.train), device=self.train.device)

    def train_batch(self, order: torch.Tensor, index: int, batch_size: int) -> torch.Tensor:
        """Batch `index` of an epoch's `order`, freshly binarized."""
        return self.binarized(self.train[order[index * batch_size:(index + 1) * batch_size]])

    def train_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """One epoch of shuffled, freshly binarized training batches."""
        order = self.epoch_order()
        for index in range(self.batches_per_epoch(batch_size)):
            yield self.train_batch(order, index, batch_size)

    def fixed_train_subset(self, n: int, seed: int) -> torch.Tensor:
        """The first n training images, binarized once with `seed` (for train-set bounds)."""
        generator = torch.Generator().manual_seed(seed)
        return self.binarized(self.train[:n].cpu(), generator).to(self.train.device)


def default_data_root() -> str:
    """$LVAE_DATA_ROOT if set, else ./data (where torchvision downloads to)."""
    return os.environ.get(DATA_ROOT_ENV, "data")


MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _ensure_mnist_files(root: Path, download: bool) -> Path:
    """The folder root/MNIST/raw with all four files, downloading them if allowed."""
    raw = root / "MNIST" / "raw"
    names = [name for pair in MNIST_FILES.values() for name in pair]
    missing = [name for name in names if not (raw / name).is_file()]
    if not missing:
        return raw
    reason = "data.download=false"
    if download:
        from torchvision.datasets import MNIST  # imported here: torchvision is slow to import

        try:
            MNIST(str(root), train=True, download=True)
            return raw
        except Exception as error:  # no network, HTTP errors, checksum mismatch
            reason = f"the download failed ({type(error).__name__}: {error})"
    raise DatasetNotFoundError(
        f"MNIST is missing {', '.join(missing)} in {raw}, and {reason}. Put the four files there, point "
        f"data.root (or ${DATA_ROOT_ENV}) at the folder that holds MNIST/raw, or run once with internet "
        "access and data.download=true."
    )


def _read_mnist_split(raw: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    image_file, label_file = (raw / name for name in MNIST_FILES[train])
    tensors = []
    for path, read in ((image_file, read_image_file), (label_file, read_label_file)):
        try:
            tensors.append(read(str(path)))
        except Exception as error:  # torchvision asserts on the header and the byte count
            raise DatasetInvalidError(
                f"{path} is not a valid IDX file ({type(error).__name__}{': ' + str(error) if str(error) else ''}; "
                f"{path.stat().st_size} bytes): it may be truncated. Delete it and download it again."
            ) from error
    images, labels = tensors
    if (images.ndim != 3 or tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE) or len(images) != len(labels)
            or labels.min() < 0 or labels.max() > 9):
        raise DatasetInvalidError(
            f"MNIST files in {raw} do not fit together: images {tuple(images.shape)}, labels "
            f"{tuple(labels.shape)} in [{labels.min()}, {labels.max()}]; expected (N, 28, 28) images "
            "and N labels in 0-9."
        )
    return images, labels


def load_mnist(cfg: DictConfig, device: torch.device) -> ImageData:
    """MNIST from cfg.root (torchvision layout: <root>/MNIST/raw), held on `device`."""
    raw = _ensure_mnist_files(Path(cfg.root).expanduser(), cfg.download)
    train_images, train_labels = _read_mnist_split(raw, True)
    test_images, test_labels = _read_mnist_split(raw, False)
    if cfg.train_subset is not None:
        train_images, train_labels = train_images[: cfg.train_subset], train_labels[: cfg.train_subset]
    train = train_images.reshape(len(train_images), -1).float() / 255.0
    test = test_images.reshape(len(test_images), -1).float() / 255.0
    if cfg.binarize:  # once, on the CPU, so that the binary test set is the same on every device
        test = torch.bernoulli(test, generator=torch.Generator().manual_seed(cfg.binarization_seed))
    return ImageData(train.to(device), train_labels.to(device), test.to(device), test_labels.to(device), cfg.binarize)


LOADERS = {"mnist": load_mnist}


def load_dataset(cfg: DictConfig, device: torch.device) -> ImageData:
    return LOADERS[cfg.name](cfg, device)
