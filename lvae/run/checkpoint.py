"""The files of a run directory: one writer at a time, atomic writes, checkpoints that prove their integrity.

- `hold_run_dir` takes an exclusive lock on `<run dir>/.lock` (fcntl.flock, released by
  the kernel when its process dies, so a crash leaves no stale lock). A second process
  on the same directory gets RunDirBusy, naming the holder's PID and host, before it
  has read or written anything there.
- Every write goes to a temporary file with a name of its own, is flushed to disk and
  renamed over the old file: a crash, a full disk or a kill at any moment leaves the
  previous version intact.
- A checkpoint holds everything that decides the rest of a run (model, optimiser,
  training position, every RNG state), so that a resumed run continues exactly as an
  uninterrupted one would, plus the SHA-256 of that content, checked on every load:
  a damaged file is refused instead of loading wrong weights. It stays loadable with
  `torch.load(path, weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import logging
import os
import pickle
import random
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch

FORMAT_VERSION = 2  # 2 adds the checksum; format 1 files (no checksum) still load
HEADER_KEYS = ("format_version", "sha256")
LOCK_FILE = ".lock"

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, written, or does not belong to this run."""


class RunDirBusy(RuntimeError):
    """Another process holds the run directory."""


class RunDirHold:
    """A held run directory. `accepted` is set once the run may write there (lvae.run.train): a run
    released before that was refused, and leaves no lock file or folder that it created."""

    def __init__(self) -> None:
        self.accepted = False


@contextlib.contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[RunDirHold]:
    """Hold run_dir's lock for the duration, or raise RunDirBusy without changing anything there.

    The lock file records its holder (PID, host, start) for the message that another process
    gets. A hold released before `accepted` removes the lock file and the folders it created
    (when they are empty), so that a refused launch leaves the folder as it found it.
    """
    new_folders = folders_to_create(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    hold = RunDirHold()
    try:
        fd, created = _lock(run_dir, lock)
    except BaseException:
        remove_empty_folders(new_folders)
        raise
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except OSError as error:  # a full disk: name the file, as every other failed write does
            raise OSError(error.errno, error.strerror, str(lock)) from None
        yield hold
    finally:
        if not hold.accepted and created:
            lock.unlink(missing_ok=True)  # while still held: see _lock
        else:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # released: the next reader finds no stale holder
        os.close(fd)  # closing releases the lock
        if not hold.accepted:
            remove_empty_folders(new_folders)


def _lock(run_dir: Path, lock: Path) -> tuple[int, bool]:
    """(fd of `lock`, locked; whether this call created the file). A refused holder removes the
    lock file that it created while it still holds it, so the file locked must still be the one
    at `lock`: a process that opened the removed file tries again."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            created = True
        except FileExistsError:
            try:
                fd, created = os.open(lock, os.O_RDWR), False  # no O_TRUNC: the holder's record stays
            except FileNotFoundError:
                continue  # removed in between by a refused holder
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            message = (f"{run_dir} is in use by {_lock_holder(fd)}: two processes writing one run would "
                       "corrupt it, so this one stops without touching it. Wait for that process to "
                       "end (or stop it), then run this command again.")
            os.close(fd)
            raise RunDirBusy(message) from None
        except OSError as error:
            if error.errno not in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK):
                os.close(fd)
                raise
            # A file system without locks (Lustre mounted with noflock): refusing would make it unusable.
            log.warning("cannot lock %s (%s): make sure that no other process works on this run directory.",
                        run_dir, error.strerror)
            return fd, False  # without a lock, removing the file could pull it from under another process
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd, created
        os.close(fd)


def folders_to_create(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    absent = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        absent.append(folder)
    return absent


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove each of `folders` (deepest first) that is empty: what a refused launch created."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): it holds something that is not ours to remove
            return


class RunLogFile(logging.FileHandler):
    """The run's log file (Hydra's job log, configs/hydra/job_logging/run_log.yaml), written only once
    the run is accepted (`open_run_logs`): until then its records wait in memory, so that a launch that
    is refused (another process holds the run, its config does not fit the record there, bad input)
    writes nothing into the run folder; the console shows them either way. A write that fails (a full
    disk) is reported once, in one line, instead of a traceback per record."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None) -> None:
        super().__init__(filename, mode, encoding, delay=True)
        self.held: list[logging.LogRecord] | None = []  # None once the run is accepted
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is not None:
            self.held.append(record)
        elif not self.failed:
            try:
                super().emit(record)
            except Exception:  # opening the file is not covered by the handler's own error handling
                self.handleError(record)

    def open_for_the_run(self) -> None:
        held, self.held = self.held or [], None
        for record in held:
            self.emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            error = sys.exc_info()[1]
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            print(f"could not write the run's log {self.baseFilename} ({reason}): the rest of the log goes to the "
                  "console only.", file=sys.stderr)


