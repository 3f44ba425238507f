"""Reproduce a figure or table of the paper in one command (what `make reproduce` runs).

    python -m lvae.reproduce [--experiment fig3|table1] [--budget paper|quick] [--seeds N]
                             [--dry-run] [HYDRA_OVERRIDE ...]

1. Prints an estimate of the wall time on the reference machine, from the budget and
   measured rates; runs that are already complete count zero.
2. Runs the sweep, `python -m lvae.cli -m experiment=<e> budget=<b> [seed=0,...,N-1] ...`
   (what `python train.py -m` and `lvae-train -m` run), into outputs/<e>-<b>/ below the
   current directory: a complete run returns at once, an interrupted one resumes.
   Overrides are passed on, e.g. `hydra/launcher=joblib hydra.launcher.n_jobs=2`.
   table1 first runs its base run, fig3's 5-layer LVAE+BN+WU (skipped when fig3 ran).
3. Writes the report (lvae.report) into the sweep folder, also when some runs failed.
4. Exits with 1 when a run has no result.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from lvae.cli.arguments import budget_name, positive_integer
from lvae.cli.children import Stopped, exit_stopped, run_child
from lvae.cli.train_command import refusal_message
from lvae.core.compiling import CPU_MIN_EVAL_PAIRS, CPU_MIN_TRAIN_STEPS, use_compile
from lvae.core.evaluate import curve_interval
from lvae.core.models import build_model
from lvae.report.output import write_report
from lvae.report.runs import collect_runs
from lvae.run.config import Config, ConfigError, validate
from lvae.run.provenance import is_current_numerics
from lvae.run.record import is_complete, is_complete_for, read_record
from lvae.run.settings import model_spec
from lvae.run.sweep import Job, sweep_jobs

# Rates measured on the reference machine; an estimate scales them by each run's size. `make bench` on the
# idle machine, 2026-12-05, commit ce7c757 (docs/performance.md), the slower of the 5-layer LVAE and VAE:
# 234 steps of 41.8 ms eager and 37.4 ms compiled (VAE); evaluation 44,722 and 66,626 pairs/s (LVAE). The
# same machine type measured about half these rates on 2026-12-02: an estimate can be off by that much.
REFERENCE_MACHINE = "2 CPU cores (x86_64), torch on the CPU with 2 threads"
SECONDS_PER_EPOCH = {False: 9.8, True: 8.8}  # eager, compiled: a 5-layer epoch over 60,000 images, batch 256
IW_SAMPLES_PER_SECOND = {False: 44_000, True: 66_000}  # eager, compiled: (image x sample)/s, 5-layer, K=5000
# Loading the data, the end-of-run analysis and figures, checkpoints: measured 40 s a run in the quick
# budget's Figure 3 (20 runs, 2026-12-05: 62 minutes in all, of which the runs' own clocks count 49).
SECONDS_PER_RUN = 40.0
SECONDS_TO_START = 6.0  # importing torch and Hydra, once per sweep
MNIST_PIXELS, MNIST_TRAIN_IMAGES, MNIST_TEST_IMAGES = 784, 60_000, 10_000

# Sweeps that must run before an experiment: table1 fine-tunes fig3's 5-layer LVAE+BN+WU.
PREREQUISITES = {"table1": ["experiment=fig3", "variant=lvae_bn_wu", "layers=5"]}


@dataclass
class Estimate:
    """Seconds on the reference machine, by phase."""

    train: float = 0.0
    batch_norm: float = 0.0  # test-time batch-norm statistics: one forward pass over the training set
    evaluate: float = 0.0  # K-sample test log-likelihood, 1-sample bounds
    overhead: float = 0.0

    @property
    def total(self) -> float:
        return self.train + self.batch_norm + self.evaluate + self.overhead

    def __add__(self, other: Estimate) -> Estimate:
        return Estimate(self.train + other.train, self.batch_norm + other.batch_norm,
                        self.evaluate + other.evaluate, self.overhead + other.overhead)


def matmul_share(cfg: Config) -> float:
    """The run's dense-layer weights (its matmul work per sample) as a share of the same model with 5 layers,
    on which the rates were measured."""
    def weights(layers: int) -> int:
        model = build_model(model_spec(replace(cfg, layers=layers)), MNIST_PIXELS)
        return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return weights(cfg.layers) / weights(5)


def estimate_run(cfg: Config, epochs_done: int = 0) -> Estimate:
    """Seconds that the run `cfg` takes on the reference machine, from epoch `epochs_done` on: its training
    steps (compiled or eager, as `auto` decides on a CPU), its training-curve points and its evaluation."""
    share = matmul_share(cfg)
    samples = cfg.train.mc_samples * cfg.train.iw_samples
    train_images = min(cfg.data.train_subset or MNIST_TRAIN_IMAGES, MNIST_TRAIN_IMAGES)
    test_images = min(cfg.eval.test_subset or MNIST_TEST_IMAGES, MNIST_TEST_IMAGES)
    epochs = cfg.train.epochs - epochs_done
    cpu = torch.device("cpu")
    compiled_step = use_compile(cfg.train.compile, cpu, epochs * (train_images // cfg.train.batch_size),
                                CPU_MIN_TRAIN_STEPS)
    compiled_eval = use_compile(cfg.eval.compile, cpu, test_images * cfg.eval.iw_samples, CPU_MIN_EVAL_PAIRS)
    epoch = SECONDS_PER_EPOCH[compiled_step] * share * train_images / MNIST_TRAIN_IMAGES
    evaluated_samples = test_images * (cfg.eval.iw_samples + 1) + cfg.eval.train_subset * samples
    interval = curve_interval(cfg.eval.curve_every, cfg.train.epochs)
    curve_points = cfg.train.epochs // interval - epochs_done // interval if interval else 0
    # A point: the K-sample test bound, then 1-sample passes over the test and training images; eager.
    curve_samples = curve_points * cfg.eval.curve_images * (cfg.eval.curve_iw_samples + 2)
    return Estimate(train=epochs * epoch * samples,
                    batch_norm=epoch / 3,  # a forward pass costs about a third of a training step
                    evaluate=share * (evaluated_samples / IW_SAMPLES_PER_SECOND[compiled_eval]
                                      + curve_samples / IW_SAMPLES_PER_SECOND[False]),
                    overhead=SECONDS_PER_RUN)


def estimate_jobs(jobs: list[Job]) -> tuple[Estimate, int, list[Path]]:
    """The estimate of the jobs still to run, how many are complete already, and which of
    those were scored by another numerics version than the installed one."""
    total, complete, other_code = Estimate(overhead=SECONDS_TO_START), 0, []
    for job in jobs:
        complete_record = is_complete_for(job.run_dir, job.config)
        if complete_record is not None:
            complete += 1
            if not is_current_numerics(complete_record):
                other_code.append(job.run_dir)
        else:  # an interrupted run resumes from its checkpoint's epoch (its record's `epoch`)
            record = read_record(job.run_dir) or {}
            total += estimate_run(job.config, 0 if is_complete(record) else record.get("epoch", 0))
    return total, complete, other_code


def describe_other_code(run_dirs: list[Path]) -> str:
    """A warning for complete runs whose numbers come from other code (never taken silently)."""
    listed = "\n".join(f"    {run_dir}" for run_dir in run_dirs)
    return (f"WARNING: {len(run_dirs)} of the complete runs were scored by another numerics version than the "
            f"installed one (lvae/run/provenance.py, NUMERICS_VERSION). They are not trained again, and the report "
            f"marks their numbers with †. "
            f"To recompute them with this code, move their folders away first:\n{listed}")


def duration(seconds: float) -> str:
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours:.0f} h ({hours / 24:.1f} days)"


def describe_estimate(estimate: Estimate, runs: int, complete: int, label: str) -> str:
    return "\n".join([
        f"ESTIMATE (not a measurement) for {label}: {runs} runs, {complete} of them complete already.",
        f"  On the reference machine, {REFERENCE_MACHINE}: about {duration(estimate.total)}",
        f"  (training {duration(estimate.train)}, batch-norm statistics {duration(estimate.batch_norm)}, "
        f"evaluation {duration(estimate.evaluate)}, loading and analysis {duration(estimate.overhead)}).",
        f"  From measured rates: {SECONDS_PER_EPOCH[False]} s (eager) and {SECONDS_PER_EPOCH[True]} s (compiled) "
        f"per 5-layer epoch over 60,000 images, {IW_SAMPLES_PER_SECOND[False]:,} and {IW_SAMPLES_PER_SECOND[True]:,} "
        "(image x sample)/s at K=5000;",
        "  shallower models by their share of the matmul work. A GPU takes a small fraction of this.",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lvae.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="fig3", help="a preset of configs/experiment/ (default: fig3)")
    parser.add_argument("--budget", default="paper", type=budget_name,
                        help="a budget of configs/budget/ (default: paper)")
    parser.add_argument("--seeds", type=positive_integer, default=1, help="runs per cell with seeds 0..N-1 (default: 1)")
    parser.add_argument("--dry-run", action="store_true", help="print the estimate and the commands, run nothing")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. hydra/launcher=joblib")
    args = parser.parse_args(argv)

    common = [f"budget={args.budget}", *([f"seed={','.join(map(str, range(args.seeds)))}"] if args.seeds > 1 else []),
              *args.overrides]
    steps = [[*PREREQUISITES[args.experiment], *common]] if args.experiment in PREREQUISITES else []
    steps.append([f"experiment={args.experiment}", *common])
    try:  # every value is checked before anything runs
        jobs_per_step = [sweep_jobs(step) for step in steps]
        for job in (job for jobs in jobs_per_step for job in jobs):
            validate(job.config)
    except ConfigError as error:
        parser.exit(2, f"{error}\n")
    except (HydraException, OmegaConfBaseException) as error:  # an override Hydra refuses
        parser.exit(2, f"{refusal_message(error, args.overrides)}\n")
    estimate, complete, other_code = estimate_jobs([job for jobs in jobs_per_step for job in jobs])
    runs = sum(map(len, jobs_per_step))
    print(describe_estimate(estimate, runs, complete, f"experiment={args.experiment} budget={args.budget}"))
    if other_code:
        print(describe_other_code(other_code))
    # The installed entry point, not train.py by path: reproduce runs from any directory.
    commands = [[sys.executable, "-m", "lvae.cli", "-m", *step] for step in steps]
    for command in commands:
        print("$", " ".join(["python", *command[1:]]), flush=True)
    if args.dry_run:
        return

    try:
        failed_steps = sum(run_child(command) != 0 for command in commands)
    except Stopped as stopped:
        exit_stopped(stopped, "its runs stopped with a checkpoint")
    jobs = jobs_per_step[-1]
    sweep_dir = jobs[0].sweep_dir
    bases = sorted({Path(job.config.init_from) for job in jobs if job.config.init_from})
    records = collect_runs([sweep_dir, *bases])
    for path in write_report(records, sweep_dir):
        print(f"wrote {path}")
    without_result = [r for r in records if not r.completed]
    for record in without_result:
        print(f"no result: {record.run_dir} ({record.status})")
    if without_result or failed_steps:
        sys.exit(1)


if __name__ == "__main__":
    main()
