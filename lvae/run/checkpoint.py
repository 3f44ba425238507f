"""Checkpoints that prove their integrity.

A checkpoint holds everything that decides the rest of a run (model, optimiser,
training position, every RNG state), so that a resumed run continues exactly as an
uninterrupted one would, plus the SHA-256 of that content, checked on every load:
a damaged file is refused instead of loading wrong weights. It stays loadable with
`torch.load(path, weights_only=True)`. It is written whole (lvae/run/folder.py).
"""

from __future__ import annotations

import hashlib
import pickle
import random
from pathlib import Path
from typing import Any

import torch

from lvae.run.folder import atomic_write, os_error_behind

FORMAT_VERSION = 2  # 2 adds the checksum; format 1 files (no checksum) still load
HEADER_KEYS = ("format_version", "sha256")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, written, or does not belong to this run."""


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


def content_digest(payload: dict) -> str:
    """SHA-256 of a checkpoint's content as loaded: every key, value, tensor dtype, shape and byte.

    Computed on the objects rather than the file's bytes, so that the file stays a plain
    torch.save dict; any damage either makes the file unreadable or changes what it loads.
    """
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)};".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(f"dict {len(value)};".encode())
            for key, item in value.items():
                feed(key)
                feed(item)
        elif isinstance(value, (list, tuple)):
            digest.update(f"{type(value).__name__} {len(value)};".encode())
            for item in value:
                feed(item)
        else:  # str, int, float, bool, None: repr is exact and stable
            digest.update(f"{type(value).__name__} {value!r};".encode())

    feed(payload)
    return digest.hexdigest()


def save_checkpoint(path: Path, **state: Any) -> None:
    """Save tensors, state dicts and plain Python values (nothing that needs unpickling code) with their digest."""
    payload = {key: value for key, value in state.items() if key not in HEADER_KEYS}  # a loaded dict saved again
    checkpoint = {"format_version": FORMAT_VERSION, "sha256": content_digest(payload), **payload}
    try:
        atomic_write(path, lambda f: torch.save(checkpoint, f))
    except (OSError, RuntimeError) as error:  # torch's zip writer turns a failed write into RuntimeError
        kept = "the previous checkpoint is intact" if path.exists() else "no checkpoint was written before"
        raise CheckpointError(f"could not write checkpoint {path} ({_write_failure(error)}); {kept}.") from error


def _write_failure(error: BaseException) -> str:
    """The OS's reason (No space left on device, ...) behind a failed write, also when torch wrapped it."""
    reason = os_error_behind(error)
    return (reason.strerror or str(reason)) if reason is not None else str(error)


RUN_ADVICE = "It was left untouched; move it away to start this run afresh."


def load_checkpoint(path: Path, device: torch.device | str = "cpu", advice: str = RUN_ADVICE) -> dict:
    """Read a checkpoint with weights_only=True (a file from elsewhere cannot run code) and check its digest.
    A refusal ends with `advice`: what to do with the file (a run's checkpoint by default)."""
    kept = advice
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # truncated zip, foreign pickle, random bytes: all unreadable
        raise CheckpointError(f"checkpoint {path} is unreadable ({load_failure(error)}). {kept}") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format_version") not in (1, FORMAT_VERSION):
        raise CheckpointError(f"{path} is not an lvae checkpoint (format {FORMAT_VERSION}). {kept}")
    if checkpoint["format_version"] == FORMAT_VERSION or "sha256" in checkpoint:
        payload = {key: value for key, value in checkpoint.items() if key not in HEADER_KEYS}
        if checkpoint.get("sha256") != content_digest(payload):
            raise CheckpointError(f"checkpoint {path} is damaged: its content does not match the checksum "
                                  f"written with it, so its weights cannot be trusted. {kept}")
    return checkpoint


def state_dict_mismatch(expected: dict, found: dict, shown: int = 4) -> str:
    """'' when `found` has the keys and shapes of `expected` (a model's state dict), else which differ."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    reshaped = [f"{key} {tuple(found[key].shape)} instead of {tuple(expected[key].shape)}" for key in expected
                if key in found and found[key].shape != expected[key].shape]
    parts = []
    for what, keys in (("lacks", missing), ("has extra", unexpected), ("has other shapes for", reshaped)):
        if keys:
            more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
            parts.append(f"it {what} {', '.join(keys[:shown])}{more}")
    return "; ".join(parts)


def load_failure(error: Exception, kind: str = "an lvae checkpoint") -> str:
    """What torch.load found wrong in a file of `kind`, without the advice that torch attaches for its own users."""
    message = str(error).strip()
    if isinstance(error, pickle.UnpicklingError) and message.startswith("Weights only load failed"):
        # torch's text: a paragraph suggesting weights_only=False (never right for a checkpoint that
        # lvae wrote: it holds tensors and plain values only), the reason, then a documentation link.
        reasons = [p.strip() for p in message.split("\n\n")[1:] if p.strip() and not p.startswith("Check the doc")]
        reason = reasons[0].rstrip(".") if reasons else "an object that is not a tensor or a plain value"
        return (f"loading it safely (weights_only=True) was refused: {reason}; lvae writes only tensors and "
                f"plain values, so the file is damaged or is not {kind}, and nothing in it was run")
    return f"{type(error).__name__}: {message.splitlines()[0] if message else 'no details'}"
