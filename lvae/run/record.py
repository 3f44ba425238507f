"""A run's folder and its record: the one place that knows the folder's files and reads or writes metrics.json.

A run folder (Hydra's output dir, or any folder given to `lvae.run.train.run`) holds:

    config.yaml      the fully resolved config the run was started with
    checkpoint.pt    model, optimiser, training position, RNG states and their checksum (lvae.run.checkpoint)
    metrics.json     the record: status, end-of-run numbers, per-epoch history, provenance
    per_image.pt     every evaluated test image's estimates and its index in the test set
    tensorboard/     scalars per epoch
    analysis.json    the end-of-run analysis (active units, digit accuracy per layer), beside its figures
    weights.pt       (a published run, instead of checkpoint.pt) the model alone: `write_weights`
    .lock            held by the one process that works on the run (lvae.run.folder.hold_run_dir)

The record's `status` is a `Status`; "complete" means one thing everywhere (`is_complete`,
and `is_complete_for` a config), and the keys that say what a run is come from `run_identity`.
"""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from lvae.run.checkpoint import load_checkpoint, load_failure, save_checkpoint
from lvae.run.config import Config, ConfigError, config_to_dict, evaluation_settings, read_config_file, run_differences
from lvae.run.folder import atomic_write, write_json
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
    unreadable = "unreadable"  # a record that cannot be trusted (`record_problem`): a report leaves its numbers out
    other_numerics = "other numerics"  # completed by another numerics version: lvae.paper leaves its numbers out

    def __str__(self) -> str:
        return self.value


WRITTEN_STATUSES = tuple(status.value for status in (Status.running, Status.completed, Status.interrupted, Status.failed))


class RecordError(ValueError):
    """A file of a run's record that cannot be read or says nothing valid; the message names the file."""


def read_record(run_dir: Path) -> dict | None:
    """metrics.json of run_dir, or None when the run has written none yet; RecordError when it is no record
    (not JSON, e.g. truncated; not an object; a status that lvae does not write)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecordError(f"{path} cannot be read ({error}): is it truncated or damaged?") from None
    if not isinstance(record, dict):
        raise RecordError(f"{path} holds a {type(record).__name__}, not a run's record (a JSON object)")
    if record.get("status") not in WRITTEN_STATUSES:
        raise RecordError(f"{path} has the status {record.get('status')!r}, which lvae does not write")
    return record


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Replace metrics.json atomically (a crash leaves the previous version intact)."""
    write_json(run_dir / METRICS_FILE, record)


def write_per_image(run_dir: Path, per_image: dict[str, torch.Tensor]) -> None:
    """per_image.pt: each evaluated test image's estimates ((N,) float64) and `test_indices`, the images'
    indices in the test set."""
    # Each tensor copied to storage of its own: torch.save writes a view's whole storage (the indices of a
    # 50-image subset are a slice of the 10,000-index order).
    compact = {key: value.clone() for key, value in per_image.items()}
    atomic_write(run_dir / PER_IMAGE_FILE, lambda f: torch.save(compact, f))


def read_per_image(run_dir: Path) -> dict[str, torch.Tensor] | None:
    """per_image.pt of run_dir, or None when it has none (runs older than the per-image estimates);
    RecordError when it cannot be read (damaged, truncated, or a pickle that would run code: refused
    by weights_only=True) or holds no per-image estimates."""
    path = run_dir / PER_IMAGE_FILE
    if not path.is_file():
        return None
    try:
        per_image = torch.load(path, weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle, random bytes: all unreadable (as for a checkpoint)
        raise RecordError(f"{path} cannot be read ({load_failure(error, 'an lvae per_image.pt')})") from None
    if not isinstance(per_image, dict) or not all(isinstance(v, torch.Tensor) for v in per_image.values()) \
            or "test_log_likelihood" not in per_image:
        raise RecordError(f"{path} holds no per-image estimates (a dict of tensors with test_log_likelihood)")
    return per_image


# The numbers of a completed record that a report reads: each a {"mean": number, "stderr": number, ...}.
REPORTED_NUMBERS = ("test_log_likelihood", "test_elbo")


def record_problem(record: dict | None, per_image: dict[str, torch.Tensor] | None = None) -> str | None:
    """Why a record read by `read_record` cannot be trusted for its numbers, or None: a completed one that
    lacks what says which run it is, a number that is no number, or a mean of the test log-likelihood
    that is not that of its per_image.pt (an edited or mixed-up record)."""
    if not is_complete(record):
        return None
    lacking = [key for key in ("model", "layers", "seed") if key not in record]
    if lacking:
        return f"its completed record lacks {', '.join(lacking)}"
    for key in REPORTED_NUMBERS:
        numbers = record.get(key)
        if not isinstance(numbers, dict) or not all(isinstance(numbers.get(n), (int, float))
                                                    and not isinstance(numbers.get(n), bool) for n in ("mean", "stderr")):
            return f"its {key} has no numeric mean and stderr ({numbers!r})"
    if per_image is not None:
        values = per_image["test_log_likelihood"]
        mean = values.double().mean().item()
        if not math.isclose(mean, record["test_log_likelihood"]["mean"], rel_tol=1e-9, abs_tol=1e-9):
            return (f"its metrics.json says a test log-likelihood of {record['test_log_likelihood']['mean']!r}, but "
                    f"its {PER_IMAGE_FILE} gives {mean!r} over its {len(values)} images: the record was edited or "
                    "mixed up with another run's")
    return None


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


def read_config(run_dir: Path) -> Config | None:
    """config.yaml of run_dir (the fully resolved config the run was started with) as a Config, with the
    defaults of keys added since (lvae.run.config.to_config), or None."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return read_config_file(path)
    except ConfigError as error:
        raise RecordError(str(error)) from None


def differences_from_stored(stored: Config, cfg: Config, completed: bool) -> list[str]:
    """'key: stored -> now' for every setting on which `cfg` is not the run that `stored` (its config.yaml)
    describes: its run-defining values and, for a completed run, also its epochs and evaluation settings
    (how it ran may differ: HOW_IT_RUNS)."""
    differences = run_differences(config_to_dict(stored), cfg)
    if completed:
        if stored.train.epochs != cfg.train.epochs:
            differences.append(f"train.epochs: {stored.train.epochs!r} -> {cfg.train.epochs!r}")
        was, now = evaluation_settings(stored), evaluation_settings(cfg)
        differences += [f"eval.{key}: {was.get(key)!r} -> {now.get(key)!r}"
                        for key in sorted(was.keys() | now.keys()) if was.get(key) != now.get(key)]
    return differences


def is_complete_for(run_dir: Path, cfg: Config) -> dict | None:
    """The record when run_dir holds this very run, completed (`differences_from_stored` finds none)."""
    record, stored_cfg = read_record(run_dir), read_config(run_dir)
    if not is_complete(record) or stored_cfg is None:
        return None
    return None if differences_from_stored(stored_cfg, cfg, completed=True) else record


def run_identity(cfg: Config) -> dict[str, Any]:
    """What a run is, in the words of its record (and of a report's row when its config is lost)."""
    return {"model": str(cfg.model.name), "layers": cfg.layers, "batch_norm": cfg.batch_norm,
            "warmup_epochs": cfg.warmup_epochs, "likelihood": str(cfg.likelihood), "dataset": str(cfg.data.name),
            "epochs": cfg.train.epochs, "seed": cfg.seed}
