"""Shared fixtures. Helpers live in tests/helpers/ and are imported from there, never from here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from .helpers.datasets import write_synthetic_mnist

# The tests' models are tiny: a second thread costs more than it gains, and on a shared 2-core
# machine it is what makes the suite slow. The subprocesses that tests start inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def synthetic_mnist(tmp_path: Path) -> Path:
    return write_synthetic_mnist(tmp_path / "data")
