"""Image datasets as tensors on the compute device (docs/method.md, section 4; docs/datasets.md).

A whole dataset lives on the device as one tensor; a training batch is an index
into it, drawn afresh on the fly (re-binarized, or dequantized), so every epoch sees
new binary / continuous values and no per-image DataLoader work runs. The test set
is drawn once, on the CPU, with the fixed seed `data.binarization_seed`, so every
run scores the same test images.

Datasets (`data=<name>`, the registry DATASETS at the end of this file; docs/datasets.md
says where each comes from and how to place it offline). A loader checks what it reads
(format, shapes, values, counts) and, when files are missing, says where it looked:

    mnist            LeCun's 60,000 train / 10,000 test, 28x28, <root>/MNIST/raw (torchvision's layout).
    fashion_mnist    Zalando's 60,000 train / 10,000 test, same IDX format; <root>/FashionMNIST/raw,
                     then the Debian package's /usr/share/datasets/fashion-mnist.
    binarized_mnist  the static binarization distributed by Larochelle: 50,000 train / 10,000 valid /
                     10,000 test, already 0/1; data.merge_valid=true trains on train+valid (60,000).
    omniglot         Burda et al.'s 28x28 OMNIGLOT (the IWAE repository's chardata.mat), the paper's:
                     24,345 train / 8,070 test, grey intensities in [0, 1]; <root>/omniglot.
    norb             LeCun et al.'s small NORB, both cameras of 24,300 stereo pairs per split (48,600
                     train / 48,600 test images), 96x96 shrunk to 32x32; <root>/smallnorb.

How stored pixels become the model's x (`data.binarize`, `data.dequantize`):

    dynamic binarization   x ~ Bernoulli(intensity), fresh for every training batch (intensity =
                           pixel / data.intensity_scale for 8-bit grey levels: 255, as torchvision and
                           Burda et al., or 256, as the LVAE authors' data, where a fully-on pixel is 0.996)
    dequantization         x = (pixel + u) / 256, u ~ U(0, 1)^D fresh for every training batch: a
                           density on [0, 1]^D; `bits_per_dim` turns its log-density into bits per
                           dimension of the 256-level pixels (8-bit grey levels only)
    already binary         x = the stored 0/1 pixel (binarized_mnist)
    neither                x = intensity (continuous, but a density of it is not a probability
                           of the discrete pixels: no bits/dim)
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import math
import os
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional

import numpy as np
import torch
from omegaconf import DictConfig

log = logging.getLogger(__name__)

DATA_ROOT_ENV = "LVAE_DATA_ROOT"
IMAGE_SIZE = 28  # MNIST, Fashion-MNIST, binarized MNIST and OMNIGLOT
DEQUANTIZATION_SCALE = 256  # x = (pixel + u) / 256 maps the 256 grey levels onto [0, 1)
ORDER_SEED = 0  # the fixed shuffle of datasets whose files are sorted (see _fixed_order)
# The key of the one fixed random order from which every evaluation subset is taken (eval.test_subset, the
# training-set bound's eval.train_subset): see fixed_permutation. A constant, independent of every setting of a
# run (its seed, model, K, device), so that every run scores the same images.
SUBSET_ORDER_KEY = b"lvae-subset-order-1"
INTENSITY_SCALES = (255, 256)  # data.intensity_scale: grey level / scale = Bernoulli probability (docs/datasets.md)


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


class DatasetError(RuntimeError):
    """The dataset cannot be used; the message says where it looked and what to do."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset files are neither on disk nor downloadable."""


class SubsetError(DatasetError, ValueError):
    """An evaluation subset that the dataset cannot give: more images than it has."""


class DatasetInvalidError(DatasetError):
    """A dataset file is there but is not what it should be (truncated, wrong format)."""


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


def default_data_root() -> str:
    """$LVAE_DATA_ROOT if set, else ./data (where torchvision downloads to)."""
    return os.environ.get(DATA_ROOT_ENV, "data")


# ---------------------------------------------------------------- shared helpers


def _option(cfg: DictConfig, key: str, default):
    """cfg.<key>, or `default` for a config written before the key existed (old run directories)."""
    return cfg.get(key, default)


