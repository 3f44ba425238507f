"""Image datasets as tensors on the compute device: `data=<name>` picks one of DATASETS.

A whole dataset lives on the device as one tensor; a training batch is an index into it, drawn
afresh (re-binarized or dequantized) on the fly. docs/datasets.md says where each dataset comes
from, how to place it offline and how stored pixels become the model's x.

    images.py    ImageData, the pixel kinds, the fixed random order of evaluation subsets
    files.py     finding, downloading and reading files (every failure says where it looked)
    idx.py, binarized_mnist.py, omniglot.py, norb.py   one file format each
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lvae.data.binarized_mnist import load_binarized_mnist
from lvae.data.errors import DatasetError, DatasetInvalidError, DatasetNotFoundError, SubsetError
from lvae.data.idx import load_fashion_mnist, load_mnist
from lvae.data.images import BINARY, GREY_LEVELS, INTENSITIES, ImageData, StoredImages, image_data
from lvae.data.norb import load_norb
from lvae.data.omniglot import load_omniglot
from lvae.data.settings import DataConfig

__all__ = ["DATASETS", "Dataset", "DatasetError", "DatasetInvalidError", "DatasetNotFoundError", "ImageData",
           "SubsetError", "load_dataset"]


@dataclass(frozen=True)
class Dataset:
    """A choice of data=<name>: its loader, and how it stores pixels (GREY_LEVELS, BINARY or INTENSITIES),
    which decides what data.binarize and data.dequantize can do (lvae.run.config.validate checks it)."""

    load: Callable[[DataConfig], StoredImages]  # reads the files (data.root, data.download)
    pixels: str
    title: str  # as a report names it


DATASETS = {
    "mnist": Dataset(load_mnist, GREY_LEVELS, "MNIST"),
    "fashion_mnist": Dataset(load_fashion_mnist, GREY_LEVELS, "Fashion-MNIST"),
    "binarized_mnist": Dataset(load_binarized_mnist, BINARY, "binarized MNIST (Larochelle)"),
    "omniglot": Dataset(load_omniglot, INTENSITIES, "OMNIGLOT"),
    "norb": Dataset(load_norb, GREY_LEVELS, "small NORB"),
}


def load_dataset(cfg: DataConfig, device: torch.device) -> ImageData:
    """The dataset data.name, as the model sees it (lvae/data/images.py: image_data), on `device`."""
    dataset = DATASETS[cfg.name]
    return image_data(cfg, device, dataset.pixels, dataset.load(cfg))
