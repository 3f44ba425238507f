"""Larochelle's static binarization of MNIST (.amat text files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lvae.data.errors import DatasetInvalidError
from lvae.data.files import DATA_ROOT_ENV, data_root, download, find_files, warn_if_partial
from lvae.data.images import IMAGE_SIZE, StoredImages
from lvae.data.settings import DataConfig

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


def load_binarized_mnist(cfg: DataConfig) -> StoredImages:
    """Statically binarized MNIST (Larochelle's binarized_mnist_{train,valid,test}.amat).

    50,000 train / 10,000 valid / 10,000 test images, binarized once by their authors and
    never re-binarized here (static binarization overfits and scores worse than dynamic,
    a known trap of other reproductions). Nothing here uses a validation set (no early stopping), so
    data.merge_valid=true (configs/data/binarized_mnist.yaml) trains on train+valid,
    60,000 images as for MNIST; data.merge_valid=false trains on the 50,000 only. No labels
    (-1). Read from <root>/binarized_mnist/, downloaded there when data.download=true.
    """
    folder = data_root(cfg) / "binarized_mnist"
    names = [f"binarized_mnist_{split}.amat" for split in BINARIZED_MNIST_SIZES]

    def fetch() -> None:
        for split, name in zip(BINARIZED_MNIST_SIZES, names):
            if not (folder / name).is_file():
                download(BINARIZED_MNIST_URL.format(split), folder / name)

    find_files("binarized MNIST", [folder], names, cfg.download, fetch,
                f"Put the three .amat files there (from {BINARIZED_MNIST_URL.format('{train,valid,test}')}), point "
                f"data.root (or ${DATA_ROOT_ENV}) at the folder that holds binarized_mnist/, or run once with "
                "internet access and data.download=true.", lambda folder, name: (folder / name).is_file())
    splits = {split: _read_amat(folder / name) for split, name in zip(BINARIZED_MNIST_SIZES, names)}
    for split, images in splits.items():
        warn_if_partial("binarized MNIST", split, len(images), BINARIZED_MNIST_SIZES[split])
    train = torch.cat([splits["train"], splits["valid"]]) if cfg.merge_valid else splits["train"]
    test = splits["test"]

    def unlabelled(images: torch.Tensor) -> torch.Tensor:
        return torch.full((len(images),), -1, dtype=torch.long)

    return StoredImages(train.view(-1, IMAGE_SIZE, IMAGE_SIZE), unlabelled(train),
                       test.view(-1, IMAGE_SIZE, IMAGE_SIZE), unlabelled(test))