def open_run_logs() -> None:
    """The run is accepted: its log file (if the process logs to one) receives what was held and all after."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, RunLogFile):
            handler.open_for_the_run()


def _lock_holder(fd: int) -> str:
    # The holder writes its record right after taking the lock: give it a moment.
    for _ in range(20):
        with contextlib.suppress(ValueError, KeyError, TypeError):  # empty or half-written
            holder = json.loads(os.pread(fd, 4096, 0))
            return f"process {holder['pid']} on host {holder['host']} (running since {holder['since']})"
        time.sleep(0.05)
    return "another process (it has not recorded its PID and host)"


def _temporary_name(path: Path) -> Path:
    """A name of its own beside `path` for every write: concurrent or stale writes never share one."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete the temporary files of writes that a kill cut short; call it while holding run_dir."""
    for path in run_dir.glob(".*.tmp"):
        path.unlink(missing_ok=True)


def atomic_write(path: Path, write) -> None:
    """write(file) into a temporary file beside `path`, flush it to disk, then rename over `path`."""
    tmp = _temporary_name(path)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)  # make the rename itself survive a power cut
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except (OSError, RuntimeError) as error:  # torch's zip writer turns a failed write into RuntimeError
        reason = _os_error_behind(error) or _no_space_left(path.parent)
        if reason is None:
            raise
        # A failed write names no file, or the temporary one: name the file written.
        raise OSError(reason.errno, reason.strerror or str(reason), str(path)) from error
    finally:
        tmp.unlink(missing_ok=True)


def _os_error_behind(error: BaseException) -> OSError | None:
    """The OSError that `error` is or wraps, if any."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _no_space_left(folder: Path) -> OSError | None:
    """ENOSPC when folder's file system is full: torch's zip writer can lose the OSError of a write
    that failed (it reports "unexpected pos ..."), but the disk still says why."""
    with contextlib.suppress(OSError):
        if os.statvfs(folder).f_bavail == 0:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode() + b"\n"))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


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
    reason = _os_error_behind(error)
    return (reason.strerror or str(reason)) if reason is not None else str(error)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Read a checkpoint with weights_only=True (a file from elsewhere cannot run code) and check its digest."""
    kept = "It was left untouched; move it away to start this run afresh."
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # truncated zip, foreign pickle, random bytes: all unreadable
        raise CheckpointError(f"checkpoint {path} is unreadable ({_load_failure(error)}). {kept}") from error
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


def _load_failure(error: Exception) -> str:
    """What torch.load found wrong, without the advice that torch attaches for its own users."""
    message = str(error).strip()
    if isinstance(error, pickle.UnpicklingError) and message.startswith("Weights only load failed"):
        # torch's text: a paragraph suggesting weights_only=False (never right for a checkpoint that
        # lvae wrote: it holds tensors and plain values only), the reason, then a documentation link.
        reasons = [p.strip() for p in message.split("\n\n")[1:] if p.strip() and not p.startswith("Check the doc")]
        reason = reasons[0].rstrip(".") if reasons else "an object that is not a tensor or a plain value"
        return (f"loading it safely (weights_only=True) was refused: {reason}; lvae writes only tensors and "
                "plain values, so the file is damaged or is not an lvae checkpoint, and nothing in it was run")
    return f"{type(error).__name__}: {message.splitlines()[0] if message else 'no details'}"
