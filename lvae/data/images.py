"""A dataset in memory (ImageData), how stored pixels become the model's x, and the fixed random order
from which evaluation subsets are taken (docs/datasets.md)."""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass, replace
from typing import Iterator, NamedTuple, Optional

import torch

from lvae.data.errors import SubsetError
from lvae.data.settings import DataConfig

IMAGE_SIZE = 28  # MNIST, Fashion-MNIST, binarized MNIST and OMNIGLOT
DEQUANTIZATION_SCALE = 256  # x = (pixel + u) / 256 maps the 256 grey levels onto [0, 1)
ORDER_SEED = 0  # the fixed shuffle of datasets whose files are sorted (see fixed_order)
# The key of the one fixed random order from which every evaluation subset is taken (eval.test_subset, the
# training-set bound's eval.train_subset): see fixed_permutation. A constant, independent of every setting of a
# run (its seed, model, K, device), so that every run scores the same images.
SUBSET_ORDER_KEY = b"lvae-subset-order-1"


@functools.lru_cache(maxsize=8)
def _hash_order(n: int) -> tuple[int, ...]:
    keys = [hashlib.blake2b(i.to_bytes(8, "little"), digest_size=8, key=SUBSET_ORDER_KEY).digest() for i in range(n)]
    return tuple(sorted(range(n), key=keys.__getitem__))


def fixed_permutation(n: int) -> torch.Tensor:
    """0..n-1 ordered by a keyed hash (BLAKE2b, key SUBSET_ORDER_KEY) of each index: a fixed random order.

    Its first N entries are a uniform random sample of N of the n images, and the first N of it contain
    the first M < N. Hash-sorted rather than torch.randperm so that the order is the same on every
    machine and with every version of torch.
    """
    return torch.tensor(_hash_order(n), dtype=torch.long)


def bits_per_dim(log_density, dim: int, scale: float = 1.0):
    """A log-density in nats of x = y / scale, as bits per dimension of y.

    y are the data the model stands for: 0/1 pixels (scale 1, x = y), or 256-level grey
    values plus dequantization noise (scale 256). Since p_y(y) = p_x(x) / scale^D,
        bits/dim = -(log p_x(x) - D log scale) / (D ln 2).
    A uniform density on [0, 1]^D (log p_x = 0) is exactly 8 bits/dim with scale 256.
    Works on floats and tensors.
    """
    return -(log_density - dim * math.log(scale)) / (dim * math.log(2))


