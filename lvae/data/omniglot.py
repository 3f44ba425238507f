"""OMNIGLOT as Burda et al. distribute it (the IWAE repository's chardata.mat, MATLAB v5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lvae.data.files import DATA_ROOT_ENV, data_root, digest, download, find_files, invalid_file, warn_if_partial
from lvae.data.images import IMAGE_SIZE, StoredImages, fixed_order
from lvae.data.settings import DataConfig

OMNIGLOT_URL = "https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT/chardata.mat"
# Git's id of datasets/OMNIGLOT/chardata.mat in github.com/yburda/iwae, the SHA-1 of b"blob <size>\0" + the
# file: a download is checked against the repository itself.
OMNIGLOT_GIT_BLOB = "016a3536ffe5e1d38e42563a18d7a78bfaf643ec"
OMNIGLOT_FILE = "chardata.mat"
OMNIGLOT_SPLITS = {"train": ("data", "target", 24_345), "test": ("testdata", "testtarget", 8_070)}  # images, labels, N


def _git_blob_id(path: Path) -> str:
    return digest(path, "sha1", b"blob %d\0" % path.stat().st_size)


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
        raise invalid_file(path, kind, f"scipy cannot read it: {type(error).__name__}: {error}",
                           truncated=True) from error
    splits = {}
    for split, (images_name, labels_name, _) in OMNIGLOT_SPLITS.items():
        absent = [name for name in (images_name, labels_name) if name not in mat]
        if absent:
            raise invalid_file(path, kind, f"it holds no variable {' or '.join(absent)}", truncated=False)
        columns, targets = mat[images_name], mat[labels_name]
        if (columns.ndim != 2 or columns.shape[0] != IMAGE_SIZE ** 2 or columns.shape[1] == 0
                or targets.ndim != 2 or targets.shape[1] != columns.shape[1]):
            raise invalid_file(path, kind, f"{images_name} is {columns.shape} and {labels_name} {targets.shape}, "
                                       f"expected 784 x N and C x N", truncated=False)
        if not (np.isfinite(columns).all() and columns.min() >= 0 and columns.max() <= 1):
            raise invalid_file(path, kind, f"{images_name} holds values in [{columns.min()}, {columns.max()}], "
                                       "expected intensities in [0, 1]", truncated=False)
        # (N, 784) -> (N, a, b) holds value 28a + b = pixel (row b, column a): swap the two axes.
        images = columns.T.reshape(-1, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 1)
        splits[split] = torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(targets.argmax(0))
    return splits


def load_omniglot(cfg: DataConfig) -> StoredImages:
    """OMNIGLOT at 28x28 as the paper used it: Burda et al.'s chardata.mat (the IWAE repository).

    24,345 training and 8,070 test images of handwritten characters from 50 alphabets, grey
    intensities in [0, 1]: dynamically binarized like MNIST, the test set binarized once. Each
    split is put in a fixed shuffled order (fixed_order). Labels are alphabet indices. Read
    from <root>/omniglot/chardata.mat, downloaded there from the IWAE repository (and checked
    against it) when data.download=true.
    """
    folder = data_root(cfg) / "omniglot"
    find_files("OMNIGLOT", [folder], [OMNIGLOT_FILE], cfg.download,
                lambda: download(OMNIGLOT_URL, folder / OMNIGLOT_FILE, _git_blob_id, OMNIGLOT_GIT_BLOB),
                f"Put {OMNIGLOT_FILE} there (from {OMNIGLOT_URL}), point data.root (or ${DATA_ROOT_ENV}) at the folder "
                "that holds omniglot/, or run once with internet access and data.download=true.",
                lambda folder, name: (folder / name).is_file())
    splits = _read_chardata(folder / OMNIGLOT_FILE)
    for split, (images, _) in splits.items():
        warn_if_partial("OMNIGLOT", split, len(images), OMNIGLOT_SPLITS[split][2])
    return StoredImages(*fixed_order(*splits["train"]), *fixed_order(*splits["test"]))


