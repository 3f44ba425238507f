"""`python -m lvae.report DIR [DIR ...] [--out DIR] [--publish DIR [--weights]]` (what it writes:
lvae/report/__init__.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lvae import report
from lvae.report import PUBLISHED_FILES, publish_runs
from lvae.report.markdown import budget_summary, markdown_table
from lvae.report.output import write_report
from lvae.report.runs import collect_runs, say_left_out
from lvae.run.checkpoint import CheckpointError
from lvae.run.record import WEIGHTS_FILE, Status


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lvae.report", description=report.__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, help="where results.md, results.csv and fig3.png go "
                                                 "(default: the first directory)")
    parser.add_argument("--publish", type=Path, metavar="DIR",
                        help="write the report into DIR and copy each run's " + ", ".join(PUBLISHED_FILES)
                             + " there (e.g. results/<name>: the committed record of a result; runs "
                               "themselves go to outputs/, which git ignores)")
    parser.add_argument("--weights", action="store_true",
                        help=f"with --publish: also write each completed run's {WEIGHTS_FILE} (its model as "
                             "evaluated, without the optimiser state of its checkpoint) for lvae.load_run")
    args = parser.parse_args(argv)
    if args.weights and not args.publish:
        parser.error("--weights needs --publish DIR: it says where the weights go")
    missing = [d for d in args.dirs if not d.is_dir()]
    if missing:
        parser.error(f"not a directory: {', '.join(map(str, missing))}")
    records = collect_runs(args.dirs)
    if not records:
        parser.error(f"no run directories (with metrics.json or config.yaml) below {', '.join(map(str, args.dirs))}")
    say_left_out(records)
    print(markdown_table([r for r in records if r.status != Status.missing]))
    print()
    print(budget_summary(records))
    if args.publish:
        try:
            written = publish_runs(records, args.publish, args.weights)
        except (ValueError, CheckpointError) as error:
            parser.error(str(error))
        for path in written:
            print(f"wrote {path}")
        if args.weights:
            skipped = [r.run_dir.name for r in records if r.run_dir.is_dir() and not r.completed]
            if skipped:
                print(f"no {WEIGHTS_FILE} for the runs that are not completed: {', '.join(skipped)}")
    for path in write_report(records, args.publish or args.out or args.dirs[0]):
        print(f"wrote {path}")

