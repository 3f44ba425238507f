"""Tables and the figure of runs: `python -m lvae.report DIR [DIR ...] [--out DIR]`.

Every folder below the given ones that holds a metrics.json or a config.yaml is a
run; a run without a finished metrics.json is listed as such, never dropped, and so
is a run that a sweep's multirun.yaml asks for but that has no folder ("missing").
Prints a table of the runs and writes, into --out or --publish (default: the first DIR):

    results.md    budget, hardware, dates, commands; rows = variants, columns = layers:
                  train bound, test bound (1-sample ELBO), test log-likelihood (IW, K
                  samples) and active units, the paper's numbers beside; then every run
    results.csv   the same cells, one line per variant, depth and quantity
    fig3.png      the paper's Figure 3: the three bounds against the number of layers

With --publish DIR, each run's record (PUBLISHED_FILES) is copied to DIR/<run folder name>/; with
--weights also, for each completed run, weights.pt: its model as evaluated, without the optimiser
state of its checkpoint, which `lvae.load_run` and `python -m lvae.analyze` read back.

A cell's runs differ only in their seed: runs that differ in anything else are rows of
their own, so nothing is averaged over different settings.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from lvae.report.runs import RunRecord
from lvae.run.record import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, PER_IMAGE_FILE, WEIGHTS_FILE, write_weights

# What `--publish` copies of each run: its numbers, config and per-image estimates, never checkpoints.
PUBLISHED_FILES = (METRICS_FILE, CONFIG_FILE, PER_IMAGE_FILE)


def publish_runs(records: list[RunRecord], out_dir: Path, weights: bool = False) -> list[Path]:
    """Copy each run's PUBLISHED_FILES into out_dir/<run folder name>/, a record that can be reported again;
    with `weights`, also write each completed run's weights.pt there (`write_weights`: from its checkpoint,
    or copied from a run published before). Returns the weights files written."""
    names = Counter(r.run_dir.name for r in records if r.run_dir.is_dir())
    clashes = sorted(name for name, count in names.items() if count > 1)
    if clashes:
        raise ValueError(f"several runs are named {', '.join(clashes)}: publish their folders separately")
    to_publish = [r for r in records
                  if r.run_dir.is_dir() and r.run_dir.resolve() != (out_dir / r.run_dir.name).resolve()]
    with_weights = [r.run_dir for r in to_publish if weights and r.completed]
    without = [str(d) for d in with_weights if not ((d / CHECKPOINT_FILE).is_file() or (d / WEIGHTS_FILE).is_file())]
    if without:
        raise ValueError(f"no {CHECKPOINT_FILE} or {WEIGHTS_FILE} to publish the weights of {', '.join(without)}")
    written = []
    for record in to_publish:
        target = out_dir / record.run_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for name in PUBLISHED_FILES:
            if (record.run_dir / name).exists():
                shutil.copy2(record.run_dir / name, target / name)
        if record.run_dir in with_weights:
            if (record.run_dir / CHECKPOINT_FILE).is_file():
                write_weights(record.run_dir, target)
            else:
                shutil.copy2(record.run_dir / WEIGHTS_FILE, target / WEIGHTS_FILE)
            written.append(target / WEIGHTS_FILE)
    return written
