"""Faults of issue 18, tried as a hostile user and environment would: a record without its checkpoint,
a diverging run, a full disk after the last checkpoint, sweeps and misspelt keys on the command line,
batch norm on one image, refused launches that must leave run folders as they were, fine-tuning from
another architecture, and the smaller ones (numbering, signals during compilation, presets that are
sweeps, symlinked runs in a report, a relative data root).

In-process where the fault lies below the command line (lvae.run.train.run, lvae.cli.train_command.check_command_line);
the few tests marked slow start the real train.py.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lvae.run.checkpoint
import lvae.run.folder
import lvae.run.logs
import lvae.run.loop
import lvae.run.train
from lvae.cli.train_command import EXIT_BAD_INPUT, check_command_line
from lvae.data.errors import DatasetNotFoundError
from lvae.report.runs import find_run_dirs
from lvae.run.checkpoint import CheckpointError, load_checkpoint
from lvae.run.config import ConfigError, compose_config, validate
from lvae.run.folder import hold_run_dir
from lvae.run.logs import RunLogFile
from lvae.run.outcomes import RunFailed, StopRequest, divergence_floor
from lvae.run.record import read_record
from lvae.run.sweep import sweep_jobs
from lvae.run.train import run

from ..helpers import REPO
from ..helpers.datasets import write_synthetic_mnist
from .test_reliability import TINY

ONE_EPOCH = ("train.epochs=1", "eval.analyze=false")


def _digests(run_dir: Path) -> dict[str, str]:
    """md5 of every file below run_dir: its record, to compare before and after a refused launch."""
    return {str(p.relative_to(run_dir)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_synthetic_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def finished(data_root, tmp_path_factory) -> Path:
    """A completed one-epoch run (to be copied, never changed)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    run(compose_config(*TINY, f"data.root={data_root}", *ONE_EPOCH), run_dir)
    return run_dir


def _copy(run_dir: Path, to: Path) -> Path:
    subprocess.run(["cp", "-a", str(run_dir), str(to)], check=True)
    return to


# 1. A run folder without its checkpoint still holds a record: another config does not overwrite it.
def test_a_record_without_its_checkpoint_is_not_replaced_by_another_run(data_root, finished, tmp_path):
    copy = _copy(finished, tmp_path / "copy")
    (copy / "checkpoint.pt").unlink()
    before = _digests(copy)
    with pytest.raises(ConfigError, match=r"holds the record of another completed run .*but no checkpoint\.pt.*"
                                          r"layers: 2 -> 1.*train\.lr: 0\.002 -> 0\.01"):
        run(compose_config(*TINY, f"data.root={data_root}", *ONE_EPOCH, "layers=1", "train.lr=0.01"), copy)
    with pytest.raises(ConfigError, match=r"train\.epochs: 1 -> 2"):  # a completed record: its epochs count too
        run(compose_config(*TINY, f"data.root={data_root}", "train.epochs=2", "eval.analyze=false"), copy)
    (copy / "config.yaml").unlink()
    with pytest.raises(ConfigError, match="holds the metrics.json of a completed run but no config.yaml"):
        run(compose_config(*TINY, f"data.root={data_root}", *ONE_EPOCH), copy)
    del before["config.yaml"]
    assert _digests(copy) == before


# 2. Divergence: a finite but absurd bound fails the run, which keeps its last good checkpoint.
def test_a_diverging_run_fails_and_keeps_the_last_good_checkpoint(data_root, tmp_path, monkeypatch):
    calls, real_bound = {"n": 0}, lvae.run.loop.training_bound

    def exploding_bound(*args, **kwargs):  # from step 8 (epoch 2) on, a million times worse: finite
        calls["n"] += 1
        bound = real_bound(*args, **kwargs)
        return bound * 1e6 if calls["n"] >= 8 else bound

    monkeypatch.setattr(lvae.run.loop, "training_bound", exploding_bound)
    cfg = compose_config(*TINY, f"data.root={data_root}", "train.epochs=3", "train.checkpoint_every=1")
    with pytest.raises(RunFailed, match=r"diverged in epoch 2 .*nats per pixel worse than a model that learned "
                                        r"nothing.*the last good checkpoint \(step 6, 1 complete epoch\) was kept"):
        run(cfg, tmp_path)
    status = _status(tmp_path)
    assert status["status"] == "failed" and "test_log_likelihood" not in status  # no number to report
    assert (status["failed_epoch"], status["epoch"], status["step"]) == (2, 1, 6)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["training"]["epoch"] == 1


