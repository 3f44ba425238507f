"""The same faults through the real command line (`train.py`): kills, concurrent launches, a full disk,
a refused rerun, an unusable output directory. Slow: each test starts a few Python processes."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lvae.run.checkpoint import load_checkpoint
from tests.run.test_reliability import TINY

from ..helpers import REPO
from ..helpers.datasets import write_synthetic_mnist
from ..helpers.reproducibility import differences_between_runs

pytestmark = pytest.mark.slow

# train.py's entry point on a disk that fills up during the second checkpoint write. The OS's
# ENOSPC reaches torch's zip writer through file.write, and torch turns it into a RuntimeError,
# as on a real full disk.
FULL_DISK = """
import builtins, errno, sys
import lvae.run.folder
from lvae.cli.train_command import train

real_open, checkpoint_writes = builtins.open, []

class FullDisk:
    def __init__(self, file):
        self.file = file
    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    def __getattr__(self, name):
        return getattr(self.file, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.file.close()

def open_on_a_filling_disk(path, mode="r", *args, **kwargs):
    file = real_open(path, mode, *args, **kwargs)
    if ".checkpoint.pt." in str(path):
        checkpoint_writes.append(path)
        if len(checkpoint_writes) == 2:
            return FullDisk(file)
    return file

lvae.run.folder.open = open_on_a_filling_disk
sys.argv[0] = "train.py"
train()
"""


def _cli(run_dir: Path, data_root: Path, *extra: str, program: tuple[str, ...] = ("train.py",)) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, *program, *TINY, f"data.root={data_root}", f"hydra.run.dir={run_dir}", *extra]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, returncode: int = 0) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == returncode, output
    return output


def _wait_for_checkpoint(run_dir: Path, process: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while not (run_dir / "checkpoint.pt").exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.time() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.02)


def _record(run_dir: Path) -> dict[str, bytes]:
    """The record of a run: its config and how it was launched."""
    return {name: (run_dir / name).read_bytes()
            for name in ("config.yaml", ".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml")}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_synthetic_mnist(tmp_path_factory.mktemp("data"), n_train=64, n_test=16)


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    """The reference: a run of 60 epochs, never stopped."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    _finish(_cli(run_dir, data_root, "train.epochs=60", "train.checkpoint_every=1"))
    return run_dir


def test_killed_and_resumed_run_is_bitwise_identical(data_root, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    process = _cli(run_dir, data_root, "train.epochs=60", "train.checkpoint_every=1")
    _wait_for_checkpoint(run_dir, process)
    time.sleep(random.Random(0).uniform(0.0, 0.5))
    process.kill()  # SIGTERM at every step is tested in tests/run/test_reliability.py
    output, _ = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL, output
    status = json.loads((run_dir / "metrics.json").read_text())
    assert status["status"] == "running" and status["epoch"] < 60, "killed after training: the test proved nothing"

    resumed = _finish(_cli(run_dir, data_root, "train.epochs=60", "train.checkpoint_every=1"))
    assert "resuming" in resumed
    assert differences_between_runs(uninterrupted, run_dir) == []
    # Once complete, the same command returns at once with the stored numbers.
    assert "run already complete" in _finish(_cli(run_dir, data_root, "train.epochs=60", "train.checkpoint_every=1"))


def test_two_launches_of_one_command_on_one_directory(data_root, tmp_path):
    """A sweep relaunched while its first launch still runs: one runs, the other stops at once."""
    run_dir, command = tmp_path / "run", ("train.epochs=1000", "train.checkpoint_every=1")
    launches = [_cli(run_dir, data_root, *command) for _ in range(2)]
    deadline = time.time() + 120
    while all(process.poll() is None for process in launches):
        assert time.time() < deadline, "neither launch stopped"
        time.sleep(0.05)
    refused, holder = sorted(launches, key=lambda process: process.poll() is None)
    output = _finish(refused, returncode=75)
    assert f"in use by process {holder.pid} on host {socket.gethostname()}" in output
    assert "Traceback" not in output
    _wait_for_checkpoint(run_dir, holder)
    holder.send_signal(signal.SIGTERM)
    assert "run the same command again to resume" in _finish(holder, returncode=128 + signal.SIGTERM)
    assert load_checkpoint(run_dir / "checkpoint.pt")["training"]["step"] >= 4  # its checksum verified
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    assert (run_dir / ".hydra" / "overrides.yaml").read_text().count("train.epochs=1000") == 1


def test_a_refused_rerun_keeps_the_record_of_the_run(data_root, uninterrupted):
    record = _record(uninterrupted)
    assert b"lr: 0.002" in record[".hydra/config.yaml"]
    output = _finish(_cli(uninterrupted, data_root, "train.epochs=60", "train.checkpoint_every=1", "train.lr=0.01"),
                     returncode=2)
    assert "train.lr: 0.002 -> 0.01" in output
    assert _record(uninterrupted) == record


def test_full_disk_while_checkpointing_fails_cleanly_and_keeps_the_previous_checkpoint(data_root, tmp_path):
    run_dir = tmp_path / "run"
    process = _cli(run_dir, data_root, "train.epochs=3", "train.checkpoint_every=1", program=("-c", FULL_DISK))
    output = _finish(process, returncode=2)
    assert f"could not write checkpoint {run_dir / 'checkpoint.pt'} (No space left on device); the previous " \
           "checkpoint is intact." in output
    assert "Traceback" not in output
    status = json.loads((run_dir / "metrics.json").read_text())
    assert status["status"] == "failed" and "No space left on device" in status["reason"]
    assert load_checkpoint(run_dir / "checkpoint.pt")["training"]["epoch"] == 1
    assert not list(run_dir.glob(".*.tmp")), "no temporary file is left behind"


def test_output_directory_under_a_file_exits_with_one_message(data_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    output = _finish(_cli(blocker / "run", data_root, "train.epochs=1"), returncode=2)
    assert f"{blocker} exists and is not a folder" in output and "hydra.run.dir" in output
    assert "Traceback" not in output
    assert blocker.read_text() == "not a directory"
