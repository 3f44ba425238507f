"""The paper folder's figures (lvae/report/verdicts.py), drawn from every seed of each variant.

A variant's runs are its seeds: a curve or bar is their mean, each seed drawn faint beside it, and every
title says how many seeds. Figures are drawn on `matplotlib.figure.Figure` objects (no pyplot state).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib
import torch
from matplotlib.figure import Figure

from lvae.core.analysis import ACTIVITY_THRESHOLD, layer_names


def curve_points(history: list[dict]) -> list[dict]:
    """The epochs of a run's history that hold a training-curve point (metrics.json's `history[*]["curve"]`)."""
    return [record for record in history if "curve" in record]


def seeds_title(counts: list[int]) -> str:
    """"1 seed", "3 seeds", or "1-3 seeds" when the variants have different numbers of seeds."""
    low, high = min(counts), max(counts)
    return f"{low} seed{'' if high == 1 else 's'}" if low == high else f"{low}-{high} seeds"


def _mean_line(ax, runs: list[list[tuple[int, float]]], colour: str, label: str, style: str = "-",
               marker: str = "") -> None:
    """Each run's (epoch, value) points faint when there are several, and their mean at the epochs all share."""
    if len(runs) > 1:
        for points in runs:
            ax.plot(*zip(*points), style, color=colour, linewidth=0.7, alpha=0.3)
    shared = sorted(set.intersection(*({epoch for epoch, _ in points} for points in runs)))
    by_epoch = [dict(points) for points in runs]
    ax.plot(shared, [statistics.fmean(values[e] for values in by_epoch) for e in shared], style, marker=marker,
            color=colour, markersize=4, linewidth=1.4, label=label)