def _root(cfg: DictConfig) -> Path:
    """data.root as an absolute path: messages name the folder checked, whatever the working directory."""
    return Path(cfg.root).expanduser().absolute()


# How a dataset stores its pixels (Dataset.pixels): what data.binarize / data.dequantize can do with them.
GREY_LEVELS = "grey levels"  # 8-bit, 0-255: binarize (pixel / intensity_scale), dequantize, or pixel / scale as is
BINARY = "binary"  # stored 0/1: used as stored
INTENSITIES = "intensities"  # floats in [0, 1]: binarize, or as is; no dequantization (no 256 levels)
PIXEL_SCALE = {BINARY: 1, INTENSITIES: 1}  # stored value / scale = intensity in [0, 1]; grey levels: data.intensity_scale


def _image_data(cfg: DictConfig, device: torch.device, train: torch.Tensor, train_labels: torch.Tensor,
                test: torch.Tensor, test_labels: torch.Tensor) -> ImageData:
    """ImageData from (N, H, W) images stored as DATASETS[cfg.name].pixels says.

    Keeps the first data.train_subset training images, scales the pixels (pixel / data.intensity_scale,
    pixel / 256 when dequantized, intensities and 0/1 as stored) and draws the test set
    once with data.binarization_seed, on the CPU so that it is the same on every device.
    Which settings fit which pixels is checked by lvae.run.config.validate.
    """
    if cfg.train_subset is not None:
        train, train_labels = train[: cfg.train_subset], train_labels[: cfg.train_subset]
    pixels = DATASETS[cfg.name].pixels
    dequantize = _option(cfg, "dequantize", False)
    if dequantize:
        scale = DEQUANTIZATION_SCALE
    elif pixels == GREY_LEVELS:
        scale = _option(cfg, "intensity_scale", INTENSITY_SCALES[0])
    else:
        scale = PIXEL_SCALE[pixels]
    train_x, test_x = (images.reshape(len(images), -1).float() / scale for images in (train, test))
    data = ImageData(train_x, train_labels, test_x, test_labels, cfg.binarize, dequantize, pixels == BINARY)
    data.test = data.draw(data.test, torch.Generator().manual_seed(cfg.binarization_seed))
    return data.to(device)


