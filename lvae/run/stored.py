"""A run directory read back: its config, its metrics and its trained model.

`load_run` is the way into a finished run from Python (also as `lvae.load_run`): the
model comes back in eval mode with the batch-norm statistics its evaluation used (the
final checkpoint holds them), beside its config and its data. A published run (`python -m
lvae.report DIRS --publish results/NAME --weights`) holds weights.pt instead of checkpoint.pt:
the same model state, without what only resuming needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from lvae.run.checkpoint import load_checkpoint
from lvae.run.config import resolve_device, schema_defaults
from lvae.data import load_dataset
from lvae.data.images import ImageData
from lvae.core.models import HierarchicalVAE, build_model, merge_separate_head_maps
from lvae.run.settings import model_spec
from lvae.run.record import CHECKPOINT_FILE, CONFIG_FILE, WEIGHTS_FILE, read_config, read_record

# What reading a run back needs, each entry a file or files of which one is enough: the weights
# come from the checkpoint when the folder holds one (a run's own folder), else from weights.pt.
REQUIRED_FILES = ((CONFIG_FILE,), (CHECKPOINT_FILE, WEIGHTS_FILE))


class RunDirError(FileNotFoundError):
    """A run directory lacks a file that reading the run back needs."""


def check_run_dir(run_dir: Path) -> None:
    """Raise RunDirError naming what `run_dir` lacks of REQUIRED_FILES."""
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a directory")
    missing = [" or ".join(names) for names in REQUIRED_FILES if not any((run_dir / n).is_file() for n in names)]
    if missing:
        raise RunDirError(f"{run_dir} has no {' and no '.join(missing)}: neither a run directory of lvae.run.train "
                          "nor a run published with its weights (python -m lvae.report ... --publish DIR --weights)")


def is_published(run_dir: Path) -> bool:
    """Whether run_dir holds published weights instead of its run's checkpoint."""
    return not (run_dir / CHECKPOINT_FILE).is_file()


def stored_weights(run_dir: Path, device: torch.device) -> dict:
    """The model state dict of run_dir: from its checkpoint, else (a published run) from weights.pt.
    Both are checked against the checksum written with them."""
    return load_checkpoint(run_dir / (WEIGHTS_FILE if is_published(run_dir) else CHECKPOINT_FILE), device)["model"]


def stored_config(run_dir: Path, data_root: str | Path | None = None) -> DictConfig:
    """config.yaml of run_dir, its data where `data_root` says (data.root only says where the data lies,
    not what it is). By default that is the run's own data.root, except for a published run: its
    recorded root is that of the machine it trained on, so this machine's default is taken
    ($LVAE_DATA_ROOT, else ./data)."""
    cfg = read_config(run_dir)
    if data_root is not None:
        cfg.data.root = str(data_root)
    elif is_published(run_dir):
        cfg.data.root = schema_defaults()["data"]["root"]
    return cfg



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


def load_run(run_dir: str | Path, device: str | torch.device = "cpu",
             data_root: str | Path | None = None) -> TrainedRun:
    """The trained model of `run_dir` with its config, data and metrics.

    `run_dir` is a run's folder or a published run's (weights.pt in place of checkpoint.pt);
    its data is read from `data_root` (see `stored_config` for the default). A run still
    training comes back with its latest checkpoint, whose batch-norm statistics are the
    training-time running averages. Raises RunDirError when the directory holds no
    config.yaml, or neither checkpoint.pt nor weights.pt.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    device = resolve_device(device) if isinstance(device, str) else device
    cfg = stored_config(run_dir, data_root)
    weights = stored_weights(run_dir, device)  # a bad file fails before the data load
    data = load_dataset(cfg.data, device)
    return TrainedRun(trained_model(cfg, weights, data.dim, device), cfg, data, read_record(run_dir))
