"""Crash-safe, resumable runs; the NaN guard; one clear error for each bad input."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import lvae.checkpoint
import lvae.train
from lvae.checkpoint import CheckpointError, load_checkpoint
from lvae.config import ConfigError
from lvae.data import DatasetInvalidError, load_mnist
from lvae.report import differences_between_runs
from lvae.train import RunFailed, run

from .conftest import REPO, compose_config

TINY = ("model=lvae", "layers=2", "model.hidden_sizes=[32,16]", "model.latent_sizes=[4,2]",
        "train.batch_size=16", "warmup_epochs=3", "eval.iw_samples=16", "eval.train_subset=32",
        "device=cpu", "train.progress=false")


def _cli(run_dir: Path, data_root: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "train.py", *TINY, f"data.root={data_root}", f"hydra.run.dir={run_dir}", *extra]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return output


def _wait_for_checkpoint(run_dir: Path, process: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while not (run_dir / "checkpoint.pt").exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.time() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: a run of 60 epochs, never stopped."""
    from .conftest import write_synthetic_mnist

    root = write_synthetic_mnist(tmp_path_factory.mktemp("data"), n_train=64, n_test=16)
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    _finish(_cli(run_dir, root, "train.epochs=60", "train.checkpoint_every=1"))
    return root, run_dir


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_killed_and_resumed_run_is_bitwise_identical(uninterrupted, tmp_path, how):
    root, reference = uninterrupted
    run_dir = tmp_path / "run"
    process = _cli(run_dir, root, "train.epochs=60", "train.checkpoint_every=1")
    _wait_for_checkpoint(run_dir, process)
    time.sleep(random.Random(how).uniform(0.0, 0.5))
    process.send_signal(how)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == (-signal.SIGKILL if how == signal.SIGKILL else 128 + signal.SIGTERM), output
    status = json.loads((run_dir / "metrics.json").read_text())
    assert status["status"] == ("running" if how == signal.SIGKILL else "interrupted")
    assert status["epoch"] < 60, "the kill came after training had finished; the test proved nothing"
    if how == signal.SIGTERM:
        assert "run the same command again to resume" in output

    resumed = _finish(_cli(run_dir, root, "train.epochs=60", "train.checkpoint_every=1"))
    assert "resuming" in resumed
    assert differences_between_runs(reference, run_dir) == []
    # Once complete, the same command returns at once with the stored numbers.
    assert "run already complete" in _finish(_cli(run_dir, root, "train.epochs=60", "train.checkpoint_every=1"))


def test_resuming_with_a_changed_config_names_the_differing_keys(synthetic_mnist, tmp_path):
    cfg = compose_config(*TINY, f"data.root={synthetic_mnist}", "train.epochs=1")
    run(cfg, tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError) as error:
        run(compose_config(*TINY, f"data.root={synthetic_mnist}", "train.epochs=1", "train.lr=0.01",
                           "model=vae"), tmp_path)
    assert "model.name: 'lvae' -> 'vae'" in str(error.value) and "train.lr: 0.002 -> 0.01" in str(error.value)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(synthetic_mnist, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_bound = lvae.train.training_bound

    def poisoned_bound(*args, **kwargs):
        calls["n"] += 1
        bound = real_bound(*args, **kwargs)
        return bound * float("nan") if calls["n"] == 8 else bound  # step 8 = epoch 2 (6 steps an epoch)

    monkeypatch.setattr(lvae.train, "training_bound", poisoned_bound)
    cfg = compose_config(*TINY, f"data.root={synthetic_mnist}", "train.epochs=4", "train.checkpoint_every=1")
    with pytest.raises(RunFailed, match="epoch 2, step 8"):
        run(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "epoch 2, step 8" in metrics["reason"]
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["training"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point())


def test_full_disk_keeps_the_previous_checkpoint(synthetic_mnist, tmp_path, monkeypatch):
    cfg = compose_config(*TINY, f"data.root={synthetic_mnist}", "train.epochs=3", "train.checkpoint_every=1")
    real_save, saves = torch.save, {"n": 0}

    def save_until_disk_fills(obj, f):
        saves["n"] += 1
        if saves["n"] == 2:
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(lvae.checkpoint.torch, "save", save_until_disk_fills)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint is intact"):
        run(cfg, tmp_path)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["training"]["epoch"] == 1
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left behind"


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_checkpoint_is_reported_and_left_untouched(synthetic_mnist, tmp_path, damage):
    cfg = compose_config(*TINY, f"data.root={synthetic_mnist}", "train.epochs=1")
    run(cfg, tmp_path)
    path = tmp_path / "checkpoint.pt"
    damaged = path.read_bytes()[:200] if damage == "truncated" else os.urandom(500)
    path.write_bytes(damaged)
    (tmp_path / "metrics.json").unlink()
    with pytest.raises(CheckpointError, match="unreadable.*left untouched"):
        run(cfg, tmp_path)
    assert path.read_bytes() == damaged


def test_checkpoint_of_another_architecture_is_refused(synthetic_mnist, tmp_path):
    cfg = compose_config(*TINY, f"data.root={synthetic_mnist}", "train.epochs=1")
    run(cfg, tmp_path)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    checkpoint["model"] = {k: v for k, v in checkpoint["model"].items() if "upward" not in k}  # a VAE-like dict
    lvae.checkpoint.save_checkpoint(tmp_path / "checkpoint.pt", **checkpoint)
    (tmp_path / "metrics.json").unlink()
    with pytest.raises(CheckpointError, match="does not fit this model"):
        run(cfg, tmp_path)


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format_version": 1, "model": Payload()}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path / "checkpoint.pt")


@pytest.mark.parametrize("damage", ["truncated", "bad magic"])
def test_damaged_dataset_file_gets_a_clear_error(synthetic_mnist, damage):
    path = synthetic_mnist / "MNIST" / "raw" / "train-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00\x00\x99\x99" + data[4:])
    with pytest.raises(DatasetInvalidError, match="train-images-idx3-ubyte is not a valid IDX file"):
        load_mnist(compose_config(f"data.root={synthetic_mnist}").data, torch.device("cpu"))


def test_unwritable_output_directory_exits_with_one_message(synthetic_mnist, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    process = _cli(blocker / "run", synthetic_mnist, "train.epochs=1")
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "a_file" in output and "Not a directory" in output
    assert blocker.read_text() == "not a directory"


def test_run_comparison_sees_a_single_changed_parameter(synthetic_mnist, tmp_path):
    import shutil

    cfg = compose_config(*TINY, f"data.root={synthetic_mnist}", "train.epochs=1")
    run(cfg, tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert differences_between_runs(tmp_path / "a", tmp_path / "b") == []
    checkpoint = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    key = next(iter(checkpoint["model"]))
    checkpoint["model"][key].view(-1)[0] += 1e-6
    lvae.checkpoint.save_checkpoint(tmp_path / "b" / "checkpoint.pt", **checkpoint)
    assert differences_between_runs(tmp_path / "a", tmp_path / "b") == [f"parameter {key}"]


def test_a_config_key_added_later_keeps_old_runs_resumable():
    from lvae.config import run_differences

    cfg = compose_config(*TINY)
    stored = OmegaConf.to_container(cfg, resolve=True)
    del stored["train"]["lr_decay"]  # a run written before train.lr_decay existed
    assert run_differences(stored, cfg) == []
    assert run_differences(stored, compose_config(*TINY, "train.lr_decay=0.5")) == ["train.lr_decay: 1.0 -> 0.5"]
