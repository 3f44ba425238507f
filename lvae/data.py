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


class DatasetNotFoundError(FileNotFoundError):
    """The dataset files are neither on disk nor downloadable."""


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

    def train_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """One epoch of shuffled, freshly binarized training batches.

        The incomplete last batch is dropped (batch norm needs full batches), unless
        the set is smaller than one batch.
        """
        n = self.train.shape[0]
        order = torch.randperm(n, device=self.train.device)
        for start in range(0, max(n - batch_size + 1, 1), batch_size):
            yield self.binarized(self.train[order[start:start + batch_size]])

    def fixed_train_subset(self, n: int, seed: int) -> torch.Tensor:
        """The first n training images, binarized once with `seed` (for train-set bounds)."""
        generator = torch.Generator().manual_seed(seed)
        return self.binarized(self.train[:n].cpu(), generator).to(self.train.device)


def default_data_root() -> str:
    """$LVAE_DATA_ROOT if set, else ./data (where torchvision downloads to)."""
    return os.environ.get(DATA_ROOT_ENV, "data")


def _read_mnist_split(root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import MNIST  # imported here: torchvision is slow to import

    raw = root / "MNIST" / "raw"
    try:
        split = MNIST(str(root), train=train, download=download)
    except Exception as error:  # torchvision raises RuntimeError or URLError, depending on the step
        raise DatasetNotFoundError(
            f"MNIST was not found in {raw} (looked for train-images-idx3-ubyte, "
            f"train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte)"
            + (f" and could not be downloaded ({error})" if download else " and data.download=false")
            + f". Put the files there, point data.root (or ${DATA_ROOT_ENV}) at the folder that "
            "holds MNIST/raw, or run once with internet access and data.download=true."
        ) from error
    images, labels = split.data, split.targets
    if images.ndim != 3 or tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE) or len(images) != len(labels):
        raise DatasetNotFoundError(
            f"MNIST files in {raw} have unexpected shapes: images {tuple(images.shape)}, "
            f"labels {tuple(labels.shape)}; expected (N, 28, 28) images and N labels."
        )
    return images, labels


def load_mnist(cfg: DictConfig, device: torch.device) -> ImageData:
    """MNIST from cfg.root (torchvision layout: <root>/MNIST/raw), held on `device`."""
    root = Path(cfg.root).expanduser()
    train_images, train_labels = _read_mnist_split(root, True, cfg.download)
    test_images, test_labels = _read_mnist_split(root, False, cfg.download)
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