def _fixed_order(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images and labels shuffled alike with the fixed ORDER_SEED.

    Neither chardata.mat nor small NORB's files promise a random order, and a prefix
    (data.train_subset, eval.test_subset, the training-set bound's first images) of a file
    sorted by class would miss classes; shuffled, every prefix is a random sample. The LVAE
    authors shuffle both splits too; the order does not change a full-set score.
    """
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(ORDER_SEED))
    return images[order], labels[order]


def _missing_error(dataset: str, where: dict[Path, list[str]], download: bool, download_error: Exception | None,
                   fix: str) -> DatasetNotFoundError:
    """DatasetNotFoundError naming every place looked in and what was missing there."""
    looked = "; ".join(f"{folder}{'' if folder.is_dir() else ' (no such folder)'}: missing {', '.join(names)}"
                       for folder, names in where.items())
    reason = ("Nothing was downloaded: data.download=false" if not download
              else f"The download failed ({type(download_error).__name__}: {download_error})")
    return DatasetNotFoundError(f"{dataset} not found. Looked in {looked}. {reason}. {fix}")


def _folders_to_create(folders: list[Path]) -> list[Path]:
    """The folders among `folders` and their parents that do not exist yet, deepest first."""
    absent = set()
    for folder in folders:
        for path in (folder, *folder.parents):
            if path.exists():
                break
            absent.add(path)
    return sorted(absent, key=lambda path: len(path.parts), reverse=True)


def _find_files(dataset: str, folders: list[Path], names: list[str], download: bool,
                fetch: Callable[[], None], fix: str, exists: Callable[[Path, str], bool]) -> Path:
    """The first of `folders` that holds all `names`, after fetch() when none does and download is true.

    A fetch that fails leaves no empty folder behind: only the files it completed.
    """
    def missing() -> dict[Path, list[str]]:
        return {folder: [name for name in names if not exists(folder, name)] for folder in folders}

    found = [folder for folder, lacking in missing().items() if not lacking]
    download_error = None
    if not found and download:
        new_folders = _folders_to_create(folders)
        try:
            fetch()
        except Exception as error:  # no network, HTTP errors, checksum mismatch
            download_error = error
        for folder in new_folders:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        found = [folder for folder, lacking in missing().items() if not lacking]
        if not found and download_error is None:
            download_error = RuntimeError("it ran but left the files missing")
    if not found:
        raise _missing_error(dataset, missing(), download, download_error, fix)
    return found[0]


def _digest(path: Path, algorithm: str, prefix: bytes = b"") -> str:
    """The hex digest of prefix + the file's bytes, read in chunks."""
    digest = hashlib.new(algorithm, prefix)
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, path: Path, checksum: Optional[Callable[[Path], str]] = None,
              expected: Optional[str] = None) -> None:
    """url -> path, through path.part: an interrupted, failed or corrupt download leaves no file behind.

    checksum(file) must give `expected` (when given); nothing is renamed into place otherwise.
    """
    from torchvision.datasets.utils import download_url  # imported here: torchvision is slow to import

    part = path.with_name(f"{path.name}.part")
    part.unlink(missing_ok=True)  # download_url would take a leftover of an interrupted download for complete
    try:
        download_url(url, str(path.parent), part.name)
        if checksum is not None and (found := checksum(part)) != expected:
            raise DatasetInvalidError(f"{url} arrived damaged: checksum {found}, expected {expected}")
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(path)


def _plain_or_gz(folder: Path, name: str) -> Optional[Path]:
    """folder/name, or folder/name.gz (as downloaded), whichever exists."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def _invalid(path: Path, kind: str, problem: str, truncated: bool) -> DatasetInvalidError:
    """The error for a damaged file: "may be truncated" only when it is shorter than it should be."""
    advice = ("it may be truncated. Delete it and download it again" if truncated
              else "it is not the file expected here. Put the original file there (or delete it and download it "
                   "again)")
    return DatasetInvalidError(f"{path} is not a valid {kind} file ({problem}; {path.stat().st_size} bytes on disk): "
                               f"{advice}.")


def _read_all(path: Path, kind: str) -> bytes:
    """The file's bytes, decompressed when it ends in .gz."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as error:
        raise _invalid(path, kind, f"not a complete gzip file: {error}", truncated=True) from error


# ---------------------------------------------------------------- IDX files (MNIST, Fashion-MNIST)

IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_NAMES = [name for pair in IDX_FILES.values() for name in pair]


def _read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An IDX file of unsigned bytes with `ndim` dimensions, plain or gzipped, checked byte for byte."""
    content = _read_all(path, "IDX")
    magic = bytes([0, 0, 0x08, ndim])  # unsigned bytes, ndim dimensions
    header = 4 + 4 * ndim
    if len(content) >= 4 and content[:4] != magic:
        raise _invalid(path, "IDX", f"its magic number is {content[:4].hex()}, expected {magic.hex()} for {ndim}-D "
                                    "unsigned bytes", truncated=False)
    if len(content) < header:
        raise _invalid(path, "IDX", f"{len(content)} bytes, shorter than the {header}-byte header", truncated=True)
    dims = [int.from_bytes(content[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims)
    if len(content) != expected:
        raise _invalid(path, "IDX", f"{len(content)} bytes where the header {dims} announces {expected}",
                       truncated=len(content) < expected)
    return torch.frombuffer(bytearray(content[header:]), dtype=torch.uint8).view(*dims)


def _read_idx_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 28, 28) uint8 images and (N,) labels 0-9 of split 'train' or 'test'."""
    image_name, label_name = IDX_FILES[split]
    images = _read_idx(_plain_or_gz(folder, image_name), 3)
    labels = _read_idx(_plain_or_gz(folder, label_name), 1).long()
    if (tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE) or len(images) != len(labels) or len(labels) == 0
            or labels.max() > 9):
        values = f" in [{labels.min()}, {labels.max()}]" if len(labels) else ""
        raise DatasetInvalidError(
            f"{image_name} and {label_name} in {folder} do not fit together: images {tuple(images.shape)}, labels "
            f"{tuple(labels.shape)}{values}; expected (N, 28, 28) images and N > 0 labels in 0-9."
        )
    return images, labels


