"""The end-of-run analysis of trained runs: figures and analysis.json (docs/method.md, section 5).

A run calls `analyze_runs` on itself at its end (eval.analyze); `python -m lvae.analyze`
calls it on any run directories (see there for the files it writes). Several runs
share the figures.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from omegaconf import OmegaConf

from .analysis import (
    ActiveUnits,
    active_units,
    image_grid,
    plot_active_units,
    plot_kl_history,
    plot_pca,
    posterior_samples,
    reconstruction_rows,
)
from .checkpoint import load_checkpoint, write_json
from .config import resolve_device
from .data import ImageData, load_dataset
from .stored_run import check_run_dir, read_config, read_metrics, trained_model
from .summary import variant_name

IMAGES_PER_GRID = 100  # prior samples; reconstructions show half as many test images, each row above its own
IMAGES_PER_ROW = 10


def run_name(run_dir: Path, metrics: dict | None) -> str:
    """A completed run as "VAE+BN+WU5 L5", any other as its folder name (with metrics.json's status)."""
    if metrics is None:
        return run_dir.name
    if metrics.get("status") != "completed":
        return f"{run_dir.name} ({metrics.get('status', 'unknown status')})"
    return f"{variant_name(metrics)} L{metrics['layers']}"


def run_names(run_dirs: list[Path], metrics: list[dict | None]) -> list[str]:
    """The name of every run; a name that repeats gets the folder name added."""
    names = [run_name(run_dir, m) for run_dir, m in zip(run_dirs, metrics)]
    return [f"{name} ({run_dir.name})" if names.count(name) > 1 else name for name, run_dir in zip(names, run_dirs)]


def file_stem(name: str) -> str:
    """A run name as part of a file name: "VAE+BN+WU5 L5" -> "VAE+BN+WU5_L5"."""
    return re.sub(r"[^\w+.=-]+", "_", name).strip("_")


def analyze_runs(run_dirs: list[Path], out_dir: Path, test_subset: int | None = None,
                 device: str | torch.device = "auto", n_samples: int = 1, seed: int = 0) -> dict:
    """Write the figures and analysis.json for `run_dirs` into out_dir; returns analysis.json's content.

    Uses the first `test_subset` test images (None: all) and n_samples posterior
    samples per image for the active-unit statistics (see `lvae.analysis.active_units`).
    Seeds torch's global generator with `seed`. Raises RunDirError when a run
    directory lacks config.yaml or checkpoint.pt, before any work is done.
    """
    run_dirs = [Path(d) for d in run_dirs]
    for run_dir in run_dirs:
        check_run_dir(run_dir)
    device = resolve_device(device) if isinstance(device, str) else device
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    metrics = [read_metrics(run_dir) for run_dir in run_dirs]
    names = run_names(run_dirs, metrics)

    datasets: dict[str, ImageData] = {}  # runs that read the same data share one copy
    results: dict[str, ActiveUnits] = {}
    samples: dict[str, list[torch.Tensor]] = {}
    for run_dir, name in zip(run_dirs, names):
        cfg = read_config(run_dir)
        weights = load_checkpoint(run_dir / "checkpoint.pt", device)["model"]  # a bad file fails before the data load
        data_key = OmegaConf.to_yaml(cfg.data)
        if data_key not in datasets:
            datasets[data_key] = load_dataset(cfg.data, device)
        data = datasets[data_key]
        model = trained_model(cfg, weights, data.dim, device)
        images, budget = data.test[:test_subset], cfg.eval.memory_budget_mb
        results[name] = active_units(model, images, budget, n_samples)
        samples[name] = posterior_samples(model, images, budget)
        image_grid(model.generative.sample(IMAGES_PER_GRID), out_dir / f"samples_{file_stem(name)}.png",
                   IMAGES_PER_ROW)
        image_grid(reconstruction_rows(model, images[:IMAGES_PER_GRID // 2], IMAGES_PER_ROW),
                   out_dir / f"reconstructions_{file_stem(name)}.png", IMAGES_PER_ROW)
    labels = data.test_labels[:test_subset].cpu()  # the test set, in the same order for every run

    plot_active_units(results, out_dir / "active_units.png")
    plot_pca(samples, labels, out_dir / "pca.png")
    histories = {name: m["history"] for name, m in zip(names, metrics) if m and m.get("history")}
    if histories:
        plot_kl_history(histories, out_dir / "kl_per_layer.png")
    summary = {
        "test_images": len(labels),
        "posterior_samples_per_image": n_samples,
        "seed": seed,
        "runs": {name: {"run_dir": str(run_dir), **results[name].to_json()} for run_dir, name in zip(run_dirs, names)},
    }
    write_json(out_dir / "analysis.json", summary)
    return summary