@dataclass
class ImageData:
    train: torch.Tensor  # (N, D) float: intensities in [0, 1], or pixel / 256 when dequantized
    train_labels: torch.Tensor  # (N,); -1 where the dataset has no labels
    test: torch.Tensor  # (M, D): as the model sees it, binarized / dequantized once
    test_labels: torch.Tensor  # (M,)
    binarize: bool  # training batches are Bernoulli(intensity) draws
    dequantize: bool = False  # training batches get fresh uniform noise u / 256
    already_binary: bool = False  # the stored pixels are 0/1 (static binarization)

    @property
    def dim(self) -> int:
        return self.train.shape[1]

    def to(self, device: torch.device) -> "ImageData":
        return replace(self, **{name: getattr(self, name).to(device)
                                for name in ("train", "train_labels", "test", "test_labels")})

    def draw(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x as the model sees it: a fresh binarization or dequantization of `images`, else `images`.

        Both transform one uniform draw u ~ U[0, 1)^D: binarized, x = 1{u < p}, a Bernoulli(p) draw. On the
        CPU it is torch.bernoulli's, bit for bit and from the same RNG stream, in a third of its time or less
        (torch.rand fills a tensor in vectorised blocks; torch.bernoulli draws one element at a time)."""
        if not (self.binarize or self.dequantize):
            return images
        u = torch.rand(images.shape, generator=generator, dtype=images.dtype, device=images.device)
        return (u < images).to(images.dtype) if self.binarize else images + u / DEQUANTIZATION_SCALE

    def bits_per_dim(self, log_density):
        """log p(x) in nats -> bits per dimension of the discrete pixels, or None when x is
        continuous without dequantization (its density is no probability of pixels)."""
        if self.dequantize:
            return bits_per_dim(log_density, self.dim, DEQUANTIZATION_SCALE)
        if self.binarize or self.already_binary:
            return bits_per_dim(log_density, self.dim)
        return None

    def batches_per_epoch(self, batch_size: int) -> int:
        """The incomplete last batch is dropped (batch norm needs full batches),
        unless the set is smaller than one batch."""
        return max(1, len(self.train) // batch_size)

    def epoch_order(self) -> torch.Tensor:
        """A fresh shuffle of the training set (one per epoch)."""
        return torch.randperm(len(self.train), device=self.train.device)

    def train_batch(self, order: torch.Tensor, index: int, batch_size: int) -> torch.Tensor:
        """Batch `index` of an epoch's `order`, freshly binarized or dequantized."""
        return self.draw(self.train[order[index * batch_size:(index + 1) * batch_size]])

    def train_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """One epoch of shuffled, freshly drawn training batches."""
        order = self.epoch_order()
        for index in range(self.batches_per_epoch(batch_size)):
            yield self.train_batch(order, index, batch_size)

    def test_subset(self, n: Optional[int]) -> torch.Tensor:
        """Indices into the test set of eval.test_subset=n images: the first n of fixed_permutation (a fixed
        uniform random sample, the same for every run), all of them in that order for None."""
        size = len(self.test)
        if n is not None and not 0 < n <= size:
            raise SubsetError(f"eval.test_subset={n} is not allowed: the test set has {size:,} images, so "
                              f"eval.test_subset must be an integer from 1 to {size}, or null for all of them.")
        return fixed_permutation(size)[:n]

    def test_sample(self, n: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The indices (`test_subset`) and the images of eval.test_subset=n: what every test number is a mean of."""
        indices = self.test_subset(n)
        return indices, self.test[indices.to(self.test.device)]

    def train_subset_indices(self, n: int) -> torch.Tensor:
        """Indices of the training-set bound's n images (eval.train_subset; all when n is larger): the first
        n of fixed_permutation of the training set, as for the test set."""
        return fixed_permutation(len(self.train))[:n]

    def fixed_train_subset(self, indices: torch.Tensor, seed: int) -> torch.Tensor:
        """The training images `indices`, drawn once with `seed` (for train-set bounds)."""
        generator = torch.Generator().manual_seed(seed)
        return self.draw(self.train[indices.to(self.train.device)].cpu(), generator).to(self.train.device)


# How a dataset stores its pixels (Dataset.pixels): what data.binarize / data.dequantize can do with them.
GREY_LEVELS = "grey levels"  # 8-bit, 0-255: binarize (pixel / intensity_scale), dequantize, or pixel / scale as is
BINARY = "binary"  # stored 0/1: used as stored
INTENSITIES = "intensities"  # floats in [0, 1]: binarize, or as is; no dequantization (no 256 levels)
# Stored value / scale = intensity in [0, 1]; grey levels: data.intensity_scale.
PIXEL_SCALE = {BINARY: 1, INTENSITIES: 1}


class StoredImages(NamedTuple):
    """A dataset as its files store it: (N, H, W) images, in the dataset's pixel kind, and (N,) labels."""

    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor


def image_data(cfg: DataConfig, device: torch.device, pixels: str, stored: StoredImages) -> ImageData:
    """ImageData from (N, H, W) images stored as DATASETS[cfg.name].pixels says.

    Keeps the first data.train_subset training images, scales the pixels (pixel / data.intensity_scale,
    pixel / 256 when dequantized, intensities and 0/1 as stored) and draws the test set
    once with data.binarization_seed, on the CPU so that it is the same on every device.
    Which settings fit which pixels is checked by lvae.run.config.validate.
    """
    train, train_labels, test, test_labels = stored
    if cfg.train_subset is not None:
        train, train_labels = train[: cfg.train_subset], train_labels[: cfg.train_subset]
    dequantize = cfg.dequantize
    if dequantize:
        scale = DEQUANTIZATION_SCALE
    elif pixels == GREY_LEVELS:
        scale = cfg.intensity_scale
    else:
        scale = PIXEL_SCALE[pixels]
    train_x, test_x = (images.reshape(len(images), -1).float() / scale for images in (train, test))
    data = ImageData(train_x, train_labels, test_x, test_labels, cfg.binarize, dequantize, pixels == BINARY)
    data.test = data.draw(data.test, torch.Generator().manual_seed(cfg.binarization_seed))
    return data.to(device)


def fixed_order(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images and labels shuffled alike with the fixed ORDER_SEED.

    Neither chardata.mat nor small NORB's files promise a random order, and a prefix
    (data.train_subset, eval.test_subset, the training-set bound's first images) of a file
    sorted by class would miss classes; shuffled, every prefix is a random sample. The LVAE
    authors shuffle both splits too; the order does not change a full-set score.
    """
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(ORDER_SEED))
    return images[order], labels[order]


