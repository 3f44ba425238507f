"""MNIST and Fashion-MNIST: IDX files (LeCun's format), in torchvision's layout."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

from lvae.data.errors import DatasetInvalidError
from lvae.data.files import DATA_ROOT_ENV, data_root, find_files, invalid_file, plain_or_gz, read_all, warn_if_partial
from lvae.data.images import IMAGE_SIZE, StoredImages
from lvae.data.settings import DataConfig

IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_NAMES = [name for pair in IDX_FILES.values() for name in pair]


def _read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An IDX file of unsigned bytes with `ndim` dimensions, plain or gzipped, checked byte for byte."""
    content = read_all(path, "IDX")
    magic = bytes([0, 0, 0x08, ndim])  # unsigned bytes, ndim dimensions
    header = 4 + 4 * ndim
    if len(content) >= 4 and content[:4] != magic:
        raise invalid_file(path, "IDX", f"its magic number is {content[:4].hex()}, expected {magic.hex()} for {ndim}-D "
                                    "unsigned bytes", truncated=False)
    if len(content) < header:
        raise invalid_file(path, "IDX", f"{len(content)} bytes, shorter than the {header}-byte header", truncated=True)
    dims = [int.from_bytes(content[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims)
    if len(content) != expected:
        raise invalid_file(path, "IDX", f"{len(content)} bytes where the header {dims} announces {expected}",
                       truncated=len(content) < expected)
    return torch.frombuffer(bytearray(content[header:]), dtype=torch.uint8).view(*dims)


def _read_idx_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 28, 28) uint8 images and (N,) labels 0-9 of split 'train' or 'test'."""
    image_name, label_name = IDX_FILES[split]
    images = _read_idx(plain_or_gz(folder, image_name), 3)
    labels = _read_idx(plain_or_gz(folder, label_name), 1).long()
    if (tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE) or len(images) != len(labels) or len(labels) == 0
            or labels.max() > 9):
        values = f" in [{labels.min()}, {labels.max()}]" if len(labels) else ""
        raise DatasetInvalidError(
            f"{image_name} and {label_name} in {folder} do not fit together: images {tuple(images.shape)}, labels "
            f"{tuple(labels.shape)}{values}; expected (N, 28, 28) images and N > 0 labels in 0-9."
        )
    return images, labels


def _load_idx_dataset(cfg: DataConfig, dataset: str, folders: list[Path],
                      fetch: Callable[[], None], fix: str, full_sizes: tuple[int, int]) -> StoredImages:
    folder = find_files(dataset, folders, IDX_NAMES, cfg.download, fetch, fix,
                         lambda folder, name: plain_or_gz(folder, name) is not None)
    train, test = _read_idx_split(folder, "train"), _read_idx_split(folder, "test")
    for (images, _), split, full in zip((train, test), ("train", "test"), full_sizes):
        warn_if_partial(f"{dataset} in {folder}", split, len(images), full)
    return StoredImages(*train, *test)


def load_mnist(cfg: DataConfig) -> StoredImages:
    """MNIST: LeCun's 60,000 training and 10,000 test images, from <root>/MNIST/raw (torchvision's layout)."""
    root = data_root(cfg)

    def fetch() -> None:
        from torchvision.datasets import MNIST  # imported here: torchvision is slow to import
        MNIST(str(root), train=True, download=True)

    return _load_idx_dataset(
        cfg, "MNIST", [root / "MNIST" / "raw"], fetch,
        f"Put the four files there, point data.root (or ${DATA_ROOT_ENV}) at the folder that holds MNIST/raw, "
        "or run once with internet access and data.download=true.", (60_000, 10_000))


DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def load_fashion_mnist(cfg: DataConfig) -> StoredImages:
    """Fashion-MNIST: 60,000 training and 10,000 test images (10 clothing classes), the official split.

    Looked for in <root>/FashionMNIST/raw (torchvision's layout, files plain or .gz), then in
    /usr/share/datasets/fashion-mnist (`apt-get install dataset-fashion-mnist`); downloaded by
    torchvision into <root>/FashionMNIST/raw when neither has it and data.download=true.
    """
    root = data_root(cfg)

    def fetch() -> None:
        from torchvision.datasets import FashionMNIST
        FashionMNIST(str(root), train=True, download=True)

    return _load_idx_dataset(
        cfg, "Fashion-MNIST", [root / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST], fetch,
        f"Install the Debian package (apt-get install dataset-fashion-mnist), put the four files (plain or .gz) "
        f"into <data.root>/FashionMNIST/raw (data.root or ${DATA_ROOT_ENV}), or run once with internet access "
        "and data.download=true.", (60_000, 10_000))


