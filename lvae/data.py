"""28x28 image datasets as tensors on the compute device (PAPER.md §4).

A whole dataset lives on the device as one tensor; a training batch is an index
into it, drawn afresh on the fly (re-binarized, or dequantized), so every epoch sees
new binary / continuous values and no per-image DataLoader work runs. The test set
is drawn once, on the CPU, with the fixed seed `data.binarization_seed`, so every
run scores the same test images.

Datasets (`data=<name>`) and their splits; a loader checks what it reads (format,
shapes, values, counts) and, when files are missing, says where it looked:

    mnist            LeCun's 60,000 train / 10,000 test, <root>/MNIST/raw (torchvision's layout).
    fashion_mnist    Zalando's 60,000 train / 10,000 test, same IDX format; <root>/FashionMNIST/raw,
                     then the Debian package's /usr/share/datasets/fashion-mnist.
    binarized_mnist  the static binarization distributed by Larochelle: 50,000 train / 10,000 valid /
                     10,000 test, already 0/1; data.merge_valid=true trains on train+valid (60,000).
    omniglot         torchvision's Omniglot, images_background = train (19,280 images, 30 alphabets),
                     images_evaluation = test (13,180 images, 20 other alphabets), 105x105 -> 28x28.

How stored pixels become the model's x (`data.binarize`, `data.dequantize`):

    dynamic binarization   x ~ Bernoulli(pixel / 255), fresh for every training batch
    dequantization         x = (pixel + u) / 256, u ~ U(0, 1)^D fresh for every training batch: a
                           density on [0, 1]^D; `bits_per_dim` turns its log-density into bits per
                           dimension of the 256-level pixels
    already binary         x = the stored 0/1 pixel (binarized_mnist)
    neither                x = pixel / 255 (continuous, but a density of it is not a probability
                           of the discrete pixels: no bits/dim)
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from omegaconf import DictConfig

log = logging.getLogger(__name__)

DATA_ROOT_ENV = "LVAE_DATA_ROOT"
IMAGE_SIZE = 28
DEQUANTIZATION_SCALE = 256  # x = (pixel + u) / 256 maps the 256 grey levels onto [0, 1)


class DatasetError(RuntimeError):
    """The dataset cannot be used; the message says where it looked and what to do."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset files are neither on disk nor downloadable."""


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
        """x as the model sees it: a fresh binarization or dequantization of `images`, else `images`."""
        if self.binarize:
            return torch.bernoulli(images, generator=generator)
        if self.dequantize:
            noise = torch.rand(images.shape, generator=generator, dtype=images.dtype, device=images.device)
            return images + noise / DEQUANTIZATION_SCALE
        return images

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

    def fixed_train_subset(self, n: int, seed: int) -> torch.Tensor:
        """The first n training images, drawn once with `seed` (for train-set bounds)."""
        generator = torch.Generator().manual_seed(seed)
        return self.draw(self.train[:n].cpu(), generator).to(self.train.device)


def default_data_root() -> str:
    """$LVAE_DATA_ROOT if set, else ./data (where torchvision downloads to)."""
    return os.environ.get(DATA_ROOT_ENV, "data")


# ---------------------------------------------------------------- shared helpers


def _option(cfg: DictConfig, key: str, default):
    """cfg.<key>, or `default` for a config written before the key existed (old run directories)."""
    return cfg.get(key, default)


def _root(cfg: DictConfig) -> Path:
    return Path(cfg.root).expanduser()


