"""The runs of a report: every run folder below the given ones, and every run a sweep asked for.

A run is a folder that holds a metrics.json or a config.yaml; one without a finished
metrics.json is kept with its status, and a run that a sweep's multirun.yaml asks for
but that has no folder is "missing": nothing is dropped. A record that cannot be trusted
(`lvae.run.record.record_problem`: unreadable, malformed, or numbers that its per_image.pt
contradicts) is kept as "unreadable", with the reason and without its numbers.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from lvae.report.paper_numbers import BUDGET_KEYS
from lvae.run.config import Config, ConfigError, config_to_dict, config_value
from lvae.run.identity import run_defining_values
from lvae.run.provenance import NUMERICS_VERSION, is_current_numerics, numerics_version_of
from lvae.run.record import (CONFIG_FILE, METRICS_FILE, RecordError, Status, is_complete, read_config, read_per_image,
                             read_record, record_problem, status_of)
from lvae.run.sweep import Job, jobs_of_sweep_dir

log = logging.getLogger(__name__)


def files_below(roots: list[Path], name: str) -> list[Path]:
    """Every file called `name` below roots, following symlinked folders (a run linked into a
    results folder is one of its runs); a folder reached twice (a link loop) is walked once."""
    found, seen = [], set()
    for root in roots:
        for folder, subfolders, files in os.walk(root, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:
                subfolders[:] = []
                continue
            seen.add(real)
            if name in files:
                found.append(Path(folder) / name)
    return sorted(found)


def find_run_dirs(roots: list[Path]) -> list[Path]:
    """Every run folder below `roots`."""
    dirs = set()
    for marker in (METRICS_FILE, CONFIG_FILE):
        dirs.update(p.parent for p in files_below(roots, marker) if p.parent.name != ".hydra")
    return sorted(dirs)


def read_checked(run_dir: Path) -> tuple[dict | None, str | None]:
    """(the record of run_dir or None when it has none, None) when it can be trusted, else (None, why not,
    naming the folder): see `record_problem`; a completed record is checked against its per_image.pt."""
    try:
        record = read_record(run_dir)
        problem = record_problem(record, read_per_image(run_dir) if is_complete(record) else None)
    except RecordError as error:
        return None, str(error)
    return (None, f"{run_dir}: {problem}") if problem else (record, None)


def code_mark(metrics: dict) -> str:
    """"" for a run scored by the numerics installed now; " †" for another numerics version."""
    return "" if is_current_numerics(metrics) else " †"


OTHER_CODE_NOTE = (f"† scored by another numerics version than the installed one ({NUMERICS_VERSION}; see "
                   "NUMERICS_VERSION in lvae/run/provenance.py for what changed): its numbers are not those of this "
                   "code. Rerun it in a fresh directory to replace them.")


def leave_out_other_numerics(records: list["RunRecord"]) -> list["RunRecord"]:
    """The completed runs of another numerics version among `records`, now with status other_numerics and without
    their numbers (lvae.paper's verdicts rest on this code's numbers only), each with the reason."""
    left_out = [record for record in records if record.completed and not is_current_numerics(record.metrics)]
    for record in left_out:
        record.problem = (f"{record.run_dir}: scored by numerics version {numerics_version_of(record.metrics)}, "
                          f"not this code's {NUMERICS_VERSION} (NUMERICS_VERSION in lvae/run/provenance.py says what "
                          "changed); rerun it in a fresh directory to count it")
        record.status, record.metrics = Status.other_numerics, None
    return left_out


def say_left_out(records: list["RunRecord"]) -> None:
    """One line on stderr for every run whose numbers were left out (`problem`), naming its folder and why."""
    for record in records:
        if record.problem:
            print(f"left out: {record.problem}", file=sys.stderr)


def left_out_notes(records: list["RunRecord"]) -> list[str]:
    """Markdown lines naming every run whose numbers were left out (`problem`), and why; none when there are none."""
    left_out = [record.problem for record in records if record.problem]
    if not left_out:
        return []
    return ["**Runs left out** (in no table, figure or verdict):", "", *(f"- {problem}" for problem in left_out), ""]


@dataclass
class RunRecord:
    """A run of a report: found on disk, expected by a sweep's multirun.yaml, or both."""

    run_dir: Path
    status: str  # completed, running, interrupted, failed, unfinished (no metrics.json yet) or missing (no folder)
    metrics: dict | None
    setting: dict | None  # what the run computes, flat key -> value (`run_setting`); None when unknown
    problem: str | None = None  # why its numbers are left out: "unreadable" (`read_checked`), other numerics

    @property
    def completed(self) -> bool:
        return self.status == Status.completed


def run_setting(config: Config | None, metrics: dict | None = None) -> dict | None:
    """What a run computes, as flat key -> value: from its config, else from its metrics.json."""
    if config is not None:
        values = config_to_dict(config)
        setting = run_defining_values(values)
        setting.update({key: config_value(values, key) for key in (*BUDGET_KEYS, "budget_name")})
        return setting
    if metrics and "model" in metrics:
        return {"model.name": metrics["model"], "layers": metrics["layers"], "batch_norm": metrics["batch_norm"],
                "warmup_epochs": metrics["warmup_epochs"], "seed": metrics.get("seed"),
                "train.epochs": metrics["epochs"]}
    return None


def expected_jobs(roots: list[Path]) -> dict[Path, Job]:
    """Resolved run folder -> job, for every job that a multirun.yaml below roots asks for."""
    expected = {}
    for sweep_file in files_below(roots, "multirun.yaml"):
        try:
            expected.update({job.run_dir.resolve(): job for job in jobs_of_sweep_dir(sweep_file.parent)})
        except ConfigError as error:  # e.g. a preset that no longer exists
            log.warning("cannot tell which runs %s asks for (%s); listing the runs found only",
                        sweep_file, str(error).splitlines()[0])
    return expected


def collect_runs(roots: list[Path]) -> list[RunRecord]:
    """Every run below roots, plus every run that a sweep folder's multirun.yaml asks for but that has no folder."""
    expected = expected_jobs(roots)
    records = []
    for run_dir in find_run_dirs(roots):
        job = expected.pop(run_dir.resolve(), None)
        metrics, problem = read_checked(run_dir)
        config = read_config(run_dir) or (job.config if job else None)
        status = Status.unreadable if problem else status_of(metrics)
        records.append(RunRecord(run_dir, status, metrics, run_setting(config, metrics), problem))
    for job in expected.values():  # Hydra made the folder of a job that started, even one that failed at once
        status = Status.unfinished if job.run_dir.is_dir() else Status.missing
        records.append(RunRecord(job.run_dir, status, None, run_setting(job.config)))
    _add_fine_tuning_bases(records)
    return records


def _add_fine_tuning_bases(records: list[RunRecord]) -> None:
    """Give each fine-tuned run's setting the setting of the run it started from (`init_from.setting`): read
    from that folder, else from the run of the same folder name in this report (a published copy of both)."""
    named = {record.run_dir.name: record.setting for record in records if record.setting}
    for record in records:
        init_from = (record.setting or {}).get("init_from")
        if init_from and (base_setting := fine_tuning_base(init_from, named)):
            record.setting["init_from.setting"] = base_setting


def fine_tuning_base(init_from: str, named: dict[str, dict]) -> dict | None:
    """The setting of the run that a fine-tuned run started from: read from that folder, else that of the run
    of the same folder name in `named` (folder name -> setting: a published copy of both)."""
    base = read_config(Path(init_from))
    return run_setting(base) if base is not None else named.get(Path(init_from).name)
