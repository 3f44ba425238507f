"""Hydra entry point shared by `python train.py` and the `lvae-train` console script."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .config import ConfigError, register_configs
from .data import DatasetNotFoundError
from .train import run

log = logging.getLogger(__name__)
register_configs()
# An absolute path, so that the same configs serve `python train.py` and the console
# script (the package is installed in editable mode from this repository).
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def train(cfg: DictConfig) -> float:
    """Train and evaluate one run; returns the test log-likelihood (for sweepers)."""
    try:
        metrics = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (ConfigError, DatasetNotFoundError) as error:
        log.error("%s", error)
        sys.exit(2)
    return metrics["test_log_likelihood"]["mean"]
