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

from lvae.core.models import HierarchicalVAE, build_model, merge_separate_head_maps
from lvae.data import load_dataset
from lvae.data.files import default_data_root
from lvae.data.images import ImageData
from lvae.run.checkpoint import RUN_ADVICE, CheckpointError, load_checkpoint, state_dict_mismatch
from lvae.run.config import Config, resolve_device, run_differences
from lvae.run.record import CHECKPOINT_FILE, CONFIG_FILE, WEIGHTS_FILE, RecordError, read_config, read_record
from lvae.run.settings import model_spec

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


# What a refusal of a published run's weights.pt advises: it is no run of this machine's to start afresh.
PUBLISHED_ADVICE = ("It was left untouched; publish the run again from its run folder (python -m lvae.report RUN "
                    "--publish DIR --weights) or restore this folder from where it was published.")


def load_final_weights(run_dir: Path, device: torch.device | str = "cpu") -> tuple[Path, dict]:
    """The file of run_dir's final weights (its checkpoint, else a published run's weights.pt) and what it holds
    ("model": the state dict, batch-norm statistics included; "config"), checked against its checksum."""
    published = is_published(run_dir)
    path = run_dir / (WEIGHTS_FILE if published else CHECKPOINT_FILE)
    return path, load_checkpoint(path, device, PUBLISHED_ADVICE if published else RUN_ADVICE)


def stored_run(run_dir: Path, device: torch.device, data_root: str | Path | None = None) -> tuple[Config, dict]:
    """The config and model state dict of run_dir: the weights from its checkpoint, else (a published run) from
    weights.pt, both checked against the checksum written with them; the config is config.yaml, its data where
    `data_root` says (see `_data_root`). config.yaml is a copy for people: one that disagrees with the config
    stored with the weights (edited, or copied from another run) is refused, naming the keys."""
    path, checkpoint = load_final_weights(run_dir, device)
    cfg = read_config(run_dir)
    if checkpoint.get("config") is not None:
        differences = run_differences(checkpoint["config"], cfg)
        if differences:
            raise RecordError(f"{run_dir / CONFIG_FILE} disagrees with the config stored with the weights in {path} "
                              f"(key: stored -> config.yaml): {'; '.join(differences)}. The weights belong to the "
                              "stored config; put back the config.yaml of this run.")
    cfg.data.root = _data_root(run_dir, cfg, data_root)
    return cfg, checkpoint["model"]


def _data_root(run_dir: Path, cfg: Config, data_root: str | Path | None) -> str:
    """Where the run's data is read: `data_root` when given (data.root only says where the data lies, not what it
    is), else the run's own data.root, except for a published run: its recorded root is that of the machine it
    trained on, so this machine's default is taken ($LVAE_DATA_ROOT, else ./data)."""
    if data_root is not None:
        return str(data_root)
    return default_data_root() if is_published(run_dir) else cfg.data.root


def trained_model(cfg: Config, weights: dict, data_dim: int, device: torch.device,
                  source: str = "the stored weights") -> HierarchicalVAE:
    """The model `cfg` describes with a checkpoint's weights (from `source`, for the message), in eval mode: its
    batch norm uses the stored statistics (at the end of a run, those of the evaluation). Weights of an older
    lvae, whose Gaussian heads had separate mean and variance maps, are merged into this code's layout; weights
    of another architecture are refused with the keys and shapes that differ."""
    model = build_model(model_spec(cfg), data_dim).to(device)
    weights = merge_separate_head_maps(weights)
    mismatch = state_dict_mismatch(model.state_dict(), weights)
    if mismatch:
        raise CheckpointError(f"{source} do not fit the model that its config describes: {mismatch}")
    model.load_state_dict(weights)
    return model.eval()


@dataclass
class TrainedRun:
    """A run read back from its directory."""

    model: HierarchicalVAE  # eval mode, with the batch-norm statistics of the evaluation
    config: Config  # config.yaml, the fully resolved config the run trained with
    data: ImageData  # its training and test images, on the model's device
    metrics: dict | None  # metrics.json (None while the run has written none)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu",
             data_root: str | Path | None = None) -> TrainedRun:
    """The trained model of `run_dir` with its config, data and metrics.

    `run_dir` is a run's folder or a published run's (weights.pt in place of checkpoint.pt);
    its data is read from `data_root` (see `_data_root` for the default). A run still
    training comes back with its latest checkpoint, whose batch-norm statistics are the
    training-time running averages. Raises RunDirError when the directory holds no
    config.yaml, or neither checkpoint.pt nor weights.pt; CheckpointError for weights that
    are damaged or do not fit; RecordError for a config.yaml that disagrees with the weights.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    device = resolve_device(device) if isinstance(device, str) else device
    cfg, weights = stored_run(run_dir, device, data_root)  # a bad file fails before the data load
    data = load_dataset(cfg.data, device)
    return TrainedRun(trained_model(cfg, weights, data.dim, device, f"the weights in {run_dir}"), cfg, data,
                      read_record(run_dir))
