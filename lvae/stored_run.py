"""A run directory read back: its config, its metrics and its trained model.

`load_run` is the way into a finished run from Python (also as `lvae.load_run`): the
model comes back in eval mode with the batch-norm statistics its evaluation used (the
final checkpoint holds them), beside its config and its data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from .checkpoint import load_checkpoint
from .config import resolve_device
from .data import ImageData, load_dataset
from .models import HierarchicalVAE, build_model, merge_separate_head_maps
from .run_config import model_spec
from .run_record import CHECKPOINT_FILE, CONFIG_FILE, read_config, read_record

REQUIRED_FILES = (CONFIG_FILE, CHECKPOINT_FILE)


class RunDirError(FileNotFoundError):
    """A run directory lacks a file that reading the run back needs."""


def check_run_dir(run_dir: Path) -> None:
    """Raise RunDirError naming what `run_dir` lacks of REQUIRED_FILES."""
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a directory")
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise RunDirError(f"{run_dir} has no {' and no '.join(missing)}: not a finished run directory of lvae.train")



def trained_model(cfg: DictConfig, weights: dict, data_dim: int, device: torch.device) -> HierarchicalVAE:
    """The model `cfg` describes with a checkpoint's weights, in eval mode: its batch norm uses the
    stored statistics (at the end of a run, those of the evaluation). Weights of an older lvae, whose
    Gaussian heads had separate mean and variance maps, are merged into this code's layout."""
    model = build_model(model_spec(cfg), data_dim).to(device)
    model.load_state_dict(merge_separate_head_maps(weights))
    return model.eval()


@dataclass
class TrainedRun:
    """A run read back from its directory."""

    model: HierarchicalVAE  # eval mode, with the batch-norm statistics of the evaluation
    config: DictConfig  # config.yaml, the fully resolved config the run trained with
    data: ImageData  # its training and test images, on the model's device
    metrics: dict | None  # metrics.json (None while the run has written none)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> TrainedRun:
    """The trained model of `run_dir` with its config, data and metrics.

    A run still training comes back with its latest checkpoint, whose batch-norm
    statistics are the training-time running averages. Raises RunDirError when the
    directory holds no config.yaml or checkpoint.pt.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    device = resolve_device(device) if isinstance(device, str) else device
    cfg = read_config(run_dir)
    weights = load_checkpoint(run_dir / CHECKPOINT_FILE, device)["model"]  # a bad file fails before the data load
    data = load_dataset(cfg.data, device)
    return TrainedRun(trained_model(cfg, weights, data.dim, device), cfg, data, read_record(run_dir))
