"""Shared fixtures: config composition and a synthetic MNIST in the real IDX format."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from lvae.config import compose_config  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parent.parent


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


@pytest.fixture
def synthetic_mnist(tmp_path: Path) -> Path:
    return write_synthetic_mnist(tmp_path / "data")
