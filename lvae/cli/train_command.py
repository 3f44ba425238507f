"""Hydra entry point shared by `python train.py` and the `lvae-train` console script.

Exit codes (docs/reliability.md):
    0    done (or already complete)
    2    bad input: a key or value that lvae refuses (also Hydra's own refusals of the command line,
         see `check_command_line`), missing or damaged data, a checkpoint or run record that does not
         fit, an unusable output directory, a failed write (a full disk)
    3    the run diverged: a non-finite loss or gradient, or a bound far below that of an untrained model
    75   the run directory is in use by another process (EX_TEMPFAIL: try again later)
    128 + N  stopped by signal N (a checkpoint is written when it came during training)
Anything else (Hydra's exit 1 for a command line it reads itself, such as `--cfg job` with a bad
override; a crash) is not one of lvae's answers.

Before Hydra starts, `check_command_line` composes the config of every job of the command (one
run, or each job of a sweep) and checks it: a key that lvae does not have, a value Hydra or
lvae refuses, or a sweep preset run without `-m` ends in one message, exit 2, before anything is
written or any job starts.

A launch that is refused after that (another process holds the run, the config does not fit the
record there, no data) writes nothing into the run folder and leaves no new folder: the run's
log (train.log) is written only once the run is accepted (lvae.run.logs.RunLogFile), and
the record of its launch (`.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml`) is written by
`lvae.run.train.run` then too, not by Hydra before the task starts (configs/config.yaml sets
`hydra.output_subdir: null`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException, HydraException, OverrideParseException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from lvae.data.errors import DatasetError
from lvae.data.files import folders_to_create, remove_empty_folders
from lvae.run.checkpoint import CheckpointError
# CONFIG_DIR is absolute, so that the same configs serve `python train.py`, `python -m lvae.cli`
# and the console script, from any directory.
from lvae.run.config import CONFIG_DIR, Config, ConfigError, check_setting_name, resolve_device, to_config, validate
from lvae.run.folder import RunDirBusy
from lvae.run.outcomes import RunFailed, RunInterrupted
from lvae.run.record import CHECKPOINT_FILE, RecordError
from lvae.run.sweep import sweep_jobs
from lvae.run.train import run

log = logging.getLogger(__name__)

EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_BUSY = 2, 3, 75  # 75 = EX_TEMPFAIL: try again later

# The folders that Hydra is about to create for this run (OutputDirCheck): a refused launch removes them.
_new_run_folders: list[Path] = []


def train() -> None:
    """`python train.py [-m] OVERRIDE...`: check every job's config, then let Hydra run them."""
    check_command_line(sys.argv[1:])
    _train()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _train(cfg: DictConfig) -> float:
    """Train and evaluate one run; returns the test log-likelihood (for sweepers).

    Hydra's tree becomes the typed Config here, once (lvae.run.config.to_config): the run below takes that.
    Expected failures end with one clear message. A single run exits non-zero at
    once; in a sweep the error is raised, so that Hydra reports the failed job.
    """
    hydra_cfg = HydraConfig.get()
    run_dir = Path(cfg.resume) if cfg.resume else Path(hydra_cfg.runtime.output_dir)
    if cfg.resume and not (run_dir / CHECKPOINT_FILE).exists():
        _refuse(f"resume={cfg.resume}: no {CHECKPOINT_FILE} in that directory.", EXIT_BAD_INPUT)
    try:
        metrics = run(to_config(cfg), run_dir, _launch_record(cfg))
    except RunInterrupted as stop:
        log.warning("%s in %s; run the same command again to resume.", stop, run_dir)
        sys.exit(128 + stop.signum)
    except (ConfigError, DatasetError, CheckpointError, RecordError, RunFailed, RunDirBusy, OSError) as error:
        message = (f"could not write {error.filename}: {error.strerror}" if isinstance(error, OSError)
                   and error.filename else str(error))
        code = EXIT_DIVERGED if isinstance(error, RunFailed) else EXIT_BUSY if isinstance(error, RunDirBusy) \
            else EXIT_BAD_INPUT
        if hydra_cfg.mode == RunMode.MULTIRUN:
            log.error("%s", message)
            remove_empty_folders([run_dir])  # a job refused before it wrote anything leaves no folder
            raise JobFailed(f"{run_dir}: {message}", code) from None
        _refuse(message, code)
    return metrics["test_log_likelihood"]["mean"]


