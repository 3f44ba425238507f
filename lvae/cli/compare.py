"""`python -m lvae.compare --a RUN [RUN ...] --b RUN [RUN ...] [--images N]`: lvae/report/compare.py pairs the runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from lvae.cli.arguments import positive_integer
from lvae.report.compare import __doc__ as COMPARE_DOC
from lvae.report.compare import comparison_table, curve_table, pair_by_seed, read_estimates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lvae.compare", description=COMPARE_DOC.splitlines()[0])
    parser.add_argument("--a", nargs="+", type=Path, required=True, help="run directories of the first model")
    parser.add_argument("--b", nargs="+", type=Path, required=True, help="run directories of the second model")
    parser.add_argument("--images", type=positive_integer, help="compare on the first N test images that both runs "
                                                                 "scored (default: all of them)")
    args = parser.parse_args(argv)
    try:
        pairs = pair_by_seed([read_estimates(p) for p in args.a], [read_estimates(p) for p in args.b])
        table = comparison_table(pairs, args.images)
    except (OSError, ValueError) as error:
        parser.exit(2, f"{error}\n")
    print(table)
    if curves := curve_table(pairs):
        print(curves)


if __name__ == "__main__":
    main()