def _image_data(cfg: DictConfig, device: torch.device, train: torch.Tensor, train_labels: torch.Tensor,
                test: torch.Tensor, test_labels: torch.Tensor, levels: int = 256) -> ImageData:
    """ImageData from (N, 28, 28) uint8 pixels with `levels` grey levels (256, or 2 for 0/1 pixels).

    Keeps the first data.train_subset training images, scales the pixels (pixel / 255, or
    pixel / 256 when dequantized, 0/1 as stored) and draws the test set once with
    data.binarization_seed, on the CPU so that it is the same on every device.
    """
    if cfg.train_subset is not None:
        train, train_labels = train[: cfg.train_subset], train_labels[: cfg.train_subset]
    dequantize = _option(cfg, "dequantize", False)
    if dequantize and (cfg.binarize or levels != 256):
        raise ValueError(f"data.dequantize=true needs data.binarize=false and 256 grey levels (data={cfg.name})")
    scale = DEQUANTIZATION_SCALE if dequantize else levels - 1
    train_x, test_x = (images.reshape(len(images), -1).float() / scale for images in (train, test))
    data = ImageData(train_x, train_labels, test_x, test_labels, cfg.binarize, dequantize, levels == 2)
    data.test = data.draw(data.test, torch.Generator().manual_seed(cfg.binarization_seed))
    return data.to(device)


def _missing_error(dataset: str, where: dict[Path, list[str]], download: bool, download_error: Exception | None,
                   fix: str) -> DatasetNotFoundError:
    """DatasetNotFoundError naming every place looked in and what was missing there."""
    looked = "; ".join(f"{folder}{'' if folder.is_dir() else ' (no such folder)'}: missing {', '.join(names)}"
                       for folder, names in where.items())
    reason = ("Nothing was downloaded: data.download=false" if not download
              else f"The download failed ({type(download_error).__name__}: {download_error})")
    return DatasetNotFoundError(f"{dataset} not found. Looked in {looked}. {reason}. {fix}")


def _find_files(dataset: str, folders: list[Path], names: list[str], download: bool,
                fetch: Callable[[], None], fix: str, exists: Callable[[Path, str], bool]) -> Path:
    """The first of `folders` that holds all `names`, after fetch() when none does and download is true."""
    def missing() -> dict[Path, list[str]]:
        return {folder: [name for name in names if not exists(folder, name)] for folder in folders}

    found = [folder for folder, lacking in missing().items() if not lacking]
    download_error = None
    if not found and download:
        try:
            fetch()
        except Exception as error:  # no network, HTTP errors, checksum mismatch
            download_error = error
        found = [folder for folder, lacking in missing().items() if not lacking]
        if not found and download_error is None:
            download_error = RuntimeError("it ran but left the files missing")
    if not found:
        raise _missing_error(dataset, missing(), download, download_error, fix)
    return found[0]


# ---------------------------------------------------------------- IDX files (MNIST, Fashion-MNIST)

IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_NAMES = [name for pair in IDX_FILES.values() for name in pair]