def plot_bounds_vs_epochs(histories: dict[str, list[list[dict]]], path: Path) -> None:
    """The paper's training curves: training bound (left) and test bound (right) against epoch, one colour per
    variant: the mean over its seeds, each seed faint. histories: variant -> one history per seed.

    Left: the ELBO averaged over each epoch's training batches. Right: the K-sample test bound (solid, dots) and
    the 1-sample test ELBO (dashed) at the curve points.
    """
    figure = Figure(figsize=(13, 4.8), layout="constrained")
    train_ax, test_ax = figure.subplots(1, 2, sharey=True)
    for colour, (name, seeds) in enumerate(histories.items()):
        _mean_line(train_ax, [[(r["epoch"], r["train_elbo"]) for r in h] for h in seeds], f"C{colour}",
                   f"{name}: training batches")
        points = [curve_points(h) for h in seeds]
        if not all(points):
            continue
        k = points[0][-1]["curve"]["iw_samples"]
        _mean_line(test_ax, [[(r["epoch"], r["curve"]["test_bound"]) for r in p] for p in points], f"C{colour}",
                   f"{name}: K={k} bound", marker="o")
        _mean_line(test_ax, [[(r["epoch"], r["curve"]["test_elbo"]) for r in p] for p in points], f"C{colour}",
                   f"{name}: ELBO", style="--")
    for ax, title in ((train_ax, "training set: ELBO"), (test_ax, "test sample: bounds")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:  # the test panel stays empty for runs without curve points
            ax.legend(fontsize=7)
    train_ax.set_ylabel("nats per image (higher is better)")
    # The first epochs score far below the rest: the y axis starts from the values after the first 5 %.
    last = max(r["epoch"] for seeds in histories.values() for h in seeds for r in h)
    later = [y for ax in (train_ax, test_ax) for line in ax.lines
             for x, y in zip(line.get_xdata(), line.get_ydata()) if x > max(1, last // 20)]
    if later:
        low, high = min(later), max(later)
        train_ax.set_ylim(low - 0.1 * (high - low + 1), high + 0.1 * (high - low + 1))
    if not test_ax.lines:
        test_ax.text(0.5, 0.5, "no training curves recorded\n(eval.curve_every)", ha="center", va="center",
                     transform=test_ax.transAxes)
    seeds = seeds_title([len(s) for s in histories.values()])
    figure.suptitle(f"Bounds during training ({seeds}{': the mean, each seed faint' if 'seeds' in seeds else ''})",
                    fontsize=13)
    figure.savefig(path, dpi=120)


def plot_kl_per_layer_bars(kl_by_run: dict[str, tuple[list[list[float]], list[list[float]]]], path: Path) -> None:
    """KL(q‖p) of each layer at the end of training, one bar per variant in each layer's group, on a log scale.
    kl_by_run: variant -> (each seed's per-layer means, each seed's per-layer standard errors over the test
    images), z_1 first. A bar is the mean over the seeds, ± its standard error over the seeds (one seed: over the
    test images); each seed is a dot."""
    n_layers = max(len(seed) for means, _ in kl_by_run.values() for seed in means)
    width = 0.8 / len(kl_by_run)
    figure = Figure(figsize=(max(7.0, 1.6 * n_layers + 2), 4.5), layout="constrained")
    ax = figure.subplots()
    for r, (name, (means, stderrs)) in enumerate(kl_by_run.items()):
        positions = [i + (r - (len(kl_by_run) - 1) / 2) * width for i in range(len(means[0]))]
        layers = list(zip(*means))  # per layer, the seeds' values
        mean = [statistics.fmean(values) for values in layers]
        error = ([statistics.stdev(values) / len(values) ** 0.5 for values in layers] if len(means) > 1
                 else stderrs[0])
        # A bottom-up VAE's upper-layer terms can be slightly negative (lvae.core.analysis.active_units): at the floor.
        ax.bar(positions, [max(m, ACTIVITY_THRESHOLD) for m in mean], width, yerr=error, capsize=3, color=f"C{r}",
               alpha=0.85, label=f"{name} ({seeds_title([len(means)])})")
        if len(means) > 1:
            for seed in means:
                ax.plot(positions, [max(v, ACTIVITY_THRESHOLD) for v in seed], "o", color="black", markersize=2.5)
    ax.set_yscale("log")
    ax.axhline(ACTIVITY_THRESHOLD, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(range(n_layers), layer_names(n_layers))
    ax.set_xlabel("stochastic layer (z1 = bottom)")
    ax.set_ylabel("KL term, nats per test image (log scale)")
    ax.legend(fontsize=8)
    seeds = seeds_title([len(means) for means, _ in kl_by_run.values()])
    several = ": the mean ± its standard error over the seeds, each seed a dot" if "seeds" in seeds else ""
    figure.suptitle(f"KL per layer at the end of training ({seeds}{several})", fontsize=12)
    figure.savefig(path, dpi=120)


def plot_kl_per_unit(history_by_run: dict[str, list[dict]], path: Path, columns: int = 6) -> None:
    """log10 of each unit's KL term at up to `columns` of the curve points (evenly spread, the last included),
    one panel per run (units of different seeds are different units, so every seed has its panel): rows are
    units, z_1's first, a line between layers; white where the unit is inactive (KL term <= 0.01 nats, the
    paper's criterion). history_by_run: "variant, seed s" -> that run's history."""
    runs = {name: curve_points(history) for name, history in history_by_run.items()}
    runs = {name: points for name, points in runs.items() if points}
    if not runs:
        return
    figure = Figure(figsize=(2.6 * len(runs) + 1.5, 6.5), layout="constrained")
    axes = figure.subplots(1, len(runs), squeeze=False)[0]
    colours = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    image = None
    for ax, (name, points) in zip(axes, runs.items()):
        shown = min(columns, len(points))
        chosen = sorted({points[round(i * (len(points) - 1) / max(shown - 1, 1))]["epoch"] for i in range(shown)})
        by_epoch = {r["epoch"]: r["curve"]["kl_per_unit"] for r in points}
        kl = torch.tensor([[v for layer in by_epoch[e] for v in layer] for e in chosen]).T  # (units, epochs)
        log_kl = torch.where(kl > ACTIVITY_THRESHOLD, kl.clamp_min(ACTIVITY_THRESHOLD).log10(), torch.nan)
        image = ax.imshow(log_kl.numpy(), aspect="auto", cmap=colours, vmin=-2, vmax=1, interpolation="nearest")
        sizes = [len(layer) for layer in by_epoch[chosen[0]]]
        for boundary in torch.tensor(sizes).cumsum(0)[:-1].tolist():
            ax.axhline(boundary - 0.5, color="black", linewidth=0.8)
        starts = [0, *torch.tensor(sizes).cumsum(0)[:-1].tolist()]
        ax.set_yticks([s + n / 2 - 0.5 for s, n in zip(starts, sizes)], layer_names(len(sizes)))
        ax.set_xticks(range(len(chosen)), chosen, fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_title(name, fontsize=9)
    figure.colorbar(image, ax=axes, label="log10 KL per unit (nats); white: inactive", shrink=0.8)
    figure.suptitle(f"KL per unit during training (test sample; {len(runs)} runs, one panel each)", fontsize=13)
    figure.savefig(path, dpi=120)
