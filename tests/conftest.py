"""Shared fixtures. Helpers live in tests/helpers/ and are imported from there, never from here."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers.datasets import write_synthetic_mnist


@pytest.fixture
def synthetic_mnist(tmp_path: Path) -> Path:
    return write_synthetic_mnist(tmp_path / "data")
