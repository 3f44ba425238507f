"""Look inside trained hierarchies: `python -m lvae.analyze RUN_DIR [RUN_DIR ...]`.

Each run directory (as `lvae.run.train.run` writes it) must hold config.yaml and
checkpoint.pt, or a published run's weights.pt instead (python -m lvae.report ...
--publish DIR --weights); the metrics.json of a completed run names the run and gives its
history. A run still training is looked at through its latest checkpoint, whose
batch-norm statistics are the training-time running averages.
The model is rebuilt from the config, loaded with the checkpoint's weights and
batch-norm statistics, and looked at on the test images. Written into --out:

    active_units.png            active units per layer, both criteria (docs/method.md, section 5)
    pca.png                     first two principal components of each layer's posterior
    kl_per_layer.png            KL per layer against epoch (runs with a metrics.json)
    samples_<run>.png           prior samples E[x | z_1], z ~ p(z)
    reconstructions_<run>.png   rows of test images, each above E[x | z_1], z_1 ~ q(z_1|x)
    analysis.json               active units per layer and per unit, per run

and a markdown table of the active units is printed. Several runs share the figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lvae.core.analysis import layer_names
from lvae.data.errors import DatasetError
from lvae.run.analysis import AnalysisSettings, analyze_runs
from lvae.run.checkpoint import CheckpointError
from lvae.run.config import DEVICES, ConfigError
from lvae.run.record import RecordError
from lvae.run.stored import RunDirError


def markdown_table(runs: dict[str, dict]) -> str:
    """Active units per layer, "KL / Cov of d_i", one row per run of analysis.json's `runs`."""
    n_layers = max(len(run["layer_sizes"]) for run in runs.values())
    lines = ["| run | " + " | ".join(layer_names(n_layers)) + " |", "|---" * (n_layers + 1) + "|"]
    for name, run in runs.items():
        cells = [f"{kl} / {cov} of {size}" for kl, cov, size in zip(run["kl"], run["cov"], run["layer_sizes"])]
        cells += ["–"] * (n_layers - len(cells))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def default_out_dir(run_dirs: list[Path]) -> Path:
    """The run directory itself for one run, else `analysis` beside the first run directory."""
    return run_dirs[0] if len(run_dirs) == 1 else run_dirs[0].parent / "analysis"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lvae.analyze",
        description="Active units, PCA of each layer's posterior, KL per layer, prior samples and "
                    "reconstructions of trained runs (docs/method.md, section 5).")
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="run directories holding config.yaml and checkpoint.pt (or weights.pt)")
    parser.add_argument("--out", type=Path, help="output folder (default: the run directory for one run, "
                                                 "else <first run dir>/../analysis)")
    parser.add_argument("--test-subset", type=int, metavar="N",
                        help="N test images, the fixed random sample that evaluation uses (default: all)")
    parser.add_argument("--samples", type=int, default=1, metavar="S",
                        help="posterior samples per image for the active-unit statistics (default: 1)")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="default: auto (cuda when available)")
    parser.add_argument("--seed", type=int, help="seed of the posterior and prior samples (default: each run's "
                                                  "own, which repeats the active units of its metrics.json)")
    args = parser.parse_args(argv)
    for option in ("test_subset", "samples"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1, not {value}")
    out_dir = args.out or default_out_dir(args.run_dirs)
    try:
        summary = analyze_runs(args.run_dirs, out_dir, AnalysisSettings(args.test_subset, args.samples),
                               args.device, args.seed)
    except (RunDirError, CheckpointError, DatasetError, ConfigError, RecordError) as error:
        print(f"python -m lvae.analyze: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"Active units per layer (KL / Cov of layer size), {summary['test_images']} test images:\n")
    print(markdown_table(summary["runs"]))
    print(f"\nFigures and analysis.json in {out_dir}")


if __name__ == "__main__":
    main()
