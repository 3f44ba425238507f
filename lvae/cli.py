"""Hydra entry point shared by `python train.py` and the `lvae-train` console script.

Exit codes: 0 done (or already complete), 2 bad input (config, data, checkpoint, an
unusable output directory, a full disk), 3 a non-finite loss, 75 the run directory is
in use by another process, 128 + N stopped by signal N.

The record of a run's launch (`.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml`) is
written by `lvae.train.run` once the run holds its directory and is accepted, not by
Hydra before the task starts (configs/config.yaml sets `hydra.output_subdir: null`): a
launch that is refused (another process holds the run, or its config does not match the
checkpoint) leaves the record of the run as it was.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .checkpoint import CheckpointError, RunDirBusy
# CONFIG_DIR is absolute, so that the same configs serve `python train.py`, `python -m lvae.cli`
# and the console script, from any directory.
from .config import CONFIG_DIR, ConfigError  # importing lvae.config registers the schema
from .data import DatasetError
from .train import RunFailed, RunInterrupted, run

log = logging.getLogger(__name__)

EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_BUSY = 2, 3, 75  # 75 = EX_TEMPFAIL: try again later


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def train(cfg: DictConfig) -> float:
    """Train and evaluate one run; returns the test log-likelihood (for sweepers).

    Expected failures end with one clear message. A single run exits non-zero at
    once; in a sweep the error is raised, so Hydra runs the other jobs and reports
    the failed one at the end.
    """
    hydra_cfg = HydraConfig.get()
    run_dir = Path(cfg.resume) if cfg.resume else Path(hydra_cfg.runtime.output_dir)
    if cfg.resume and not (run_dir / "checkpoint.pt").exists():
        log.error("resume=%s: no checkpoint.pt in that directory.", cfg.resume)
        sys.exit(EXIT_BAD_INPUT)
    try:
        metrics = run(cfg, run_dir, _launch_record(cfg))
    except RunInterrupted as stop:
        log.warning("%s in %s; run the same command again to resume.", stop, run_dir)
        sys.exit(128 + stop.signum)
    except (ConfigError, DatasetError, CheckpointError, RunFailed, RunDirBusy, OSError) as error:
        message = f"{type(error).__name__}: {error}" if isinstance(error, OSError) else str(error)
        log.error("%s", message)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise
        sys.exit(EXIT_DIVERGED if isinstance(error, RunFailed) else EXIT_BUSY if isinstance(error, RunDirBusy)
                 else EXIT_BAD_INPUT)
    return metrics["test_log_likelihood"]["mean"]


def _launch_record(cfg: DictConfig) -> dict[str, str]:
    """The files Hydra would have written into .hydra/ for this job (see the module docstring)."""
    hydra_cfg = HydraConfig.instance().cfg  # {"hydra": ...}, as Hydra saves it
    return {".hydra/config.yaml": OmegaConf.to_yaml(cfg), ".hydra/hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
            ".hydra/overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task)}


def unusable_directory(path: Path) -> Optional[str]:
    """Why no run directory can be made at `path` (a file in the way, no write permission), or None."""
    for folder in (path, *path.parents):
        if folder.is_dir():
            return None if os.access(folder, os.W_OK | os.X_OK) else f"{folder} is not writable"
        if folder.exists() or folder.is_symlink():
            return f"{folder} exists and is not a folder"
    return None


class OutputDirCheck(Callback):
    """Checks the output directory before Hydra creates it (configs/config.yaml lists this callback), so
    that a path under a regular file or in a read-only folder ends in one message, not Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(directory: str, key: str) -> None:
        reason = unusable_directory(Path(directory).absolute())
        if reason is not None:
            # Hydra's logging is not set up yet, and a SystemExit passes through its error report.
            print(f"cannot use {directory} as the output directory: {reason}. Choose another {key}=... "
                  "(or move what is in the way).", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":  # python -m lvae.cli: what lvae.reproduce runs
    train()