def _warn_if_partial(dataset: str, split: str, count: int, full: int) -> None:
    if count != full:
        log.warning("%s %s has %d images, the full set %d", dataset, split, count, full)


def _load_idx_dataset(cfg: DictConfig, device: torch.device, dataset: str, folders: list[Path],
                      fetch: Callable[[], None], fix: str, full_sizes: tuple[int, int]) -> ImageData:
    folder = _find_files(dataset, folders, IDX_NAMES, cfg.download, fetch, fix,
                         lambda folder, name: _plain_or_gz(folder, name) is not None)
    train, test = _read_idx_split(folder, "train"), _read_idx_split(folder, "test")
    for (images, _), split, full in zip((train, test), ("train", "test"), full_sizes):
        _warn_if_partial(f"{dataset} in {folder}", split, len(images), full)
    return _image_data(cfg, device, *train, *test)


def load_mnist(cfg: DictConfig, device: torch.device) -> ImageData:
    """MNIST: LeCun's 60,000 training and 10,000 test images, from <root>/MNIST/raw (torchvision's layout)."""
    root = _root(cfg)

    def fetch() -> None:
        from torchvision.datasets import MNIST  # imported here: torchvision is slow to import
        MNIST(str(root), train=True, download=True)

    return _load_idx_dataset(
        cfg, device, "MNIST", [root / "MNIST" / "raw"], fetch,
        f"Put the four files there, point data.root (or ${DATA_ROOT_ENV}) at the folder that holds MNIST/raw, "
        "or run once with internet access and data.download=true.", (60_000, 10_000))


DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def load_fashion_mnist(cfg: DictConfig, device: torch.device) -> ImageData:
    """Fashion-MNIST: 60,000 training and 10,000 test images (10 clothing classes), the official split.

    Looked for in <root>/FashionMNIST/raw (torchvision's layout, files plain or .gz), then in
    /usr/share/datasets/fashion-mnist (`apt-get install dataset-fashion-mnist`); downloaded by
    torchvision into <root>/FashionMNIST/raw when neither has it and data.download=true.
    """
    root = _root(cfg)

    def fetch() -> None:
        from torchvision.datasets import FashionMNIST
        FashionMNIST(str(root), train=True, download=True)

    return _load_idx_dataset(
        cfg, device, "Fashion-MNIST", [root / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST], fetch,
        f"Install the Debian package (apt-get install dataset-fashion-mnist), put the four files (plain or .gz) "
        f"into <data.root>/FashionMNIST/raw (data.root or ${DATA_ROOT_ENV}), or run once with internet access "
        "and data.download=true.", (60_000, 10_000))


# ---------------------------------------------------------------- static binarized MNIST (.amat text)

BINARIZED_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{}.amat"
BINARIZED_MNIST_SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}


def _read_amat(path: Path, values_per_line: int = IMAGE_SIZE * IMAGE_SIZE) -> torch.Tensor:
    """(N, 784) uint8 0/1 from text with one image a line: 784 values 0 or 1 separated by spaces."""
    text = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    is_value = (text == ord("0")) | (text == ord("1"))
    is_newline = text == ord("\n")
    is_space = is_newline | (text == ord(" ")) | (text == ord("\t")) | (text == ord("\r"))

    def line_of(position: int) -> int:
        return int(is_newline[:position].sum()) + 1

    bad = np.flatnonzero(~(is_value | is_space))
    glued = np.flatnonzero(is_value[1:] & is_value[:-1])  # "10", "11": not single 0/1 values
    if len(bad) or len(glued):
        at = int(bad[0]) if len(bad) else int(glued[0])
        raise DatasetInvalidError(f"{path} line {line_of(at)} holds {bytes(text[max(0, at - 10):at + 10])!r}: "
                                  f"expected values 0 or 1 separated by spaces. Delete the file and download it again.")
    starts = np.concatenate([[0], np.flatnonzero(is_newline) + 1])
    starts = starts[starts < len(text)]  # one a line, the last one with or without its newline
    counts = np.add.reduceat(is_value, starts, dtype=np.int64) if len(text) else np.zeros(0, dtype=np.int64)
    wrong = np.flatnonzero((counts != values_per_line) & (counts != 0))  # blank lines are skipped
    if len(wrong) or not counts.any():
        detail = (f"line {wrong[0] + 1} has {counts[wrong[0]]} values" if len(wrong) else "it holds no values")
        raise DatasetInvalidError(f"{path} is not a binarized MNIST .amat file: {detail}, expected "
                                  f"{values_per_line} a line. It may be truncated: delete it and download it again.")
    return torch.from_numpy(text[is_value] - ord("0")).view(-1, values_per_line)