class JobFailed(CompactHydraException):
    """A job of a sweep that failed or was refused, with the exit code it would have as a single run. The
    sweep's other jobs run on. Hydra names the failed job's overrides and prints this message without a
    traceback (a CompactHydraException), also when a launcher (joblib, submitit) pickled it back from a
    worker process: it pickles as its message and code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self):
        return type(self), (str(self), self.exit_code)


def _refuse(message: str, code: int) -> None:
    """End a single run with one message; a folder that Hydra created for it and that is still empty
    (the run was refused before writing) goes again."""
    log.error("%s", message)
    remove_empty_folders(_new_run_folders)
    sys.exit(code)


def _launch_record(cfg: DictConfig) -> dict[str, str]:
    """The files Hydra would have written into .hydra/ for this job (see the module docstring)."""
    hydra_cfg = HydraConfig.instance().cfg  # {"hydra": ...}, as Hydra saves it
    return {".hydra/config.yaml": OmegaConf.to_yaml(cfg), ".hydra/hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
            ".hydra/overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task)}


# Hydra's command-line flags that check_command_line leaves to Hydra (help, --cfg, another config, ...):
# everything but -m/--multirun and overrides.
_MULTIRUN_FLAGS = ("-m", "--multirun")


def check_command_line(args: Sequence[str]) -> None:
    """Compose and check the config of every job that `train.py <args>` would run; on the first
    refusal print one message and exit with EXIT_BAD_INPUT, before Hydra writes or runs anything.

    Checked: each override names a setting or config group of lvae (`lyers=5` ->
    "lyers is not a setting of lvae (did you mean layers?)"), Hydra composes each job (types,
    choices, the override syntax), `lvae.run.config.validate` accepts it, and the device exists;
    a preset that is a sweep (`experiment=fig3`) needs -m. A command line with Hydra flags
    other than -m is left to Hydra as it is.
    """
    if any(arg.startswith("-") and arg not in _MULTIRUN_FLAGS for arg in args):
        return
    multirun = any(arg in _MULTIRUN_FLAGS for arg in args)
    overrides = [arg for arg in args if arg not in _MULTIRUN_FLAGS]
    try:
        for override in OverridesParser.create().parse_overrides(overrides):
            check_setting_name(override.key_or_group)
        task = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
        hydra_overrides = [o for o in overrides if o.lstrip("+~").startswith("hydra")]
        jobs = ([(job.overrides, job.config) for job in sweep_jobs(task, hydra_overrides)] if multirun
                else [(task, _single_run_config(task, hydra_overrides))])
        shared = set.intersection(*(set(job_overrides) for job_overrides, _ in jobs))
        for job_overrides, cfg in jobs:
            try:
                validate(cfg)
                resolve_device(cfg.device)
            except ConfigError as error:
                job = " ".join(o for o in job_overrides if o not in shared)
                where = f"the sweep's job {job}: " if len(jobs) > 1 else ""
                raise ConfigError(f"{where}{error}"
                                  f"{' No job was started.' if multirun else ''}") from None
    except ConfigError as error:
        _exit_before_hydra(str(error))
    except (HydraException, OmegaConfBaseException) as error:
        _exit_before_hydra(refusal_message(error, overrides))


def _single_run_config(task: list[str], hydra_overrides: list[str]) -> Config:
    """The config of `train.py <task> <hydra_overrides>` without -m; refuses a preset that is a sweep."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3", job_name="train"):
        cfg = compose("config", overrides=[*task, *hydra_overrides], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    if params:
        sweep = " ".join(f"{key}={value}" for key, value in params.items())
        raise ConfigError(f"this command is a sweep (its preset sets {sweep}): add -m to run its jobs "
                          "(python train.py -m ...); without -m it would run one arbitrary job of it.")
    with open_dict(cfg):
        del cfg["hydra"]
    return to_config(cfg)


def hydra_message(error: BaseException) -> str:
    """Hydra's refusal in one message: its text without the config search path, with the reason
    (OmegaConf's first line) that it wraps."""
    lines = []
    for line in str(error).splitlines():
        if line.startswith("Config search path"):
            break
        if line.strip() and not line.startswith("To append to your config"):
            lines.append(line.strip())
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        lines[-1:] = [f"{lines[-1] if lines else ''}: {str(cause).strip().splitlines()[0]}"]
    return " ".join(lines)


def refusal_message(error: BaseException, overrides: Sequence[str]) -> str:
    """Hydra's refusal of the command line in one message (`hydra_message`); for a value that Hydra cannot parse
    because it holds = or , unquoted (a run folder's name, as in
    init_from=outputs/fig3-quick/layers=5,seed=0,variant=lvae_bn_wu), how to quote it instead."""
    if isinstance(error, OverrideParseException):
        for override in overrides:
            key, _, value = override.partition("=")
            if value[:1] not in ("'", '"') and ("=" in value or "," in value):
                return (f"{override}: a value that holds = or , must be quoted: \"{key}='{value}'\" (with the "
                        "double quotes, so that the shell passes the single ones on).")
    return hydra_message(error)


def _exit_before_hydra(message: str) -> None:
    # Hydra's logging is not set up yet, and nothing has been written.
    print(message, file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


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
    that a path under a regular file or in a read-only folder ends in one message, not Hydra's traceback;
    and notes which folders Hydra is about to create, so that a refused run removes them again."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")
        _new_run_folders[:] = folders_to_create([Path(config.hydra.run.dir).absolute()])

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


if __name__ == "__main__":  # python -m lvae.cli: what lvae.cli.reproduce runs
    train()
