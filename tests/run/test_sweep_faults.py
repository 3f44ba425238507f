"""A sweep in which jobs fail: every error a job can raise reaches the sweep's parent process intact (the
joblib and submitit launchers pickle it back), and the healthy jobs run to the end."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys

import pytest

from lvae.cli.train_command import EXIT_DIVERGED, JobFailed
from lvae.data import DatasetError, DatasetInvalidError, DatasetNotFoundError, SubsetError
from lvae.run.checkpoint import CheckpointError
from lvae.run.config import ConfigError
from lvae.run.folder import RunDirBusy
from lvae.run.outcomes import RunFailed, RunInterrupted, RunWriteFailed
from lvae.run.record import RecordError
from lvae.run.stored import RunDirError

from ..helpers import REPO
from ..helpers.datasets import write_synthetic_mnist
from .test_reliability import TINY

# Every error that a job (lvae.cli.train_command._train) can raise, with the attributes that say how it ended.
JOB_ERRORS = [
    (RunFailed("non-finite loss at step 4", 1, 4), ("epoch", "step")),
    (RunInterrupted(signal.SIGTERM, "stopped by SIGTERM during evaluation"), ("signum",)),
    (RunWriteFailed("could not write x/per_image.pt: No space left on device"), ()),
    (OSError(errno.ENOSPC, "No space left on device", "x/metrics.json"), ("errno", "strerror", "filename")),
    (ConfigError("layers=9 is not allowed"), ()),
    (DatasetError("bad data"), ()), (DatasetNotFoundError("MNIST not found"), ()), (SubsetError("too many"), ()),
    (DatasetInvalidError("truncated"), ()), (CheckpointError("damaged"), ()), (RunDirBusy("in use"), ()),
    (RecordError("x/metrics.json cannot be read"), ()), (RunDirError("x has no config.yaml"), ()),
    (JobFailed("x: non-finite loss", EXIT_DIVERGED), ("exit_code",)),
]


@pytest.mark.parametrize("error, attributes", JOB_ERRORS, ids=lambda e: type(e).__name__)
def test_every_error_of_a_job_survives_pickling(error, attributes):
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error)
    assert all(getattr(again, name) == getattr(error, name) for name in attributes)


@pytest.mark.slow  # two sweeps of four tiny jobs, in worker processes
@pytest.mark.parametrize("launcher", [("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),
                                      ("hydra/launcher=submitit_local",)])
def test_a_failing_job_leaves_the_healthy_jobs_of_a_sweep_completed(tmp_path, launcher):
    """Per learning rate, a job and one refused at run time (a test subset larger than the test set): the
    diverging job is reported with its cause, the healthy one completes, the refused ones leave no folder."""
    data_root = write_synthetic_mnist(tmp_path / "data", n_train=64, n_test=16)
    sweep = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "train.py", "-m", *TINY, "train.epochs=1", "eval.analyze=false",
                           f"data.root={data_root}", "train.lr=1e4,0.002", "eval.test_subset=4,100",
                           f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${train.lr}_${eval.test_subset}", *launcher],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert done.returncode == 1, done.stdout  # Hydra's answer for a sweep with a failed job
    assert "Traceback" not in done.stdout and "BrokenProcessPool" not in done.stdout, done.stdout
    assert "Error executing job with overrides" in done.stdout and "train.lr=10000.0" in done.stdout
    assert "non-finite loss or gradient" in done.stdout, "the failed job's real cause"
    statuses = {folder.name: json.loads((folder / "metrics.json").read_text())["status"]
                for folder in sweep.iterdir() if folder.is_dir() and not folder.name.startswith(".")}
    assert statuses == {"10000.0_4": "failed", "0.002_4": "completed"}, done.stdout