def test_an_untrained_model_scores_far_above_the_divergence_floor(data_root, tmp_path):
    """The floor cannot catch a healthy run: an untrained model (a learning rate too small to move it)
    is within about a nat per pixel of the model that learned nothing, ten nats per pixel above the
    floor, and training only improves on it."""
    metrics = run(compose_config(*TINY, f"data.root={data_root}", *ONE_EPOCH, "train.lr=1e-12"), tmp_path)
    untrained, pixels = metrics["history"][0]["train_objective"], 28 * 28
    learned_nothing = -math.log(2) * pixels
    assert abs(untrained - learned_nothing) < 1.5 * pixels
    assert divergence_floor("bernoulli", pixels) == pytest.approx(learned_nothing - 10 * pixels)
    assert divergence_floor("gaussian", pixels) == -10 * pixels


# 3. A full disk after the final checkpoint: one message naming the file, the status recorded when possible.
@pytest.mark.parametrize("also_metrics", [False, True], ids=["status-recorded", "status-not-recorded"])
def test_a_full_disk_after_the_final_checkpoint_names_the_file(data_root, tmp_path, monkeypatch, also_metrics):
    real_open, disk = open, {"full": False}

    def filling_open(path, mode="r", *args, **kwargs):  # full from the first write of per_image.pt on
        if "x" in mode and ".per_image.pt." in str(path):
            disk["full"] = True
        elif "x" in mode and not (disk["full"] and also_metrics):
            return real_open(path, mode, *args, **kwargs)
        if "x" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(lvae.run.folder, "open", filling_open, raising=False)
    with pytest.raises(OSError) as error:
        run(compose_config(*TINY, f"data.root={data_root}", *ONE_EPOCH), tmp_path)
    message = str(error.value)
    assert message.startswith(f"could not write {tmp_path / 'per_image.pt'}: No space left on device")
    assert "the last good checkpoint (step 6, 1 complete epoch) was kept" in message
    if also_metrics:
        assert f"could not be recorded in {tmp_path / 'metrics.json'}: No space left on device" in message
    else:
        assert _status(tmp_path)["status"] == "failed" and "per_image.pt" in _status(tmp_path)["reason"]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["training"]["epoch"] == 1


def test_a_full_disk_at_the_start_names_the_file(data_root, tmp_path, monkeypatch):
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lvae.run.folder.os, "pwrite", full)
    with pytest.raises(OSError, match=r"No space left on device") as error:
        run(compose_config(*TINY, f"data.root={data_root}", *ONE_EPOCH), tmp_path / "run")
    assert error.value.filename == str(tmp_path / "run" / ".lock")
    assert not (tmp_path / "run").exists()  # refused: neither its lock file nor its folder is left


def test_the_run_log_holds_its_lines_until_the_run_is_accepted(tmp_path):
    handler = RunLogFile(str(tmp_path / "train.log"))
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit(logging.LogRecord("lvae", logging.WARNING, __file__, 1, "before", None, None))
    assert not (tmp_path / "train.log").exists()
    lvae.run.logs.open_run_logs()  # not attached to the root logger: not this one's business
    assert not (tmp_path / "train.log").exists()
    handler.open_for_the_run()
    handler.emit(logging.LogRecord("lvae", logging.INFO, __file__, 1, "after", None, None))
    handler.close()
    assert (tmp_path / "train.log").read_text() == "before\nafter\n"