def _idx_path(folder: Path, name: str) -> Optional[Path]:
    """folder/name, or folder/name.gz (as the Debian package and torchvision's downloads hold it)."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def _read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An IDX file of unsigned bytes with `ndim` dimensions, plain or gzipped, checked byte for byte."""
    content, problem = path.read_bytes(), None
    if path.suffix == ".gz":
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError, zlib.error) as error:
            problem = f"not a complete gzip file: {error}"
    if problem is None:
        header = 4 + 4 * ndim
        magic = bytes([0, 0, 0x08, ndim])  # unsigned bytes, ndim dimensions
        if len(content) < header or content[:4] != magic:
            problem = f"header {content[:4].hex()}, expected {magic.hex()} ({ndim}-D unsigned bytes)"
        else:
            dims = [int.from_bytes(content[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
            if len(content) != header + math.prod(dims):
                problem = f"{len(content)} bytes where the header {dims} announces {header + math.prod(dims)}"
    if problem is not None:
        raise DatasetInvalidError(f"{path} is not a valid IDX file ({problem}; {path.stat().st_size} bytes on disk): "
                                  "it may be truncated. Delete it and download it again.")
    return torch.frombuffer(bytearray(content[header:]), dtype=torch.uint8).view(*dims)


def _read_idx_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 28, 28) uint8 images and (N,) labels 0-9 of split 'train' or 'test'."""
    image_name, label_name = IDX_FILES[split]
    images = _read_idx(_idx_path(folder, image_name), 3)
    labels = _read_idx(_idx_path(folder, label_name), 1).long()
    if (tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE) or len(images) != len(labels) or len(labels) == 0
            or labels.max() > 9):
        values = f" in [{labels.min()}, {labels.max()}]" if len(labels) else ""
        raise DatasetInvalidError(
            f"{image_name} and {label_name} in {folder} do not fit together: images {tuple(images.shape)}, labels "
            f"{tuple(labels.shape)}{values}; expected (N, 28, 28) images and N > 0 labels in 0-9."
        )
    return images, labels


def _load_idx_dataset(cfg: DictConfig, device: torch.device, dataset: str, folders: list[Path],
                      fetch: Callable[[], None], fix: str, full_sizes: tuple[int, int]) -> ImageData:
    folder = _find_files(dataset, folders, IDX_NAMES, cfg.download, fetch, fix,
                         lambda folder, name: _idx_path(folder, name) is not None)
    train, test = _read_idx_split(folder, "train"), _read_idx_split(folder, "test")
    for (images, _), split, full in zip((train, test), ("train", "test"), full_sizes):
        if len(images) != full:
            log.warning("%s %s in %s has %d images, the full set %d", dataset, split, folder, len(images), full)
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
    PAPER.md §6). Nothing here uses a validation set (no early stopping), so
    data.merge_valid=true (configs/data/binarized_mnist.yaml) trains on train+valid,
    60,000 images as for MNIST; data.merge_valid=false trains on the 50,000 only. No labels
    (-1). Read from <root>/binarized_mnist/, downloaded there when data.download=true.
    """
    folder = _root(cfg) / "binarized_mnist"
    names = [f"binarized_mnist_{split}.amat" for split in BINARIZED_MNIST_SIZES]

    def fetch() -> None:
        from torchvision.datasets.utils import download_url

        for split, name in zip(BINARIZED_MNIST_SIZES, names):
            if not (folder / name).is_file():  # under another name until complete: no truncated file is left
                download_url(BINARIZED_MNIST_URL.format(split), str(folder), f"{name}.part")
                (folder / f"{name}.part").replace(folder / name)

    _find_files("binarized MNIST", [folder], names, cfg.download, fetch,
                f"Put the three .amat files there (from {BINARIZED_MNIST_URL.format('{train,valid,test}')}), point "
                f"data.root (or ${DATA_ROOT_ENV}) at the folder that holds binarized_mnist/, or run once with "
                "internet access and data.download=true.", lambda folder, name: (folder / name).is_file())
    splits = {split: _read_amat(folder / name) for split, name in zip(BINARIZED_MNIST_SIZES, names)}
    for split, images in splits.items():
        if len(images) != BINARIZED_MNIST_SIZES[split]:
            log.warning("binarized MNIST %s has %d images, the full set %d", split, len(images),
                        BINARIZED_MNIST_SIZES[split])
    train = torch.cat([splits["train"], splits["valid"]]) if _option(cfg, "merge_valid", False) else splits["train"]
    test = splits["test"]

    def unlabelled(images: torch.Tensor) -> torch.Tensor:
        return torch.full((len(images),), -1, dtype=torch.long)

    return _image_data(cfg, device, train.view(-1, IMAGE_SIZE, IMAGE_SIZE), unlabelled(train),
                       test.view(-1, IMAGE_SIZE, IMAGE_SIZE), unlabelled(test), levels=2)


# ---------------------------------------------------------------- OMNIGLOT (torchvision's PNG folders)

OMNIGLOT_SPLITS = {"train": "images_background", "test": "images_evaluation"}
OMNIGLOT_SIZES = {"images_background": 19_280, "images_evaluation": 13_180}
OMNIGLOT_IMAGE_SIZE = 105
OMNIGLOT_ORDER_SEED = 0  # the fixed shuffle of each split (so that a prefix samples every alphabet)


def _read_omniglot_split(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 28, 28) uint8 ink and (N,) alphabet indices of folder/<alphabet>/<character>/*.png.

    Images in sorted (alphabet, character, file) order, then shuffled with a fixed seed.
    Each 105x105 drawing (white paper, black strokes) is inverted so that strokes are 255
    and shrunk to 28x28 by area averaging (PIL's BOX filter, antialiased): a pixel is
    the fraction of its area covered by ink.
    """
    from PIL import Image, ImageOps

    alphabets = sorted(path for path in folder.iterdir() if path.is_dir())
    images, labels = [], []
    for label, alphabet in enumerate(alphabets):
        for path in sorted(alphabet.glob("*/*.png")):
            try:
                with Image.open(path) as image:
                    size, ink = image.size, ImageOps.invert(image.convert("L"))
            except (OSError, ValueError) as error:  # unreadable or truncated PNG
                raise DatasetInvalidError(f"{path} is not a readable PNG ({type(error).__name__}: {error}). "
                                          "Delete the Omniglot folders and unzip them again.") from error
            if size != (OMNIGLOT_IMAGE_SIZE, OMNIGLOT_IMAGE_SIZE):
                raise DatasetInvalidError(f"{path} is {size[0]}x{size[1]}, expected an Omniglot drawing of "
                                          f"{OMNIGLOT_IMAGE_SIZE}x{OMNIGLOT_IMAGE_SIZE}.")
            images.append(np.asarray(ink.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)))
            labels.append(label)
    if not images:
        raise DatasetInvalidError(f"{folder} holds no <alphabet>/<character>/*.png images.")
    ink = np.stack(images)
    if ink.mean() > 127.5:  # drawings are mostly paper: strokes must have been white, not black
        raise DatasetInvalidError(f"the drawings in {folder} are mostly ink after inversion (mean "
                                  f"{ink.mean() / 255:.2f}): expected black strokes on white paper, as in Omniglot.")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(OMNIGLOT_ORDER_SEED))
    return torch.from_numpy(ink)[order], torch.tensor(labels)[order]


