"""The jobs of a Hydra sweep, expanded as `python train.py -m ...` expands them, and their run folders.

Hydra's basic sweeper (which the joblib and submitit launchers also use) takes the
preset's `hydra.sweeper.params` and the command-line overrides (a command-line key
replaces a param of the same key) and runs every combination. `sweep_jobs` repeats
that without running anything, so that an estimate, a test or a report can see which
runs a sweep holds; `jobs_of_sweep_dir` does it from the multirun.yaml that Hydra
writes into every sweep folder.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from lvae.run.config import CONFIG_DIR, Config, ConfigError, to_config


@dataclass
class Job:
    """One run of a sweep."""

    overrides: list[str]  # the job's overrides, as the sweeper hands them to train.py
    sweep_dir: Path  # hydra.sweep.dir
    run_dir: Path  # hydra.sweep.dir / hydra.sweep.subdir
    config: Config  # the run's config (lvae.run.config.to_config)


def expand_overrides(overrides: Sequence[str], sweep_params: dict[str, str] | None = None) -> list[list[str]]:
    """Each job's overrides: every combination of the sweep params and the command-line overrides.

    In the basic sweeper's order: one choice list per key, in the order the keys first
    appear (a command-line key takes the place of the param it replaces), and the
    combinations with the last key varying fastest.
    """
    params = [f"{key}={value}" for key, value in (sweep_params or {}).items()]
    choices: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides([*params, *overrides]):
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise HydraException(f"{override.input_line}: a sweep over an interval has no list of jobs "
                                 "(the basic sweeper takes choices and ranges only)")
    return [list(job) for job in itertools.product(*choices.values())]


def sweep_jobs(overrides: Sequence[str], hydra_overrides: Sequence[str] = (),
               sweep_dir: Path | None = None) -> list[Job]:
    """The jobs of `python train.py -m <overrides> <hydra_overrides>`, composed but not run.

    Run folders lie below `sweep_dir` when given (a sweep folder found on disk, which
    may have moved), else below the config's hydra.sweep.dir.
    """
    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(list(overrides)) if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        sweep = compose("config", overrides=[*fixed, *hydra_overrides], return_hydra_config=True)
        params = OmegaConf.to_container(sweep.hydra.sweeper.params) if sweep.hydra.sweeper.params else {}
        jobs = []
        for job_overrides in expand_overrides(overrides, params):
            cfg = compose("config", overrides=[*job_overrides, *hydra_overrides], return_hydra_config=True)
            folder = Path(sweep_dir) if sweep_dir is not None else Path(cfg.hydra.sweep.dir)
            run_dir = folder / cfg.hydra.sweep.subdir
            with open_dict(cfg):
                del cfg["hydra"]
            jobs.append(Job(job_overrides, folder, run_dir, to_config(cfg)))
    return jobs


def jobs_of_sweep_dir(sweep_dir: Path) -> list[Job]:
    """The jobs that the sweep recorded in sweep_dir/multirun.yaml asked for (the last sweep launched there);
    ConfigError when this code cannot compose them (e.g. a preset that no longer exists)."""
    recorded = OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides
    hydra_overrides = [o for o in recorded.hydra if not o.startswith("hydra.mode=")]
    try:
        return sweep_jobs(list(recorded.task), hydra_overrides, sweep_dir)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(str(error).splitlines()[0]) from None
