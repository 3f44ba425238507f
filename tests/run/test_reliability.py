"""Crash-safe, resumable runs; one writer per run directory; the NaN guard; one clear error for each bad input.

These tests call lvae.run.train.run in this process, with signals sent to itself at a chosen
step; tests/cli/test_reliability_cli.py does the same through the command line.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import lvae.run.checkpoint
import lvae.run.evaluation_progress
import lvae.run.folder
import lvae.run.loop
import lvae.run.train
from lvae.data import load_dataset
from lvae.data.errors import DatasetInvalidError
from lvae.run.checkpoint import CheckpointError, load_checkpoint
from lvae.run.config import ConfigError, compose_config, config_to_dict, validate
from lvae.run.evaluation_progress import EVALUATION_PROGRESS_FILE
from lvae.run.folder import RunDirBusy, atomic_write, hold_run_dir
from lvae.run.outcomes import RunFailed, RunInterrupted
from lvae.run.train import run

from ..helpers.datasets import write_synthetic_mnist
from ..helpers.reproducibility import differences_between_runs

TINY = ("model=lvae", "layers=2", "model.hidden_sizes=[32,16]", "model.latent_sizes=[4,2]",
        "train.batch_size=16", "warmup_epochs=3", "eval.iw_samples=16", "eval.train_subset=32",
        "device=cpu", "train.progress=false")
STEPS_PER_EPOCH = 6  # 96 synthetic training images, batches of 16


def _files(run_dir: Path) -> dict[str, bytes]:
    """Every file below run_dir and its bytes."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """The reference: a 2-epoch run, never stopped, with a point of the training curves after each
    epoch (so that every resume test also checks them); its config and data root."""
    root = write_synthetic_mnist(tmp_path_factory.mktemp("data"))
    cfg = compose_config(*TINY, f"data.root={root}", "train.epochs=2", "train.checkpoint_every=1",
                         "eval.analyze=false", "eval.curve_every=1", "eval.curve_iw_samples=8", "eval.curve_images=20")
    reference = tmp_path_factory.mktemp("reference")
    run(cfg, reference)
    return cfg, reference


@pytest.fixture
def signal_at(monkeypatch):
    """signal_at(signum, where, call): `where` (a function that lvae.run.train or lvae.run.loop calls) sends signum
    to this process on its call-th call, as SLURM or Ctrl-C would. The default actions (exit, or
    KeyboardInterrupt) are replaced meanwhile, so that a run that fails to handle a signal
    fails its test instead of ending pytest."""
    class Unhandled(Exception):
        pass

    def unhandled(signum, frame):
        raise Unhandled(f"{signal.Signals(signum).name} reached the handler outside the run")

    previous = {signum: signal.signal(signum, unhandled) for signum in (signal.SIGTERM, signal.SIGINT)}

    def arm(signum: int, where: str, call: int) -> None:
        module = lvae.run.loop if hasattr(lvae.run.loop, where) else lvae.run.train
        real, calls = getattr(module, where), {"n": 0}

        def sending(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == call:
                os.kill(os.getpid(), signum)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, where, sending)

    yield arm
    for signum, handler in previous.items():
        signal.signal(signum, handler)


# 1. A stop at any step, including the last of an epoch and the last of training, resumes exactly.
@pytest.mark.parametrize("step", [1, 3, STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH],
                         ids=["first-of-epoch", "middle", "last-of-epoch", "last-of-training"])
def test_stopped_at_any_step_resumes_bitwise_identical(two_epochs, signal_at, tmp_path, monkeypatch, step):
    cfg, reference = two_epochs
    signal_at(signal.SIGTERM, "training_bound", step)
    complete = (step - 1) // STEPS_PER_EPOCH  # the message counts as metrics.json and the resume line do
    with pytest.raises(RunInterrupted, match=f"stopped by SIGTERM at step {step}, {complete} complete epochs?; "
                                             "checkpoint written"):
        run(cfg, tmp_path)
    assert _status(tmp_path)["status"] == "interrupted"
    assert (_status(tmp_path)["step"], _status(tmp_path)["epoch"]) == (step, complete)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["training"]["step"] == step
    monkeypatch.undo()
    run(cfg, tmp_path)
    assert differences_between_runs(reference, tmp_path) == []


@pytest.mark.slow  # compiles the step twice (tens of seconds on 2 CPU cores)
def test_a_compiled_run_stopped_mid_epoch_resumes_bitwise_identical(two_epochs, signal_at, tmp_path, monkeypatch):
    """Within one mode, compiled too: the compiled step draws its noise from the generator the checkpoint saves.
    (kl_warmup_weight is called once per step outside the compiled part, so the signal comes from there.)"""
    cfg, _ = two_epochs
    cfg = replace(cfg, train=replace(cfg.train, compile=True))
    reference = tmp_path / "reference"
    run(cfg, reference)
    assert _status(reference)["compiled"] == {"train_epochs": 2, "evaluation": False}
    signal_at(signal.SIGTERM, "kl_warmup_weight", 3)
    with pytest.raises(RunInterrupted, match="at step 3, 0 complete epochs; checkpoint written"):
        run(cfg, tmp_path / "stopped")
    monkeypatch.undo()
    run(cfg, tmp_path / "stopped")
    assert differences_between_runs(reference, tmp_path / "stopped") == []


# 6. A signal during evaluation: a message, status `interrupted`, and a rerun that recovers.
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_evaluation_is_recorded_and_a_rerun_recovers(two_epochs, signal_at, tmp_path, monkeypatch,
                                                                  signum):
    cfg, reference = two_epochs
    signal_at(signum, "evaluate_model", 1)
    with pytest.raises(RunInterrupted, match=f"stopped by {signal.Signals(signum).name} during evaluation") as stop:
        run(cfg, tmp_path)
    assert stop.value.signum == signum
    status = _status(tmp_path)
    assert status["status"] == "interrupted" and "during evaluation" in status["reason"] and status["epoch"] == 2
    monkeypatch.undo()
    run(cfg, tmp_path)
    assert _status(tmp_path)["status"] == "completed"
    assert differences_between_runs(reference, tmp_path) == []


def test_a_signal_during_the_k_sample_pass_resumes_from_the_test_images_it_saved(two_epochs, tmp_path, monkeypatch):
    """A budget that makes chunks of 16 of the 32 test images and blocks of one chunk: SIGTERM before the second
    block leaves the first saved; the rerun computes only the second, and ends as a run never stopped."""
    cfg, _ = two_epochs
    cfg = replace(cfg, eval=replace(cfg.eval, memory_budget_mb=1))
    monkeypatch.setattr(lvae.run.evaluation_progress, "BLOCK_IMAGES", 16)
    run(cfg, tmp_path / "reference")
    real, calls = lvae.run.evaluation_progress.iw_log_likelihood_halves, {"n": 0}

    def stopping_at_the_second_block(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(lvae.run.evaluation_progress, "iw_log_likelihood_halves", stopping_at_the_second_block)
    with pytest.raises(RunInterrupted, match="during evaluation"):
        run(cfg, tmp_path / "stopped")
    assert (tmp_path / "stopped" / EVALUATION_PROGRESS_FILE).is_file()
    calls["n"] = 2  # no more signals: count the blocks the rerun computes
    run(cfg, tmp_path / "stopped")
    assert calls["n"] == 3, "only the block that was not saved"
    assert not (tmp_path / "stopped" / EVALUATION_PROGRESS_FILE).exists(), "deleted once metrics.json is written"
    assert differences_between_runs(tmp_path / "reference", tmp_path / "stopped") == []


# 2. One writer per run directory.
def test_a_run_directory_in_use_is_refused_untouched(two_epochs, tmp_path):
    cfg, reference = two_epochs
    for name, content in _files(reference).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    (tmp_path / "metrics.json").unlink()  # so that the run would have work to do
    before = _files(tmp_path)
    with hold_run_dir(tmp_path):
        with pytest.raises(RunDirBusy, match=f"in use by process {os.getpid()} on host {socket.gethostname()}"):
            run(cfg, tmp_path)
        assert _files(tmp_path).keys() - {".lock"} == before.keys() - {".lock"}
        assert all(_files(tmp_path)[name] == content for name, content in before.items() if name != ".lock")
    run(cfg, tmp_path)  # released: the run goes on
    assert _status(tmp_path)["status"] == "completed"


def test_a_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch, caplog):
    def no_locks(fd, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(lvae.run.folder.fcntl, "flock", no_locks)
    with hold_run_dir(tmp_path):
        assert "make sure that no other process works on this run directory" in caplog.text


def test_concurrent_atomic_writes_never_share_a_temporary_file(tmp_path):
    path = tmp_path / "file"

    def slow_writer(f):  # a second writer completes while this one is halfway
        f.write(b"first ")
        atomic_write(path, lambda g: g.write(b"second"))
        f.write(b"writer")

    atomic_write(path, slow_writer)
    assert path.read_bytes() == b"first writer"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


# 3. Checkpoints prove their integrity.
def test_a_checkpoint_damaged_by_one_byte_is_refused(two_epochs, tmp_path):
    cfg, reference = two_epochs
    damaged = bytearray((reference / "checkpoint.pt").read_bytes())
    damaged[len(damaged) // 2] ^= 0x01  # in the middle: tensor bytes, which torch.load reads without complaint
    (tmp_path / "checkpoint.pt").write_bytes(damaged)
    with pytest.raises(CheckpointError, match="is damaged: its content does not match the checksum"):
        run(cfg, tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == damaged


def test_resuming_with_a_changed_config_names_the_differing_keys(synthetic_mnist, tmp_path):
    cfg = compose_config(*TINY, f"data.root={synthetic_mnist}", "train.epochs=1", "eval.analyze=false")
    run(cfg, tmp_path)
    before = _files(tmp_path)
    with pytest.raises(ConfigError) as error:
        run(compose_config(*TINY, f"data.root={synthetic_mnist}", "train.epochs=1", "train.lr=0.01",
                           "model=vae"), tmp_path)
    assert "model.name: 'lvae' -> 'vae'" in str(error.value) and "train.lr: 0.002 -> 0.01" in str(error.value)
    assert _files(tmp_path) == before


def _poison_step(monkeypatch, step: int) -> None:
    calls = {"n": 0}
    real_bound = lvae.run.loop.training_bound

    def poisoned_bound(*args, **kwargs):
        calls["n"] += 1
        bound = real_bound(*args, **kwargs)
        return bound * float("nan") if calls["n"] == step else bound

    monkeypatch.setattr(lvae.run.loop, "training_bound", poisoned_bound)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(synthetic_mnist, tmp_path, monkeypatch):
    _poison_step(monkeypatch, 8)  # step 8 = epoch 2 (6 steps an epoch)
    cfg = compose_config(*TINY, f"data.root={synthetic_mnist}", "train.epochs=4", "train.checkpoint_every=1")
    with pytest.raises(RunFailed, match=r"step 8, in epoch 2 .*the last good checkpoint \(step 6, 1 complete epoch\)"):
        run(cfg, tmp_path)
    metrics = _status(tmp_path)
    assert metrics["status"] == "failed" and "step 8, in epoch 2" in metrics["reason"]
    assert (metrics["failed_epoch"], metrics["failed_step"]) == (2, 8) and (metrics["epoch"], metrics["step"]) == (1, 6)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["training"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point())


def test_non_finite_loss_before_any_checkpoint_says_there_is_none(synthetic_mnist, tmp_path, monkeypatch):
    _poison_step(monkeypatch, 2)
    cfg = compose_config(*TINY, f"data.root={synthetic_mnist}", "train.epochs=4", "train.checkpoint_every=1")
    with pytest.raises(RunFailed, match="step 2, in epoch 1 .*no checkpoint had been written yet") as error:
        run(cfg, tmp_path)
    assert "last good checkpoint" not in str(error.value)
    metrics = _status(tmp_path)
    assert (metrics["failed_epoch"], metrics["failed_step"], metrics["step"]) == (1, 2, 0)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_full_disk_keeps_the_previous_checkpoint(synthetic_mnist, tmp_path, monkeypatch):
    cfg = compose_config(*TINY, f"data.root={synthetic_mnist}", "train.epochs=3", "train.checkpoint_every=1")
    real_save, saves = torch.save, {"n": 0}

    def save_until_disk_fills(obj, f):
        saves["n"] += 1
        if saves["n"] == 2:
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(lvae.run.checkpoint.torch, "save", save_until_disk_fills)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint is intact"):
        run(cfg, tmp_path)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["training"]["epoch"] == 1
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left behind"
    assert _status(tmp_path)["status"] == "failed" and "No space left" in _status(tmp_path)["reason"]


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_checkpoint_is_reported_and_left_untouched(two_epochs, tmp_path, damage):
    cfg, reference = two_epochs
    path = tmp_path / "checkpoint.pt"
    damaged = (reference / "checkpoint.pt").read_bytes()[:200] if damage == "truncated" else os.urandom(500)
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match="unreadable.*left untouched"):
        run(cfg, tmp_path)
    assert path.read_bytes() == damaged


def test_checkpoint_of_another_architecture_is_refused_naming_the_keys(two_epochs, tmp_path):
    cfg, reference = two_epochs
    checkpoint = load_checkpoint(reference / "checkpoint.pt")
    checkpoint["model"] = {k: v for k, v in checkpoint["model"].items() if "upward" not in k}  # a VAE-like dict
    lvae.run.checkpoint.save_checkpoint(tmp_path / "checkpoint.pt", **checkpoint)
    missing = next(k for k in load_checkpoint(reference / "checkpoint.pt")["model"] if "upward" in k)
    with pytest.raises(CheckpointError, match=f"does not fit this model: it lacks {missing}"):
        run(cfg, tmp_path)


def test_checkpoint_that_would_run_code_is_refused_with_the_reason(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format_version": 1, "model": Payload()}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="unreadable") as error:
        load_checkpoint(tmp_path / "checkpoint.pt")
    message = str(error.value)
    assert "system" in message and "left untouched" in message  # the reason, and what to do
    assert "weights_only` set to `False`" not in message, "torch's advice to its users is no advice for this file"


# 4, 8. Bad input refused before anything runs.
def test_gaussian_output_on_binary_data_is_refused_saying_what_to_use():
    for overrides in (("likelihood=gaussian",), ("likelihood=gaussian", "data=binarized_mnist")):
        with pytest.raises(ConfigError, match="data.binarize=false data.dequantize=true"):
            validate(compose_config(*overrides))
    validate(compose_config("likelihood=gaussian", "data.binarize=false", "data.dequantize=true"))


def test_a_key_added_with_plus_must_exist():
    with pytest.raises(ConfigError, match=r"lyers is not a setting .*did you mean layers\?"):
        validate(compose_config("+lyers=5"))
    with pytest.raises(ConfigError, match=r"train\.foo is not a setting"):
        validate(compose_config("+train.foo=1"))


@pytest.mark.parametrize("damage", ["truncated", "bad magic"])
def test_damaged_dataset_file_gets_a_clear_error(synthetic_mnist, damage):
    path = synthetic_mnist / "MNIST" / "raw" / "train-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00\x00\x99\x99" + data[4:])
    with pytest.raises(DatasetInvalidError, match="train-images-idx3-ubyte is not a valid IDX file"):
        load_dataset(compose_config(f"data.root={synthetic_mnist}").data, torch.device("cpu"))


def test_run_comparison_sees_a_single_changed_parameter(two_epochs, tmp_path):
    import shutil

    _, reference = two_epochs
    shutil.copytree(reference, tmp_path / "b")
    assert differences_between_runs(reference, tmp_path / "b") == []
    checkpoint = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    key = next(iter(checkpoint["model"]))
    checkpoint["model"][key].view(-1)[0] += 1e-6
    lvae.run.checkpoint.save_checkpoint(tmp_path / "b" / "checkpoint.pt", **checkpoint)
    assert differences_between_runs(reference, tmp_path / "b") == [f"parameter {key}"]


def test_a_config_key_added_later_keeps_old_runs_resumable():
    from lvae.run.config import run_differences

    cfg = compose_config(*TINY)
    stored = config_to_dict(cfg)
    del stored["train"]["lr_decay"]  # a run written before train.lr_decay existed
    assert run_differences(stored, cfg) == []
    assert run_differences(stored, compose_config(*TINY, "train.lr_decay=0.5")) == ["train.lr_decay: 1.0 -> 0.5"]