def load_omniglot(cfg: DictConfig, device: torch.device) -> ImageData:
    """OMNIGLOT at 28x28 from torchvision's Omniglot folders <root>/omniglot-py/images_{background,evaluation}.

    Split: background set = train (19,280 images of 30 alphabets), evaluation set = test
    (13,180 images of 20 other alphabets). This is NOT the split of the paper's 28x28 OMNIGLOT
    (Burda et al.'s chardata.mat: 24,345 train / 8,070 test images), which cannot be rebuilt
    from these folders; here no test alphabet is seen in training, so numbers are not
    directly comparable with the paper's. Pixels are ink intensities (strokes = 1),
    dynamically binarized like MNIST. Labels are alphabet indices within a split.
    """
    base = _root(cfg) / "omniglot-py"

    def fetch() -> None:
        from torchvision.datasets import Omniglot

        for background in (True, False):
            Omniglot(str(_root(cfg)), background=background, download=True)

    _find_files("OMNIGLOT", [base], list(OMNIGLOT_SPLITS.values()), cfg.download, fetch,
                f"Unzip images_background.zip and images_evaluation.zip (github.com/brendenlake/omniglot, python/) "
                f"into {base}, so that {base}/images_background/<alphabet>/<character>/*.png exist, point data.root "
                f"(or ${DATA_ROOT_ENV}) at the folder that holds omniglot-py/, or run once with internet access "
                "and data.download=true.", lambda folder, name: (folder / name).is_dir())
    splits = {}
    for split, name in OMNIGLOT_SPLITS.items():
        splits[split] = _read_omniglot_split(base / name)
        if len(splits[split][0]) != OMNIGLOT_SIZES[name]:
            log.warning("OMNIGLOT %s has %d images, the full set %d", name, len(splits[split][0]), OMNIGLOT_SIZES[name])
    return _image_data(cfg, device, *splits["train"], *splits["test"])


LOADERS = {"mnist": load_mnist, "fashion_mnist": load_fashion_mnist, "binarized_mnist": load_binarized_mnist,
           "omniglot": load_omniglot}


def load_dataset(cfg: DictConfig, device: torch.device) -> ImageData:
    return LOADERS[cfg.name](cfg, device)
