"""Look inside trained hierarchies: `python -m lvae.analyze RUN_DIR [RUN_DIR ...]`.

Each run directory (as `lvae.train.run` writes it) must hold config.yaml and
checkpoint.pt; the metrics.json of a completed run names the run and gives its
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
import json
import re
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from .analysis import (
    ActiveUnits,
    active_units,
    image_grid,
    layer_names,
    plot_active_units,
    plot_kl_history,
    plot_pca,
    posterior_samples,
    reconstruction_rows,
    to_grid,
)
from .checkpoint import CheckpointError, load_checkpoint, write_json
from .config import DEVICES, ConfigError, resolve_device
from .data import DatasetError, ImageData, load_dataset
from .models import HierarchicalVAE, build_model
from .report import variant_name

REQUIRED_FILES = ("config.yaml", "checkpoint.pt")
IMAGES_PER_GRID = 100  # prior samples; reconstructions show half as many test images, each row above its own
IMAGES_PER_ROW = 10
TENSORBOARD_IMAGES_PER_ROW = 8


class RunDirError(FileNotFoundError):
    """A run directory lacks a file the analysis needs."""


def check_run_dir(run_dir: Path) -> None:
    """Raise RunDirError naming what the analysis needs and `run_dir` lacks."""
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a directory")
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise RunDirError(f"{run_dir} has no {' and no '.join(missing)}: not a finished run directory of lvae.train")


def read_metrics(run_dir: Path) -> dict | None:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


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
        cfg = OmegaConf.load(run_dir / "config.yaml")
        weights = load_checkpoint(run_dir / "checkpoint.pt", device)["model"]  # a bad file fails before the data load
        data_key = OmegaConf.to_yaml(cfg.data)
        if data_key not in datasets:
            datasets[data_key] = load_dataset(cfg.data, device)
        data = datasets[data_key]
        model = build_model(cfg, data.dim).to(device)
        model.load_state_dict(weights)  # with the batch-norm statistics of the evaluation
        model.eval()
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


def markdown_table(runs: dict[str, dict]) -> str:
    """Active units per layer, "KL / Cov of d_i", one row per run of analysis.json's `runs`."""
    n_layers = max(len(run["layer_sizes"]) for run in runs.values())
    lines = ["| run | " + " | ".join(layer_names(n_layers)) + " |", "|---" * (n_layers + 1) + "|"]
    for name, run in runs.items():
        cells = [f"{kl} / {cov} of {size}" for kl, cov, size in zip(run["kl"], run["cov"], run["layer_sizes"])]
        cells += ["–"] * (n_layers - len(cells))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@torch.no_grad()
def log_to_tensorboard(writer: SummaryWriter, model: HierarchicalVAE, data: ImageData, step: int,
                       memory_budget_mb: float, test_subset: int | None = None, n_images: int = 64) -> ActiveUnits:
    """Add prior samples, reconstructions and active units per layer (both criteria) at `step`.

    Scalars `active_units_kl/z<i>` and `active_units_cov/z<i>`, images `samples` and
    `reconstructions` (n_images each; rows of test images alternate with rows of
    their reconstructions). Puts the model in eval mode; returns the active units.
    """
    images = data.test[:test_subset]
    result = active_units(model, images, memory_budget_mb)
    counts = result.counts()
    for criterion in ("kl", "cov"):
        for layer, count in zip(layer_names(model.num_layers), counts[criterion]):
            writer.add_scalar(f"active_units_{criterion}/{layer}", count, step)
    writer.add_image("samples", to_grid(model.generative.sample(n_images), TENSORBOARD_IMAGES_PER_ROW), step)
    rows = reconstruction_rows(model, images[:n_images // 2], TENSORBOARD_IMAGES_PER_ROW)
    writer.add_image("reconstructions", to_grid(rows, TENSORBOARD_IMAGES_PER_ROW), step)
    return result


def default_out_dir(run_dirs: list[Path]) -> Path:
    """The run directory itself for one run, else `analysis` beside the first run directory."""
    return run_dirs[0] if len(run_dirs) == 1 else run_dirs[0].parent / "analysis"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lvae.analyze",
        description="Active units, PCA of each layer's posterior, KL per layer, prior samples and "
                    "reconstructions of trained runs (docs/method.md, section 5).")
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="run directories holding config.yaml and checkpoint.pt")
    parser.add_argument("--out", type=Path, help="output folder (default: the run directory for one run, "
                                                 "else <first run dir>/../analysis)")
    parser.add_argument("--test-subset", type=int, metavar="N", help="the first N test images (default: all)")
    parser.add_argument("--samples", type=int, default=1, metavar="S",
                        help="posterior samples per image for the active-unit statistics (default: 1)")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="default: auto (cuda when available)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the posterior and prior samples (default: 0)")
    args = parser.parse_args(argv)
    for option in ("test_subset", "samples"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1, not {value}")
    out_dir = args.out or default_out_dir(args.run_dirs)
    try:
        summary = analyze_runs(args.run_dirs, out_dir, args.test_subset, args.device, args.samples, args.seed)
    except (RunDirError, CheckpointError, DatasetError, ConfigError) as error:
        print(f"lvae.analyze: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"Active units per layer (KL / Cov of layer size), {summary['test_images']} test images:\n")
    print(markdown_table(summary["runs"]))
    print(f"\nFigures and analysis.json in {out_dir}")


if __name__ == "__main__":
    main()
