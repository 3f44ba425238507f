"""The runs of a report: every run folder below the given ones, and every run a sweep asked for.

A run is a folder that holds a metrics.json or a config.yaml; one without a finished
metrics.json is kept with its status, and a run that a sweep's multirun.yaml asks for
but that has no folder is "missing": nothing is dropped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import run_defining_values, schema_defaults
from ..provenance import NUMERICS_MODULES, code_fingerprint, fingerprint_of
from ..stored_run import read_config
from ..sweep import Job, jobs_of_sweep_dir
from .paper import BUDGET_KEYS

log = logging.getLogger(__name__)


def find_runs(roots: list[Path]) -> list[tuple[Path, dict | None]]:
    """(run dir, metrics or None when unfinished) for every run below `roots`."""
    dirs = set()
    for root in roots:
        for marker in ("metrics.json", "config.yaml"):
            dirs.update(p.parent for p in root.rglob(marker) if p.parent.name != ".hydra")
    runs = []
    for run_dir in sorted(dirs):
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
        runs.append((run_dir, metrics))
    return runs


def code_mark(metrics: dict) -> str:
    """"" for a run scored by the estimators installed now; " †" for other or unknown code."""
    return "" if fingerprint_of(metrics) == code_fingerprint() else " †"


OTHER_CODE_NOTE = ("† scored by other code: the modules that define the numbers (lvae/"
                   + ", lvae/".join(NUMERICS_MODULES) + ") differed from the installed ones, or the run "
                   "does not say which code it ran. Its numbers are not those of this code: rerun it in a "
                   "fresh directory to replace them.")


@dataclass
class RunRecord:
    """A run of a report: found on disk, expected by a sweep's multirun.yaml, or both."""

    run_dir: Path
    status: str  # completed, running, interrupted, failed, unfinished (no metrics.json yet) or missing (no folder)
    metrics: dict | None
    setting: dict | None  # what the run computes, flat key -> value (`run_setting`); None when unknown

    @property
    def completed(self) -> bool:
        return self.status == "completed"


def run_setting(config: dict | DictConfig | None, metrics: dict | None = None) -> dict | None:
    """What a run computes, as flat key -> value: from its config, else from its metrics.json."""
    if config is not None:
        # A key added to the schema after the run was configured had its default value in that run.
        tree = OmegaConf.merge(schema_defaults(), config)
        setting = {key: value for key, value in run_defining_values(tree).items() if value != MISSING}
        for key in (*BUDGET_KEYS, "budget_name"):
            if OmegaConf.select(tree, key, default=MISSING) is not MISSING:
                setting[key] = OmegaConf.select(tree, key)
        return setting
    if metrics and "model" in metrics:
        return {"model.name": metrics["model"], "layers": metrics["layers"], "batch_norm": metrics["batch_norm"],
                "warmup_epochs": metrics["warmup_epochs"], "seed": metrics.get("seed"),
                "train.epochs": metrics["epochs"]}
    return None


def expected_jobs(roots: list[Path]) -> dict[Path, Job]:
    """Resolved run folder -> job, for every job that a multirun.yaml below roots asks for."""
    expected = {}
    for sweep_file in sorted(path for root in roots for path in root.rglob("multirun.yaml")):
        try:
            expected.update({job.run_dir.resolve(): job for job in jobs_of_sweep_dir(sweep_file.parent)})
        except (HydraException, OmegaConfBaseException) as error:  # e.g. a preset that no longer exists
            log.warning("cannot tell which runs %s asks for (%s); listing the runs found only",
                        sweep_file, str(error).splitlines()[0])
    return expected


def collect_runs(roots: list[Path]) -> list[RunRecord]:
    """Every run below roots, plus every run that a sweep folder's multirun.yaml asks for but that has no folder."""
    expected = expected_jobs(roots)
    records = []
    for run_dir, metrics in find_runs(roots):
        job = expected.pop(run_dir.resolve(), None)
        config = read_config(run_dir) or (job.config if job else None)
        status = metrics.get("status", "unknown") if metrics else "unfinished"
        records.append(RunRecord(run_dir, status, metrics, run_setting(config, metrics)))
    for job in expected.values():  # Hydra made the folder of a job that started, even one that failed at once
        status = "unfinished" if job.run_dir.is_dir() else "missing"
        records.append(RunRecord(job.run_dir, status, None, run_setting(job.config)))
    return records
