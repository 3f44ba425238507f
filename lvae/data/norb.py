"""Small NORB (LeCun et al.): NORB's binary matrix files, 96x96 stereo pairs shrunk to 32x32."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch

from lvae.data.errors import DatasetInvalidError
from lvae.data.files import (DATA_ROOT_ENV, data_root, digest, download, find_files, invalid_file, plain_or_gz,
                             warn_if_partial)
from lvae.data.images import StoredImages, fixed_order
from lvae.data.settings import DataConfig

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
        raise invalid_file(path, "NORB", f"{len(start)} bytes, shorter than a header", truncated=True)
    magic, found_ndim = struct.unpack("<Ii", start)
    if magic != NORB_MAGIC[element] or found_ndim != ndim:
        raise invalid_file(path, "NORB", f"its magic number is {magic:#010x} with {found_ndim} dimensions, expected "
                                     f"{NORB_MAGIC[element]:#010x} ({element} matrix) with {ndim}", truncated=False)
    stored = stream.read(4 * max(3, ndim))
    if len(stored) < 4 * max(3, ndim):
        raise invalid_file(path, "NORB", "the header ends within its dimensions", truncated=True)
    return list(struct.unpack(f"<{max(3, ndim)}i", stored))[:ndim]


def _read_norb(path: Path, read: Callable[[BinaryIO], torch.Tensor]) -> torch.Tensor:
    """read(stream) of a NORB file, plain or gzipped; a gzip stream that breaks off is a truncated file."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as stream:
            return read(stream)
    except (OSError, EOFError, zlib.error) as error:
        raise invalid_file(path, "NORB", f"not a complete gzip file: {error}", truncated=True) from error


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
            raise invalid_file(path, "small NORB -dat", f"its header announces {[pairs, *image]}, expected N > 0 "
                                                    "pairs x 2 cameras x 96 x 96", truncated=False)
        pair_bytes = math.prod(image)
        shrunk = []
        for start in range(0, pairs, NORB_CHUNK):
            count = min(NORB_CHUNK, pairs - start)
            content = stream.read(count * pair_bytes)
            if len(content) < count * pair_bytes:
                raise invalid_file(path, "NORB", f"it ends within pair {start + len(content) // pair_bytes} of the "
                                             f"{pairs} its header announces", truncated=True)
            images = torch.frombuffer(bytearray(content), dtype=torch.uint8).view(-1, 1, *image[1:])
            shrunk.append(resize(images, [NORB_IMAGE_SIZE] * 2, InterpolationMode.BICUBIC, antialias=True)[:, 0])
        if stream.read(1):
            raise invalid_file(path, "NORB", f"it goes on after the {pairs} pairs its header announces",
                               truncated=False)
        return torch.cat(shrunk)

    return _read_norb(path, read)


def _norb_categories(path: Path) -> torch.Tensor:
    """(N,) int64 categories of a -cat file."""
    def read(stream: BinaryIO) -> torch.Tensor:
        (count,) = _read_norb_header(stream, path, "integer", 1)
        content = stream.read()
        if len(content) != 4 * count:
            raise invalid_file(path, "NORB", f"{len(content)} bytes of data where its header announces {count} "
                                         f"integers ({4 * count} bytes)", truncated=len(content) < 4 * count)
        return torch.from_numpy(np.frombuffer(content, dtype="<i4").astype(np.int64))

    return _read_norb(path, read)


def _read_norb_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(2 N, 32, 32) uint8 images (both cameras of every pair) and their (2 N,) categories 0-4."""
    (images_name, _), (categories_name, _) = NORB_FILES[split]["dat"], NORB_FILES[split]["cat"]
    images = _norb_images(plain_or_gz(folder, images_name))
    categories = _norb_categories(plain_or_gz(folder, categories_name))
    if (NORB_CAMERAS * len(categories) != len(images) or categories.min() < 0
            or categories.max() >= NORB_CATEGORIES):
        raise DatasetInvalidError(
            f"{images_name} and {categories_name} in {folder} do not fit together: {len(images) // NORB_CAMERAS} "
            f"pairs, {len(categories)} categories in [{categories.min()}, {categories.max()}]; expected one "
            f"category 0-{NORB_CATEGORIES - 1} a pair.")
    return images, categories.repeat_interleave(NORB_CAMERAS)


def load_norb(cfg: DataConfig) -> StoredImages:
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
    folder = data_root(cfg) / "smallnorb"
    files = [file for split in NORB_FILES.values() for file in split.values()]

    def fetch() -> None:
        for name, md5 in files:
            if plain_or_gz(folder, name) is None:
                download(f"{NORB_URL}{name}.gz", folder / f"{name}.gz", lambda path: digest(path, "md5"), md5)

    find_files("small NORB", [folder], [name for name, _ in files], cfg.download, fetch,
                f"Put the four files there, plain (.mat) or as downloaded (.mat.gz) from {NORB_URL}, point data.root "
                f"(or ${DATA_ROOT_ENV}) at the folder that holds smallnorb/, or run once with internet access and "
                "data.download=true.", lambda folder, name: plain_or_gz(folder, name) is not None)
    splits = {split: _read_norb_split(folder, split) for split in NORB_FILES}
    for split, (images, _) in splits.items():
        warn_if_partial("small NORB", split, len(images), NORB_CAMERAS * NORB_PAIRS)
    return StoredImages(*fixed_order(*splits["train"]), *fixed_order(*splits["test"]))


