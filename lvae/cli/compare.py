"""`python -m lvae.compare --a RUN [RUN ...] --b RUN [RUN ...] [--images N]`: lvae/report/compare.py pairs the runs;
`python -m lvae.compare --by-budget DIR [DIR ...] [--layers N] [--figure PNG]`: LVAE - VAE for each training budget (lvae/report/budgets.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lvae.cli.arguments import positive_integer
from lvae.report.budgets import budget_lines, budget_table, plot_by_budget
from lvae.report.compare import __doc__ as COMPARE_DOC
from lvae.report.compare import comparison_table, curve_table, pair_by_seed, read_estimates
from lvae.report.runs import collect_runs, say_left_out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lvae.compare", description=COMPARE_DOC.splitlines()[0])
    parser.add_argument("--a", nargs="+", type=Path, help="run directories of the first model")
    parser.add_argument("--b", nargs="+", type=Path, help="run directories of the second model")
    parser.add_argument("--images", type=positive_integer, help="compare on the first N test images that both runs "
                                                                 "scored (default: all of them)")
    parser.add_argument("--by-budget", nargs="+", type=Path, metavar="DIR",
                        help="instead of --a and --b: every VAE and LVAE run below these directories, LVAE - VAE "
                             "for each training budget (runs of the same training but their seed)")
    parser.add_argument("--layers", type=positive_integer, help="with --by-budget: runs of N stochastic layers only")
    parser.add_argument("--figure", type=Path, metavar="PNG", help="with --by-budget: also draw the differences "
                                                                    "against the epochs into this file")
    args = parser.parse_args(argv)
    if (args.layers or args.figure) and not args.by_budget:
        parser.error("--layers and --figure go with --by-budget (--a and --b name their runs)")
    if bool(args.by_budget) == bool(args.a or args.b) or (args.a is None) != (args.b is None):
        parser.error("give either --a RUN ... and --b RUN ..., or --by-budget DIR ...")
    try:
        if args.by_budget:
            print(by_budget(args.by_budget, args.layers, args.figure))
            return
        pairs = pair_by_seed([read_estimates(p) for p in args.a], [read_estimates(p) for p in args.b])
        table = comparison_table(pairs, args.images)
    except (OSError, ValueError) as error:
        parser.exit(2, f"{error}\n")
    print(table)
    if curves := curve_table(pairs):
        print(curves)


def by_budget(dirs: list[Path], layers: int | None = None, figure: Path | None = None) -> str:
    """The table of LVAE - VAE by training budget of the runs below `dirs`; with `figure`, also its plot there."""
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise ValueError(f"not a directory: {', '.join(missing)}")
    records = collect_runs(dirs)
    say_left_out(records)
    lines = budget_lines(records, layers)
    table = budget_table(lines)
    if not table:
        depth = f" with {layers} layers" if layers else ""
        raise ValueError(f"no VAE and LVAE runs{depth} of the same training and seed below {', '.join(map(str, dirs))}")
    if figure:
        plot_by_budget(lines, figure)
    return table


if __name__ == "__main__":
    main()