def load_binarized_mnist(cfg: DictConfig, device: torch.device) -> ImageData:
    """Statically binarized MNIST (Larochelle's binarized_mnist_{train,valid,test}.amat).

    50,000 train / 10,000 valid / 10,000 test images, binarized once by their authors and
    never re-binarized here (static binarization overfits and scores worse than dynamic,
    a known trap of other reproductions). Nothing here uses a validation set (no early stopping), so
    data.merge_valid=true (configs/data/binarized_mnist.yaml) trains on train+valid,
    60,000 images as for MNIST; data.merge_valid=false trains on the 50,000 only. No labels
    (-1). Read from <root>/binarized_mnist/, downloaded there when data.download=true.
    """
    folder = _root(cfg) / "binarized_mnist"
    names = [f"binarized_mnist_{split}.amat" for split in BINARIZED_MNIST_SIZES]

    def fetch() -> None:
        for split, name in zip(BINARIZED_MNIST_SIZES, names):
            if not (folder / name).is_file():
                _download(BINARIZED_MNIST_URL.format(split), folder / name)

    _find_files("binarized MNIST", [folder], names, cfg.download, fetch,
                f"Put the three .amat files there (from {BINARIZED_MNIST_URL.format('{train,valid,test}')}), point "
                f"data.root (or ${DATA_ROOT_ENV}) at the folder that holds binarized_mnist/, or run once with "
                "internet access and data.download=true.", lambda folder, name: (folder / name).is_file())
    splits = {split: _read_amat(folder / name) for split, name in zip(BINARIZED_MNIST_SIZES, names)}
    for split, images in splits.items():
        _warn_if_partial("binarized MNIST", split, len(images), BINARIZED_MNIST_SIZES[split])
    train = torch.cat([splits["train"], splits["valid"]]) if _option(cfg, "merge_valid", False) else splits["train"]
    test = splits["test"]

    def unlabelled(images: torch.Tensor) -> torch.Tensor:
        return torch.full((len(images),), -1, dtype=torch.long)

    return _image_data(cfg, device, train.view(-1, IMAGE_SIZE, IMAGE_SIZE), unlabelled(train),
                       test.view(-1, IMAGE_SIZE, IMAGE_SIZE), unlabelled(test))


# ---------------------------------------------------------------- OMNIGLOT (Burda et al.'s chardata.mat)

OMNIGLOT_URL = "https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT/chardata.mat"
# Git's id of datasets/OMNIGLOT/chardata.mat in github.com/yburda/iwae, the SHA-1 of b"blob <size>\0" + the
# file: a download is checked against the repository itself.
OMNIGLOT_GIT_BLOB = "016a3536ffe5e1d38e42563a18d7a78bfaf643ec"
OMNIGLOT_FILE = "chardata.mat"
OMNIGLOT_SPLITS = {"train": ("data", "target", 24_345), "test": ("testdata", "testtarget", 8_070)}  # images, labels, N


def _git_blob_id(path: Path) -> str:
    return _digest(path, "sha1", b"blob %d\0" % path.stat().st_size)


