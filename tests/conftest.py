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


# Every device torch sees. The numerical and end-to-end tests take `device`, so they run on each:
# on a machine with a GPU this suite is also the GPU's check (scripts/gpu_check.py runs that part).
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture
def synthetic_mnist(tmp_path: Path) -> Path:
    return write_synthetic_mnist(tmp_path / "data")
