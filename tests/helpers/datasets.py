"""Synthetic datasets in their real on-disk formats: MNIST's IDX files (plain or gzipped), Larochelle's
binarized MNIST (.amat), Omniglot's PNG folders."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch


def write_idx(path: Path, array: torch.Tensor) -> None:
    """IDX: magic (0, 0, type 0x08 = ubyte, ndim), big-endian dims, then the raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.to(torch.uint8).contiguous().numpy().tobytes())


def write_synthetic_mnist(root: Path, n_train: int = 96, n_test: int = 32, seed: int = 0) -> Path:
    """Four MNIST files under root/MNIST/raw: blurry digit-like blobs, labels 0-9."""
    generator = torch.Generator().manual_seed(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.randint(0, 10, (n,), generator=generator)
        rows = torch.arange(28).view(1, 28, 1)
        centres = (labels * 2 + 5).view(n, 1, 1)
        images = 255 * torch.exp(-((rows - centres) ** 2) / 20.0) * torch.rand(n, 1, 28, generator=generator)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images.clamp(0, 255).round())
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def write_idx_gz(path: Path, array: torch.Tensor) -> None:
    """write_idx, gzipped: `path` ends in .gz (as in the Debian package and torchvision's downloads)."""
    plain = path.with_suffix("")
    write_idx(plain, array)
    path.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()


def write_synthetic_idx_dataset(folder: Path, n_train: int = 40, n_test: int = 24, seed: int = 0,
                                compressed: bool = True) -> Path:
    """The four IDX files of an MNIST-like dataset (Fashion-MNIST's names) in `folder`: random grey levels 0-255."""
    generator = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    write = write_idx_gz if compressed else write_idx
    suffix = ".gz" if compressed else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write(folder / f"{prefix}-images-idx3-ubyte{suffix}", torch.randint(0, 256, (n, 28, 28), generator=generator))
        write(folder / f"{prefix}-labels-idx1-ubyte{suffix}", torch.randint(0, 10, (n,), generator=generator))
    return folder


def write_amat(path: Path, images: torch.Tensor) -> None:
    """Larochelle's .amat text: one image a line, its 784 values 0/1 separated by spaces."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(str(int(v)) for v in row) + "\n" for row in images.reshape(len(images), -1)))


def write_synthetic_binarized_mnist(root: Path, sizes=(30, 10, 12), seed: int = 0) -> dict[str, torch.Tensor]:
    """root/binarized_mnist/binarized_mnist_{train,valid,test}.amat; returns the (N, 784) 0/1 images written."""
    generator = torch.Generator().manual_seed(seed)
    written = {}
    for split, n in zip(("train", "valid", "test"), sizes):
        written[split] = torch.bernoulli(torch.full((n, 784), 0.3), generator=generator).to(torch.uint8)
        write_amat(root / "binarized_mnist" / f"binarized_mnist_{split}.amat", written[split])
    return written


def write_omniglot_png(path: Path, strokes: torch.Tensor) -> None:
    """A drawing as Omniglot stores it: a 1-bit PNG, white paper (1) and black strokes (0)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(((1 - strokes.to(torch.uint8)) * 255).numpy(), mode="L").convert("1").save(path)


def write_synthetic_omniglot(root: Path, alphabets=(2, 1), characters: int = 2, drawers: int = 3,
                             seed: int = 0) -> Path:
    """root/omniglot-py/images_{background,evaluation}/<alphabet>/<character>/<id>_<drawer>.png, 105x105:
    every drawing a random horizontal bar. `alphabets`: how many in background and in evaluation."""
    generator = torch.Generator().manual_seed(seed)
    for split, n_alphabets in zip(("images_background", "images_evaluation"), alphabets):
        for a in range(n_alphabets):
            for c in range(characters):
                for d in range(drawers):
                    strokes = torch.zeros(105, 105, dtype=torch.bool)
                    top = int(torch.randint(0, 90, (1,), generator=generator))
                    strokes[top:top + 15, 10:95] = True
                    write_omniglot_png(root / "omniglot-py" / split / f"Alphabet_{a}" / f"character{c + 1:02d}"
                                       / f"{a:02d}{c:02d}_{d + 1:02d}.png", strokes)
    return root
