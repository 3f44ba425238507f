"""`python -m lvae.paper` (`make paper`): runs what is missing, then writes the paper folder (lvae/report/verdicts.py)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from lvae.report import verdicts
from lvae.report.runs import collect_runs
from lvae.report.verdicts import STEPS, write_paper


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lvae.paper", description=verdicts.__doc__.splitlines()[0])
    parser.add_argument("--budget", default="paper", help="a budget of configs/budget/ (default: paper)")
    parser.add_argument("--seeds", type=int, default=1, help="runs per cell with seeds 0..N-1 (default: 1)")
    parser.add_argument("--from", dest="sources", nargs="+", type=Path, metavar="DIR",
                        help="write the folder from the runs below these directories; runs nothing")
    parser.add_argument("--no-run", action="store_true", help="run nothing: write the folder from the budget's runs")
    parser.add_argument("--out", type=Path, help="the folder to write (default: outputs/paper-<budget>)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (as lvae.cli.reproduce takes them)")
    args = parser.parse_args(argv)
    sources = args.sources or [Path("outputs") / f"{step}-{args.budget}" for step in STEPS]
    failed = False
    if not (args.sources or args.no_run):
        for step in STEPS:  # the same command as `make reproduce EXPERIMENT=<step>`: it resumes and skips
            command = [sys.executable, "-m", "lvae.reproduce", "--experiment", step, "--budget", args.budget,
                       "--seeds", str(args.seeds), *args.overrides]
            failed |= subprocess.run(command).returncode != 0
    records = collect_runs([source for source in sources if source.is_dir()])
    if not records:
        parser.exit(2, f"no runs below {', '.join(map(str, sources))}\n")
    index = write_paper(records, args.out or Path("outputs") / f"paper-{args.budget}")
    print(f"wrote {index}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