def test_a_run_log_that_cannot_be_written_says_so_once(tmp_path, capsys):
    handler = RunLogFile(str(tmp_path / "missing-folder" / "train.log"))
    record = logging.LogRecord("lvae", logging.INFO, __file__, 1, "a line", None, None)
    handler.open_for_the_run()
    for _ in range(3):
        handler.emit(record)
    assert capsys.readouterr().err.count("could not write the run's log") == 1
    handler.close()


# 4, 6, 9. The command line: every job checked before any starts; one message, exit 2.
@pytest.mark.parametrize("args, message", [
    (["lyers=5"], "lyers is not a setting of lvae (did you mean layers?)"),
    (["-m", "lyers=1,2"], "lyers is not a setting of lvae (did you mean layers?)"),
    (["+lyers=5"], "lyers is not a setting of lvae (did you mean layers?)"),
    (["-m", "layers=1,9"], "the sweep's job layers=9: layers=9 is not allowed"),
    (["layers=abc"], "Error merging override layers=abc: Value 'abc' of type 'str' could not be converted"),
    (["experiment=fig3"], "this command is a sweep (its preset sets variant="),
    (["train.batch_size=1"], "train.batch_size=1 gives batches of one image"),
    (["init_from=outputs/fig3-quick/layers=5,seed=0,variant=lvae_bn_wu"],
     "must be quoted: \"init_from='outputs/fig3-quick/layers=5,seed=0,variant=lvae_bn_wu'\""),
], ids=["misspelt", "misspelt-sweep", "misspelt-plus", "sweep-value", "type", "preset-sweep", "batch-of-one",
        "unquoted-folder"])
def test_the_command_line_is_refused_before_anything_runs(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        check_command_line(args)
    assert stop.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_run_folder_given_as_init_from_names_one_folder_of_the_sweep(tmp_path):
    """A fine-tuning run started from a run folder by hand, quoted as the refusal above says: its own folder is
    one folder below the sweep's (the path's slashes do not make a tree of folders), named after its base."""
    base = "outputs/fig3-quick/layers=5,seed=0,variant=lvae_bn_wu"
    [job] = sweep_jobs(["experiment=table1", "budget=quick", "finetune=mc10", f"init_from='{base}'"],
                       [f"hydra.sweep.dir={tmp_path}"])
    assert job.config.init_from == base and job.run_dir.parent == tmp_path
    assert "init_from=outputs_fig3-quick_layers=5,seed=0,variant=lvae_bn_wu," in job.run_dir.name  # without quotes


def test_a_good_command_line_passes_the_check():
    check_command_line(["-m", "layers=1,2", "device=cpu"])
    check_command_line(["model=vae", "layers=3"])
    check_command_line(["--cfg", "job", "lyers=3"])  # Hydra's own flags: left to Hydra


# 5. Batch norm needs two images per batch.
@pytest.mark.parametrize("overrides", [["train.batch_size=1"], ["data.train_subset=1"]])
def test_batch_norm_on_one_image_per_batch_is_refused_saying_what_to_use(overrides):
    with pytest.raises(ConfigError, match=r"batches of one image.*=2 or more, or batch_norm=false"):
        validate(compose_config(*overrides))
    validate(compose_config(*overrides, "batch_norm=false"))


# 7. A refused launch touches nothing in an existing folder and leaves no new one.
def test_a_refused_launch_leaves_no_new_folder_and_no_lock(tmp_path):
    missing_data = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError):
        run(compose_config(*TINY, f"data.root={missing_data}", "data.download=false", *ONE_EPOCH),
            tmp_path / "runs" / "new")
    assert list(tmp_path.iterdir()) == []


