"""Fine-tuning: a run that starts from another run's final weights, with a decaying learning rate.

Two config keys drive it (lvae/run/config.py):
- `init_from`: a completed run directory, or a run published with its weights (results/...); a fresh
  run loads that run's final weights (with its batch-norm statistics) and then trains `train.epochs`
  epochs of its own with a fresh optimiser. Once the run has a checkpoint of its own, it resumes from that.
- `train.lr_decay`: the learning rate of epoch e (counted from 0) is
  `train.lr * train.lr_decay**e`. It is a function of the epoch alone, so a resumed run
  sets exactly the rate an uninterrupted one had; 1 keeps the rate constant.

lvae.run.train uses them through `load_initial_weights` (a fresh run with init_from set)
and `set_learning_rate` (at the start of every epoch).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lvae.core.models import merge_separate_head_maps
from lvae.run.checkpoint import CheckpointError, state_dict_mismatch
from lvae.run.config import ConfigError, TrainConfig
from lvae.run.record import is_complete, read_record, status_of
from lvae.run.stored import load_final_weights


def learning_rate(train_cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of epoch `epoch` (counted from 0)."""
    return train_cfg.lr * train_cfg.lr_decay**epoch


def set_learning_rate(optimizer: torch.optim.Optimizer, train_cfg: TrainConfig, epoch: int) -> None:
    """Give every parameter group the learning rate of `epoch`."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(train_cfg, epoch)


def load_initial_weights(model: nn.Module, run_dir: Path) -> None:
    """Load the final weights of the completed run in run_dir (its checkpoint, or a published run's weights.pt)
    into model.

    Raises ConfigError when run_dir holds no completed run (fine-tuning from a run still
    training would start from whatever its last checkpoint holds), CheckpointError when
    its checkpoint is unreadable or belongs to another architecture.
    """
    record = read_record(run_dir)
    if not is_complete(record):
        found = "no run there" if record is None else f"that run is {status_of(record)}"
        raise ConfigError(f"init_from={run_dir}: {found}. Fine-tuning starts from a completed run: "
                          "run that one to the end first (see configs/experiment/table1.yaml).")
    device = next(model.parameters()).device
    # a run of an older lvae (separate mean and variance maps per Gaussian head) is converted
    weights = merge_separate_head_maps(load_final_weights(run_dir, device)[1]["model"])
    mismatch = state_dict_mismatch(model.state_dict(), weights)
    if mismatch:
        raise CheckpointError(f"init_from={run_dir}: its checkpoint does not fit this model ({mismatch}): "
                              "fine-tune with the model, layers and sizes of that run.")
    try:
        model.load_state_dict(weights)
    except (RuntimeError, ValueError) as error:
        raise CheckpointError(f"init_from={run_dir}: its checkpoint does not fit this model: "
                              f"{' '.join(str(error).split())}") from error
