"""The analysis of trained runs: figures and analysis.json (docs/method.md, section 5).

`analyze` is a function of models, their data and the settings: a run calls it at its end
on the model it holds in memory (eval.analyze), with the active units its evaluation
computed; `analyze_runs` reads run folders back and calls it (`python -m lvae.analyze`,
see there for the files it writes). Several runs share the figures.

It leaves the caller's random state as it was: its own draws (prior samples,
reconstructions) come from a forked generator seeded with the run's seed, and the
posterior samples of the statistics from per-image noise (lvae.core.evaluate.per_image).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from lvae.core.analysis import (ActiveUnits, active_units, nearest_centroid_accuracy, posterior_samples,
                                reconstruction_rows, seeded_rng)
from lvae.core.evaluate import DEFAULT_MEMORY_BUDGET_MB
from lvae.core.models import HierarchicalVAE
from lvae.data import load_dataset
from lvae.data.images import ImageData
from lvae.run.config import resolve_device
from lvae.run.figures import image_grid, plot_active_units, plot_kl_history, plot_pca
from lvae.run.folder import naming_failures, write_json
from lvae.run.record import ANALYSIS_FILE, is_complete, read_record
from lvae.run.stored import check_run_dir, stored_run, trained_model
from lvae.run.summary import variant_name

IMAGES_PER_GRID = 100  # prior samples; reconstructions show half as many test images, each row above its own
IMAGES_PER_ROW = 10


@dataclass
class AnalysisSettings:
    test_subset: int | None = None  # the first N of the fixed random order of the test set (None: all)
    posterior_samples: int = 1  # per image, for the active-unit statistics (see lvae.core.analysis.active_units)
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB


@dataclass
class RunToAnalyze:
    name: str  # in figure titles, file names and analysis.json
    model: HierarchicalVAE  # trained, in eval mode with the batch-norm statistics of its evaluation
    data: ImageData
    seed: int  # of its noise: the run's own seed gives the active units of its metrics.json
    history: list[dict] | None = None  # metrics.json's per-epoch history, for the KL-per-layer figure
    active: ActiveUnits | None = None  # computed already by the run's evaluation with the same settings
    run_dir: Path | None = None  # where it was read from, for analysis.json


def run_name(run_dir: Path, metrics: dict | None) -> str:
    """A completed run as "VAE+BN+WU L5", any other as its folder name (with metrics.json's status)."""
    if metrics is None:
        return run_dir.name
    if not is_complete(metrics):
        return f"{run_dir.name} ({metrics.get('status', 'unknown status')})"
    return f"{variant_name(metrics)} L{metrics['layers']}"


def run_names(run_dirs: list[Path], metrics: list[dict | None]) -> list[str]:
    """The name of every run; a name that repeats gets the folder name added."""
    names = [run_name(run_dir, m) for run_dir, m in zip(run_dirs, metrics)]
    return [f"{name} ({run_dir.name})" if names.count(name) > 1 else name for name, run_dir in zip(names, run_dirs)]


def file_stem(name: str) -> str:
    """A run name as part of a file name: "VAE+BN+WU L5" -> "VAE+BN+WU_L5"."""
    return re.sub(r"[^\w+.=-]+", "_", name).strip("_")


def _save(path: Path, draw: Callable[[Path], None]) -> None:
    """draw(path), a figure written by matplotlib or PIL; a failed write names the file (a full disk)."""
    with naming_failures(path):
        draw(path)


def analyze(runs: list[RunToAnalyze], out_dir: Path, settings: AnalysisSettings) -> dict:
    """Write the figures and analysis.json for `runs` into out_dir; returns analysis.json's content."""
    out_dir.mkdir(parents=True, exist_ok=True)
    budget, n_samples = settings.memory_budget_mb, settings.posterior_samples
    results: dict[str, ActiveUnits] = {}
    samples: dict[str, list[torch.Tensor]] = {}
    for run in runs:
        indices, images = run.data.test_sample(settings.test_subset)
        noise = {"indices": indices, "seed": run.seed}
        results[run.name] = run.active or active_units(run.model, images, budget, n_samples, **noise)
        samples[run.name] = posterior_samples(run.model, images, budget, **noise)
        with seeded_rng(run.seed, next(run.model.parameters()).device):
            _save(out_dir / f"samples_{file_stem(run.name)}.png",
                  lambda path: image_grid(run.model.generative.sample(IMAGES_PER_GRID), path, IMAGES_PER_ROW))
            _save(out_dir / f"reconstructions_{file_stem(run.name)}.png",
                  lambda path: image_grid(reconstruction_rows(run.model, images[:IMAGES_PER_GRID // 2], IMAGES_PER_ROW),
                                          path, IMAGES_PER_ROW))
    # Every run of one dataset scores the same sample of its test set, in the same order.
    labels = runs[-1].data.test_labels[indices.to(runs[-1].data.test_labels.device)].cpu()

    _save(out_dir / "active_units.png", lambda path: plot_active_units(results, path))
    _save(out_dir / "pca.png", lambda path: plot_pca(samples, labels, path))
    histories = {run.name: run.history for run in runs if run.history}
    if histories:
        _save(out_dir / "kl_per_layer.png", lambda path: plot_kl_history(histories, path))
    labelled = bool((labels >= 0).all())  # a dataset without classes has label -1
    summary = {
        "test_images": len(labels),
        "test_set_images": len(runs[-1].data.test),
        "posterior_samples_per_image": n_samples,
        "runs": {run.name: {**({"run_dir": str(run.run_dir)} if run.run_dir else {}), "seed": run.seed,
                            **results[run.name].to_json(),
                            # How well each layer's posterior sample tells the classes apart (the PCA's question).
                            **({"nearest_centroid_accuracy": [nearest_centroid_accuracy(z, labels)
                                                              for z in samples[run.name]]} if labelled else {})}
                 for run in runs},
    }
    write_json(out_dir / ANALYSIS_FILE, summary)
    return summary


def analyze_runs(run_dirs: list[Path], out_dir: Path, settings: AnalysisSettings,
                 device: str | torch.device = "auto", seed: int | None = None) -> dict:
    """Read the runs of run_dirs back and `analyze` them; each run's noise comes from `seed`, by default
    its own seed (then its active units are those of its metrics.json). Raises RunDirError when a run
    directory lacks config.yaml, or both checkpoint.pt and weights.pt (a published run), before any work is done."""
    run_dirs = [Path(d) for d in run_dirs]
    for run_dir in run_dirs:
        check_run_dir(run_dir)
    device = resolve_device(device) if isinstance(device, str) else device
    records = [read_record(run_dir) for run_dir in run_dirs]
    datasets: dict[str, ImageData] = {}  # runs that read the same data share one copy
    runs = []
    for run_dir, name, record in zip(run_dirs, run_names(run_dirs, records), records):
        cfg, weights = stored_run(run_dir, device)  # a bad file fails before the data load
        data_key = repr(cfg.data)
        if data_key not in datasets:
            datasets[data_key] = load_dataset(cfg.data, device)
        data = datasets[data_key]
        model = trained_model(cfg, weights, data.dim, device, f"the weights in {run_dir}")
        runs.append(RunToAnalyze(name, model, data, cfg.seed if seed is None else seed, (record or {}).get("history"),
                                 run_dir=run_dir))
    return analyze(runs, out_dir, settings)
