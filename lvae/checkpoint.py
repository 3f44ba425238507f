"""Checkpoints: state dicts only, written atomically, loadable with weights_only=True."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def atomic_write(path: Path, write) -> None:
    """write(file) into a temporary file beside `path`, flush it to disk, then rename over `path`.

    A crash at any point leaves either the old file or the new one, never a torn one.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(path: Path, **state: Any) -> None:
    """Save tensors, state dicts and plain Python values (no pickled objects)."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    return torch.load(path, map_location=device, weights_only=True)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode() + b"\n"))
