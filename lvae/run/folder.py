"""A run folder: one process at a time, and files that are written whole.

- `hold_run_dir` takes an exclusive lock on `<run dir>/.lock` (fcntl.flock, released by
  the kernel when its process dies, so a crash leaves no stale lock). A second process
  on the same directory gets RunDirBusy, naming the holder's PID and host, before it
  has read or written anything there.
- Every write goes to a temporary file with a name of its own, is flushed to disk and
  renamed over the old file: a crash, a full disk or a kill at any moment leaves the
  previous version intact.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from lvae.data.files import folders_to_create, remove_empty_folders

LOCK_FILE = ".lock"

log = logging.getLogger(__name__)


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
    new_folders = folders_to_create([run_dir])
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
        reason = os_error_behind(error) or _no_space_left(path.parent)
        if reason is None:
            raise
        # A failed write names no file, or the temporary one: name the file written.
        raise OSError(reason.errno, reason.strerror or str(reason), str(path)) from error
    finally:
        tmp.unlink(missing_ok=True)


def os_error_behind(error: BaseException) -> OSError | None:
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


@contextlib.contextmanager
def naming_failures(path: Path) -> Iterator[None]:
    """An OSError while another library writes `path` (matplotlib, PIL) names the file, as atomic_write's do:
    a full disk's "[Errno 28] No space left on device" alone does not say what was lost."""
    try:
        yield
    except OSError as error:
        if error.filename:
            raise
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode() + b"\n"))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