def _read_chardata(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """split -> ((N, 28, 28) float64 intensities in [0, 1], (N,) alphabet indices) of chardata.mat.

    chardata.mat (MATLAB v5) holds one image a column: `data` 784 x 24,345 and `testdata`
    784 x 8,070, with one-hot alphabets `target` / `testtarget` (50 x N). A column is the
    image in MATLAB's column-major order (IWAE reads it with order='F'): value k is the
    pixel in row k % 28, column k // 28.
    """
    from scipy.io import loadmat  # imported here: only this dataset needs scipy

    kind = "OMNIGLOT chardata.mat"
    try:
        mat = loadmat(path, variable_names=[name for *names, _ in OMNIGLOT_SPLITS.values() for name in names])
    except Exception as error:  # scipy reports damaged files as OSError, ValueError, IndexError, zlib.error, ...
        raise _invalid(path, kind, f"scipy cannot read it: {type(error).__name__}: {error}", truncated=True) from error
    splits = {}
    for split, (images_name, labels_name, _) in OMNIGLOT_SPLITS.items():
        absent = [name for name in (images_name, labels_name) if name not in mat]
        if absent:
            raise _invalid(path, kind, f"it holds no variable {' or '.join(absent)}", truncated=False)
        columns, targets = mat[images_name], mat[labels_name]
        if (columns.ndim != 2 or columns.shape[0] != IMAGE_SIZE ** 2 or columns.shape[1] == 0
                or targets.ndim != 2 or targets.shape[1] != columns.shape[1]):
            raise _invalid(path, kind, f"{images_name} is {columns.shape} and {labels_name} {targets.shape}, "
                                       f"expected 784 x N and C x N", truncated=False)
        if not (np.isfinite(columns).all() and columns.min() >= 0 and columns.max() <= 1):
            raise _invalid(path, kind, f"{images_name} holds values in [{columns.min()}, {columns.max()}], "
                                       "expected intensities in [0, 1]", truncated=False)
        # (N, 784) -> (N, a, b) holds value 28a + b = pixel (row b, column a): swap the two axes.
        images = columns.T.reshape(-1, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 1)
        splits[split] = torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(targets.argmax(0))
    return splits


def load_omniglot(cfg: DictConfig, device: torch.device) -> ImageData:
    """OMNIGLOT at 28x28 as the paper used it: Burda et al.'s chardata.mat (the IWAE repository).

    24,345 training and 8,070 test images of handwritten characters from 50 alphabets, grey
    intensities in [0, 1]: dynamically binarized like MNIST, the test set binarized once. Each
    split is put in a fixed shuffled order (_fixed_order). Labels are alphabet indices. Read
    from <root>/omniglot/chardata.mat, downloaded there from the IWAE repository (and checked
    against it) when data.download=true.
    """
    folder = _root(cfg) / "omniglot"
    _find_files("OMNIGLOT", [folder], [OMNIGLOT_FILE], cfg.download,
                lambda: _download(OMNIGLOT_URL, folder / OMNIGLOT_FILE, _git_blob_id, OMNIGLOT_GIT_BLOB),
                f"Put {OMNIGLOT_FILE} there (from {OMNIGLOT_URL}), point data.root (or ${DATA_ROOT_ENV}) at the folder "
                "that holds omniglot/, or run once with internet access and data.download=true.",
                lambda folder, name: (folder / name).is_file())
    splits = _read_chardata(folder / OMNIGLOT_FILE)
    for split, (images, _) in splits.items():
        _warn_if_partial("OMNIGLOT", split, len(images), OMNIGLOT_SPLITS[split][2])
    return _image_data(cfg, device, *_fixed_order(*splits["train"]), *_fixed_order(*splits["test"]))


# ---------------------------------------------------------------- small NORB (NORB's binary matrix files)

NORB_URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"
NORB_FILES = {  # split -> {images, categories: (file name, MD5 of <name>.gz, as the server holds it)}
    "train": {"dat": ("smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat", "66054832f9accfe74a0f4c36a75bc0a2"),
              "cat": ("smallnorb-5x46789x9x18x6x2x96x96-training-cat.mat", "23c8b86101fbf0904a000b43d3ed2fd9")},
    "test": {"dat": ("smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat", "e4ad715691ed5a3a5f138751a4ceb071"),
             "cat": ("smallnorb-5x01235x9x18x6x2x96x96-testing-cat.mat", "5aa791cd7e6016cf957ce9bdb93b8603")},
}
NORB_PAIRS = 24_300  # stereo pairs per split
NORB_CAMERAS, NORB_STORED_SIZE, NORB_IMAGE_SIZE, NORB_CATEGORIES = 2, 96, 32, 5
NORB_MAGIC = {"byte": 0x1E3D4C55, "integer": 0x1E3D4C54}  # little-endian int32 magic: the element type
NORB_CHUNK = 1000  # pairs read and shrunk at a time, so that no 96x96 split sits in memory whole


def _read_norb_header(stream: BinaryIO, path: Path, element: str, ndim: int) -> list[int]:
    """The dimensions of a NORB matrix of `element`s with `ndim` dimensions, its header checked.

    Header: little-endian int32 magic, number of dimensions, then the dimensions, at least
    three of them stored (the unused ones are 1).
    """
    start = stream.read(8)
    if len(start) < 8:
        raise _invalid(path, "NORB", f"{len(start)} bytes, shorter than a header", truncated=True)
    magic, found_ndim = struct.unpack("<Ii", start)
    if magic != NORB_MAGIC[element] or found_ndim != ndim:
        raise _invalid(path, "NORB", f"its magic number is {magic:#010x} with {found_ndim} dimensions, expected "
                                     f"{NORB_MAGIC[element]:#010x} ({element} matrix) with {ndim}", truncated=False)
    stored = stream.read(4 * max(3, ndim))
    if len(stored) < 4 * max(3, ndim):
        raise _invalid(path, "NORB", "the header ends within its dimensions", truncated=True)
    return list(struct.unpack(f"<{max(3, ndim)}i", stored))[:ndim]


def _read_norb(path: Path, read: Callable[[BinaryIO], torch.Tensor]) -> torch.Tensor:
    """read(stream) of a NORB file, plain or gzipped; a gzip stream that breaks off is a truncated file."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as stream:
            return read(stream)
    except (OSError, EOFError, zlib.error) as error:
        raise _invalid(path, "NORB", f"not a complete gzip file: {error}", truncated=True) from error


def _norb_images(path: Path) -> torch.Tensor:
    """(2 N, 32, 32) uint8: both cameras of each of the N stereo pairs of a -dat file, pair after pair.

    Each 96x96 image is shrunk by torchvision's antialiased bicubic resize (as the LVAE authors'
    MATLAB bicubic files were), rounded back to 8-bit grey levels.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    def read(stream: BinaryIO) -> torch.Tensor:
        pairs, *image = _read_norb_header(stream, path, "byte", 4)
        if pairs <= 0 or image != [NORB_CAMERAS, NORB_STORED_SIZE, NORB_STORED_SIZE]:
            raise _invalid(path, "small NORB -dat", f"its header announces {[pairs, *image]}, expected N > 0 "
                                                    "pairs x 2 cameras x 96 x 96", truncated=False)
        pair_bytes = math.prod(image)
        shrunk = []
        for start in range(0, pairs, NORB_CHUNK):
            count = min(NORB_CHUNK, pairs - start)
            content = stream.read(count * pair_bytes)
            if len(content) < count * pair_bytes:
                raise _invalid(path, "NORB", f"it ends within pair {start + len(content) // pair_bytes} of the "
                                             f"{pairs} its header announces", truncated=True)
            images = torch.frombuffer(bytearray(content), dtype=torch.uint8).view(-1, 1, *image[1:])
            shrunk.append(resize(images, [NORB_IMAGE_SIZE] * 2, InterpolationMode.BICUBIC, antialias=True)[:, 0])
        if stream.read(1):
            raise _invalid(path, "NORB", f"it goes on after the {pairs} pairs its header announces", truncated=False)
        return torch.cat(shrunk)

    return _read_norb(path, read)