def test_a_refused_change_leaves_a_finished_run_and_its_log_untouched(data_root, finished, tmp_path):
    copy = _copy(finished, tmp_path / "copy")
    (copy / "train.log").write_text("the run's own log\n")
    before = _digests(copy)
    handler = RunLogFile(str(copy / "train.log"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with pytest.raises(ConfigError, match=r"train\.lr: 0\.002 -> 0\.01"):
            run(compose_config(*TINY, f"data.root={data_root}", *ONE_EPOCH, "train.lr=0.01"), copy)
        logging.getLogger("lvae.cli.train_command").error("refused")  # what the command line logs next: held, never written
    finally:
        root.removeHandler(handler)
        handler.close()
    assert _digests(copy) == before


# 8. Fine-tuning from a run of another architecture names the keys that differ.
def test_init_from_another_architecture_names_the_keys(data_root, finished, tmp_path):
    cfg = compose_config(*TINY, f"data.root={data_root}", *ONE_EPOCH, "layers=1", "model.hidden_sizes=[32]",
                         "model.latent_sizes=[4]", f"init_from={finished}")
    with pytest.raises(CheckpointError, match=r"does not fit this model \(it has extra \S+.*\): fine-tune with"):
        run(cfg, tmp_path / "run")


# 9. The smaller ones.
def test_a_signal_during_training_is_acknowledged_at_once(caplog):
    stop = StopRequest()
    with caplog.at_level(logging.WARNING), stop.deferring():
        stop._handle(signal.SIGTERM, None)
    assert stop.signum == signal.SIGTERM
    assert "SIGTERM received: stopping after the current training step" in caplog.text
    assert "finishes compiling first" in caplog.text


def test_a_report_follows_symlinked_run_folders(finished, tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "linked").symlink_to(finished, target_is_directory=True)
    (tmp_path / "results" / "loop").symlink_to(tmp_path / "results", target_is_directory=True)
    runs = find_run_dirs([tmp_path / "results"])
    assert [run_dir.name for run_dir in runs] == ["linked"] and read_record(runs[0])["status"] == "completed"


def test_a_relative_data_root_is_reported_as_the_absolute_folder_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError) as error:
        lvae.run.train.load_dataset(compose_config("data.root=relative/data", "data.download=false").data,
                                torch.device("cpu"))
    assert f"Looked in {tmp_path / 'relative' / 'data' / 'MNIST' / 'raw'}" in str(error.value)


# Through the real command line: the exit codes and what a refused launch leaves.
def _cli(*args: str, data_root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "train.py", *TINY, f"data.root={data_root}", *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


@pytest.mark.slow
def test_a_sweep_with_a_bad_value_starts_no_job(data_root, tmp_path):
    done = _cli("-m", "layers=1,9", *ONE_EPOCH, f"hydra.sweep.dir={tmp_path / 'sweep'}", data_root=data_root)
    assert done.returncode == EXIT_BAD_INPUT, done.stdout
    assert "the sweep's job layers=9: layers=9 is not allowed" in done.stdout and "Traceback" not in done.stdout
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_a_launch_refused_by_the_lock_writes_nothing_into_the_run(data_root, finished, tmp_path):
    copy = _copy(finished, tmp_path / "copy")
    (copy / "train.log").write_text("the running run's log\n")
    with hold_run_dir(copy) as hold:
        hold.accepted = True  # this test process is "the running run"
        before = _digests(copy)
        done = _cli(*ONE_EPOCH, f"hydra.run.dir={copy}", data_root=data_root)
        assert _digests(copy) == before
    assert done.returncode == 75 and "is in use by process" in done.stdout, done.stdout


@pytest.mark.slow
def test_a_launch_refused_for_missing_data_leaves_no_folder(tmp_path):
    done = _cli(*ONE_EPOCH, "data.download=false", f"hydra.run.dir={tmp_path / 'a' / 'b'}",
                data_root=tmp_path / "no-data")
    assert done.returncode == EXIT_BAD_INPUT and "MNIST not found" in done.stdout, done.stdout
    assert not (tmp_path / "a").exists()
