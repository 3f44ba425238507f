"""Hydra entry point shared by `python train.py` and the `lvae-train` console script."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .checkpoint import CheckpointError
# CONFIG_DIR is absolute, so that the same configs serve `python train.py` and the console
# script (the package is installed in editable mode from this repository).
from .config import CONFIG_DIR, ConfigError  # importing lvae.config registers the schema
from .data import DatasetError
from .train import RunFailed, RunInterrupted, run

log = logging.getLogger(__name__)


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
        sys.exit(2)
    try:
        metrics = run(cfg, run_dir)
    except RunInterrupted as stop:
        log.warning("%s in %s; run the same command again to resume.", stop, run_dir)
        sys.exit(128 + stop.signum)
    except (ConfigError, DatasetError, CheckpointError, RunFailed, OSError) as error:
        message = f"{type(error).__name__}: {error}" if isinstance(error, OSError) else str(error)
        log.error("%s", message)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise
        sys.exit(2 if not isinstance(error, RunFailed) else 3)
    return metrics["test_log_likelihood"]["mean"]