def _norb_categories(path: Path) -> torch.Tensor:
    """(N,) int64 categories of a -cat file."""
    def read(stream: BinaryIO) -> torch.Tensor:
        (count,) = _read_norb_header(stream, path, "integer", 1)
        content = stream.read()
        if len(content) != 4 * count:
            raise _invalid(path, "NORB", f"{len(content)} bytes of data where its header announces {count} "
                                         f"integers ({4 * count} bytes)", truncated=len(content) < 4 * count)
        return torch.from_numpy(np.frombuffer(content, dtype="<i4").astype(np.int64))

    return _read_norb(path, read)


def _read_norb_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(2 N, 32, 32) uint8 images (both cameras of every pair) and their (2 N,) categories 0-4."""
    (images_name, _), (categories_name, _) = NORB_FILES[split]["dat"], NORB_FILES[split]["cat"]
    images = _norb_images(_plain_or_gz(folder, images_name))
    categories = _norb_categories(_plain_or_gz(folder, categories_name))
    if (NORB_CAMERAS * len(categories) != len(images) or categories.min() < 0
            or categories.max() >= NORB_CATEGORIES):
        raise DatasetInvalidError(
            f"{images_name} and {categories_name} in {folder} do not fit together: {len(images) // NORB_CAMERAS} "
            f"pairs, {len(categories)} categories in [{categories.min()}, {categories.max()}]; expected one "
            f"category 0-{NORB_CATEGORIES - 1} a pair.")
    return images, categories.repeat_interleave(NORB_CAMERAS)


def load_norb(cfg: DictConfig, device: torch.device) -> ImageData:
    """small NORB (LeCun, Huang and Bottou 2004) as the LVAE paper models it, with a Gaussian output.

    Each split holds 24,300 stereo pairs of 96x96 8-bit images of toys (5 categories; training
    instances 4, 6, 7, 8, 9 and test instances 0, 1, 2, 3, 5 of each). Both cameras are used,
    each image once: 48,600 training and 48,600 test images. (The LVAE authors' loader stacks
    camera 0 twice, which doubles every image instead of adding the other camera.) Images are
    shrunk to 32x32 (D = 1024) and dequantized, x = (pixel + u) / 256 (data.dequantize; the
    authors divide by the largest noisy training value, just under 256), so log-densities
    are in nats of x and in bits/dim of the pixels. Each split is put in a fixed shuffled
    order. Labels are the categories 0-4. Read from <root>/smallnorb/ (the files plain or
    gzipped; the -info files are not needed), downloaded there from NYU (MD5-checked) when
    data.download=true.
    """
    folder = _root(cfg) / "smallnorb"
    files = [file for split in NORB_FILES.values() for file in split.values()]

    def fetch() -> None:
        for name, md5 in files:
            if _plain_or_gz(folder, name) is None:
                _download(f"{NORB_URL}{name}.gz", folder / f"{name}.gz", lambda path: _digest(path, "md5"), md5)

    _find_files("small NORB", [folder], [name for name, _ in files], cfg.download, fetch,
                f"Put the four files there, plain (.mat) or as downloaded (.mat.gz) from {NORB_URL}, point data.root "
                f"(or ${DATA_ROOT_ENV}) at the folder that holds smallnorb/, or run once with internet access and "
                "data.download=true.", lambda folder, name: _plain_or_gz(folder, name) is not None)
    splits = {split: _read_norb_split(folder, split) for split in NORB_FILES}
    for split, (images, _) in splits.items():
        _warn_if_partial("small NORB", split, len(images), NORB_CAMERAS * NORB_PAIRS)
    return _image_data(cfg, device, *_fixed_order(*splits["train"]), *_fixed_order(*splits["test"]))


# ---------------------------------------------------------------- the registry: data=<name>


@dataclass(frozen=True)
class Dataset:
    """A choice of data=<name>: its loader, and how it stores pixels (GREY_LEVELS, BINARY or INTENSITIES),
    which decides what data.binarize and data.dequantize can do (lvae.run.config.validate checks it)."""

    load: Callable[[DictConfig, torch.device], ImageData]
    pixels: str
    title: str  # as a report names it


DATASETS = {
    "mnist": Dataset(load_mnist, GREY_LEVELS, "MNIST"),
    "fashion_mnist": Dataset(load_fashion_mnist, GREY_LEVELS, "Fashion-MNIST"),
    "binarized_mnist": Dataset(load_binarized_mnist, BINARY, "binarized MNIST (Larochelle)"),
    "omniglot": Dataset(load_omniglot, INTENSITIES, "OMNIGLOT"),
    "norb": Dataset(load_norb, GREY_LEVELS, "small NORB"),
}


def load_dataset(cfg: DictConfig, device: torch.device) -> ImageData:
    return DATASETS[cfg.name].load(cfg, device)
