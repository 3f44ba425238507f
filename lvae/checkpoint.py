"""Checkpoints: state dicts and plain values only, written atomically, read with weights_only=True.

A checkpoint holds everything that decides the rest of a run (model, optimiser,
training position, every RNG state), so that a resumed run continues exactly as
an uninterrupted one would. Writes go to a temporary file that is flushed and
renamed over the old one: a crash, a full disk or a kill at any moment leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to this run."""


def atomic_write(path: Path, write) -> None:
    """write(file) into a temporary file beside `path`, flush it to disk, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode() + b"\n"))


def capture_rng_state() -> dict:
    """Python, NumPy (when installed), torch CPU and every CUDA device's generator."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached)
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def save_checkpoint(path: Path, **state: Any) -> None:
    """Save tensors, state dicts and plain Python values (nothing that needs unpickling code)."""
    try:
        atomic_write(path, lambda f: torch.save({"format_version": FORMAT_VERSION, **state}, f))
    except OSError as error:
        kept = "the previous checkpoint is intact" if path.exists() else "no checkpoint was written before"
        raise CheckpointError(f"could not write checkpoint {path} ({error.strerror or error}); {kept}.") from error


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Read a checkpoint with weights_only=True: a file from elsewhere cannot run code."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # truncated zip, foreign pickle, random bytes: all unreadable
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
            "It was left untouched; move it away to start this run afresh."
        ) from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not an lvae checkpoint (format {FORMAT_VERSION}); it was left untouched.")
    return checkpoint
