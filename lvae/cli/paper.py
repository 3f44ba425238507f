"""`python -m lvae.paper` (`make paper`): runs what is missing, then writes the paper folder (lvae/report/verdicts.py).

Exit codes: 0 done; 1 the folder was written but a run of the budget failed; 2 a bad argument, an --out that
cannot be written (refused before anything runs), no runs, or a write that failed (a full disk: the folder is
left as it was); 75 another lvae.paper is writing the same folder; 128 + N stopped by signal N (the runs it
started stop with a checkpoint first, and the folder is left as it was).

The folder is written whole: into a temporary folder beside it, then put in its place, under a lock, so that a
killed, failing or concurrent lvae.paper never leaves a folder that mixes two writes. Every record is read
through the run-record layer (lvae.report.runs): a record that cannot be trusted, or one of another numerics
version, is left out with one line saying why, in the console and in index.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from lvae.cli.arguments import budget_name, positive_integer
from lvae.cli.children import Stopped, exit_stopped, run_child, stopping_on_signals
from lvae.cli.train_command import EXIT_BAD_INPUT, EXIT_BUSY, unusable_directory
from lvae.data import DatasetError
from lvae.report import verdicts
from lvae.report.runs import RunRecord, collect_runs, leave_out_other_numerics, say_left_out
from lvae.report.verdicts import STEPS, write_paper
from lvae.run.checkpoint import CheckpointError
from lvae.run.config import ConfigError
from lvae.run.folder import RunDirBusy, hold_run_dir
from lvae.run.record import RecordError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lvae.paper", description=verdicts.__doc__.splitlines()[0])
    parser.add_argument("--budget", default="paper", type=budget_name,
                        help="a budget of configs/budget/ (default: paper)")
    parser.add_argument("--seeds", type=positive_integer, default=1,
                        help="runs per cell with seeds 0..N-1 (default: 1)")
    parser.add_argument("--from", dest="sources", nargs="+", type=Path, metavar="DIR",
                        help="write the folder from the runs below these directories; runs nothing")
    parser.add_argument("--no-run", action="store_true", help="run nothing: write the folder from the budget's runs")
    parser.add_argument("--out", type=Path, help="the folder to write (default: outputs/paper-<budget>)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (as lvae.cli.reproduce takes them)")
    args = parser.parse_args(argv)
    out = (args.out or Path("outputs") / f"paper-{args.budget}").absolute()
    unusable = unusable_directory(out)
    if unusable:
        parser.exit(EXIT_BAD_INPUT, f"cannot write the paper's folder {out}: {unusable}. Choose another --out.\n")
    sources = args.sources or [Path("outputs") / f"{step}-{args.budget}" for step in STEPS]
    left = f"{out} was left as it was"
    try:
        with stopping_on_signals(), hold_run_dir(out.parent / f".{out.name}.lock"):
            failed = False
            if not (args.sources or args.no_run):
                for step in STEPS:  # the same command as `make reproduce EXPERIMENT=<step>`: it resumes and skips
                    code = run_child([sys.executable, "-m", "lvae.reproduce", "--experiment", step, "--budget",
                                      args.budget, "--seeds", str(args.seeds), *args.overrides])
                    if code == EXIT_BAD_INPUT:  # it refused the overrides, with its message: the next step would too
                        sys.exit(code)
                    failed |= code != 0
            records = collect_runs([source for source in sources if source.is_dir()])
            if not records:
                parser.exit(EXIT_BAD_INPUT, f"no runs below {', '.join(map(str, sources))}\n")
            leave_out_other_numerics(records)
            say_left_out(records)
            index = write_whole(records, out)
    except RunDirBusy as error:
        parser.exit(EXIT_BUSY, f"another lvae.paper is writing {out}: {error}\n")
    except Stopped as stopped:
        exit_stopped(stopped, left)
    except (CheckpointError, RecordError, DatasetError, ConfigError) as error:  # the analysis reads the deep runs back
        parser.exit(EXIT_BAD_INPUT, f"{error}; {left}\n")
    except OSError as error:  # a full disk: name the file (DatasetNotFoundError, an OSError too, is caught above)
        parser.exit(EXIT_BAD_INPUT, f"could not write {error.filename or out}: {error.strerror or error}; {left}\n")
    print(f"wrote {index}")
    sys.exit(1 if failed else 0)


def write_whole(records: list[RunRecord], out: Path) -> Path:
    """`write_paper` into a temporary folder beside `out`, then that folder in out's place; returns index.md's
    path. Called under out's lock, so what a killed lvae.paper left beside `out` is nobody's work in progress.
    The new folder keeps what the old one holds of the records it is written from (results/paper-quick/runs
    lies inside results/paper-quick), and the analysis of runs whose weights are gone (write_paper's previous)."""
    writing, replaced = out.parent / f".{out.name}.writing", out.parent / f".{out.name}.replaced"
    if replaced.is_dir() and not out.exists():  # killed between the two renames below: the old folder comes back
        replaced.rename(out)
    for leftover in (writing, replaced):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        writing.mkdir()
        for entry in entries_holding_records(records, out):
            shutil.copytree(out / entry, writing / entry, symlinks=True)
        index = write_paper(records, writing, previous=out)
    except BaseException:
        shutil.rmtree(writing, ignore_errors=True)
        raise
    if out.exists():
        out.rename(replaced)
    writing.rename(out)
    shutil.rmtree(replaced, ignore_errors=True)
    return out / index.name


def entries_holding_records(records: list[RunRecord], out: Path) -> list[str]:
    """The names of out's entries that hold a record's run folder: the input that a new folder must keep."""
    inside = [r.run_dir.resolve().relative_to(out.resolve()) for r in records
              if out.exists() and r.run_dir.resolve().is_relative_to(out.resolve())]
    return sorted({path.parts[0] for path in inside if path.parts})


if __name__ == "__main__":
    main()
