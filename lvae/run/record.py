"""A run's folder and its record: the one place that knows the folder's files and reads or writes metrics.json.

A run folder (Hydra's output dir, or any folder given to `lvae.run.train.run`) holds:

    config.yaml      the fully resolved config the run was started with
    checkpoint.pt    model, optimiser, training position, RNG states and their checksum (lvae.run.checkpoint)
    metrics.json     the record: status, end-of-run numbers, per-epoch history, provenance
    per_image.pt     every evaluated test image's estimates and its index in the test set
    tensorboard/     scalars per epoch
    weights.pt       (a published run, instead of checkpoint.pt) the model alone: `write_weights`
    .lock            held by the one process that works on the run (lvae.run.folder.hold_run_dir)

The record's `status` is a `Status`; "complete" means one thing everywhere (`is_complete`,
and `is_complete_for` a config), and the keys that say what a run is come from `run_identity`.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lvae.run.checkpoint import load_checkpoint, save_checkpoint
from lvae.run.folder import atomic_write, write_json
from lvae.run.config import config_to_dict, evaluation_settings, run_differences
from lvae.run.provenance import numerics_version_of

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
PER_IMAGE_FILE = "per_image.pt"
WEIGHTS_FILE = "weights.pt"
TENSORBOARD_DIR = "tensorboard"
ANALYSIS_FILE = "analysis.json"


class Status(str, Enum):
    """Where a run stands. The first four are written by the run into metrics.json; a report also
    knows runs that have written no record yet (unfinished) or whose folder a sweep expects but
    nobody made (missing)."""

    running = "running"  # training; metrics.json holds the position of the checkpoint on disk
    completed = "completed"  # trained and evaluated: metrics.json holds every end-of-run number
    interrupted = "interrupted"  # stopped by a signal: a rerun resumes from the checkpoint
    failed = "failed"  # stopped by an error (`reason`): a rerun resumes from the last good checkpoint
    unfinished = "unfinished"  # a folder without metrics.json
    missing = "missing"  # expected by a sweep's multirun.yaml, no folder

    def __str__(self) -> str:
        return self.value


def read_record(run_dir: Path) -> dict | None:
    """metrics.json of run_dir, or None when the run has written none yet."""
    path = run_dir / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Replace metrics.json atomically (a crash leaves the previous version intact)."""
    write_json(run_dir / METRICS_FILE, record)


def write_per_image(run_dir: Path, per_image: dict[str, torch.Tensor]) -> None:
    """per_image.pt: each evaluated test image's estimates ((N,) float64) and `test_indices`, the images'
    indices in the test set."""
    atomic_write(run_dir / PER_IMAGE_FILE, lambda f: torch.save(per_image, f))


def read_per_image(run_dir: Path) -> dict[str, torch.Tensor] | None:
    """per_image.pt of run_dir, or None when it has none (runs older than the per-image estimates)."""
    path = run_dir / PER_IMAGE_FILE
    return torch.load(path, weights_only=True) if path.is_file() else None


def write_weights(run_dir: Path, out_dir: Path) -> Path:
    """out_dir/weights.pt of run_dir, a completed run: its final checkpoint's model state dict (the
    batch-norm statistics of its evaluation included), without what only resuming needs (optimiser
    state, training position, RNG states), beside the run's config and the numerics version and git
    commit of its record, which say what run and code the weights belong to. Written and read like a
    checkpoint (lvae.run.checkpoint: atomically, with its checksum, loadable with weights_only=True)."""
    record = read_record(run_dir)
    if not is_complete(record):
        raise ValueError(f"{run_dir} is {status_of(record)}, not completed: its checkpoint holds no final weights")
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
    save_checkpoint(out_dir / WEIGHTS_FILE, model=checkpoint["model"], config=checkpoint.get("config"),
                    numerics_version=numerics_version_of(record), git_commit=record.get("git_commit"))
    return out_dir / WEIGHTS_FILE


def status_of(record: dict | None) -> Status:
    """The status a record says (unfinished when there is none)."""
    if record is None:
        return Status.unfinished
    return Status(record.get("status", Status.unfinished))


def is_complete(record: dict | None) -> bool:
    """A run that has trained and been evaluated: its numbers are final."""
    return status_of(record) is Status.completed


def read_config(run_dir: Path) -> DictConfig | None:
    """config.yaml of run_dir (the fully resolved config the run was started with), or None."""
    path = run_dir / CONFIG_FILE
    return OmegaConf.load(path) if path.is_file() else None


def differences_from_stored(stored: dict, cfg: DictConfig, completed: bool) -> list[str]:
    """'key: stored -> now' for every setting on which `cfg` is not the run that `stored` (its config.yaml)
    describes: its run-defining values and, for a completed run, also its epochs and evaluation settings
    (how it ran may differ: HOW_IT_RUNS)."""
    differences = run_differences(stored, cfg)
    if completed:
        if stored["train"]["epochs"] != cfg.train.epochs:
            differences.append(f"train.epochs: {stored['train']['epochs']!r} -> {cfg.train.epochs!r}")
        was, now = evaluation_settings(stored["eval"]), evaluation_settings(config_to_dict(cfg.eval))
        differences += [f"eval.{key}: {was.get(key)!r} -> {now.get(key)!r}"
                        for key in sorted(was.keys() | now.keys()) if was.get(key) != now.get(key)]
    return differences


def is_complete_for(run_dir: Path, cfg: DictConfig) -> dict | None:
    """The record when run_dir holds this very run, completed (`differences_from_stored` finds none)."""
    record, stored_cfg = read_record(run_dir), read_config(run_dir)
    if not is_complete(record) or stored_cfg is None:
        return None
    return None if differences_from_stored(config_to_dict(stored_cfg), cfg, completed=True) else record


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """What a run is, in the words of its record (and of a report's row when its config is lost)."""
    return {"model": str(cfg.model.name), "layers": cfg.layers, "batch_norm": cfg.batch_norm,
            "warmup_epochs": cfg.warmup_epochs, "likelihood": str(cfg.likelihood), "dataset": str(cfg.data.name),
            "epochs": cfg.train.epochs, "seed": cfg.seed}
