"""A run's own figures, drawn at the end of a run and by `python -m lvae.analyze`: active units per layer,
the PCA of each layer's posterior, KL per layer during training, image grids, and their TensorBoard copies.
The statistics they draw are lvae/core/analysis.py's.

Figures are drawn on `matplotlib.figure.Figure` objects and saved by matplotlib's Agg renderer; pyplot and its
global state are never used, so nothing here needs a display or leaves figures open inside a training process.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from torch.utils.tensorboard import SummaryWriter

from lvae.core.analysis import ACTIVITY_THRESHOLD, DIGITS, ActiveUnits, layer_names, pca_2d, reconstruction_rows
from lvae.core.models import HierarchicalVAE

TENSORBOARD_IMAGES_PER_ROW = 8


def to_grid(images: torch.Tensor, images_per_row: int) -> torch.Tensor:
    """Flattened square images (N, D) as one (3, H, W) grid with values in [0, 1]."""
    side = math.isqrt(images.shape[1])
    if side * side != images.shape[1]:
        raise ValueError(f"images of {images.shape[1]} pixels are not square")
    from torchvision.utils import make_grid  # imported here: torchvision takes seconds to import

    tiles = images.detach().float().cpu().reshape(-1, 1, side, side).clamp(0, 1)
    return make_grid(tiles, nrow=images_per_row, padding=2, pad_value=0.5)


def image_grid(images: torch.Tensor, path: Path, images_per_row: int = 10, scale: int = 2) -> None:
    """Save flattened square images (N, D) as one PNG grid, each pixel drawn as scale x scale pixels."""
    from torchvision.utils import save_image

    grid = to_grid(images, images_per_row)
    save_image(grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2), path)


def plot_active_units(results_by_run: dict[str, ActiveUnits], path: Path) -> None:
    """Bar plot of active units per layer, one panel per criterion, one bar per run in each layer's group.

    A hollow bar behind each count shows the layer's size.
    """
    n_layers = max(len(result.layer_sizes) for result in results_by_run.values())
    width = 0.8 / len(results_by_run)
    figure = Figure(figsize=(max(9.0, 2.0 + 0.9 * n_layers * len(results_by_run)), 4.5), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    criteria = [("kl", "KL(q‖p) per unit > 0.01 nats (paper)"),
                ("cov", "Cov$_x$(E$_q$[z$_u$|x]) > 0.01 (Burda et al.)")]
    for ax, (criterion, title) in zip(axes, criteria):
        for r, (name, result) in enumerate(results_by_run.items()):
            offset = (r - (len(results_by_run) - 1) / 2) * width
            positions = [i + offset for i in range(len(result.layer_sizes))]
            ax.bar(positions, result.layer_sizes, width, fill=False, edgecolor=f"C{r}", linestyle=":")
            bars = ax.bar(positions, result.counts()[criterion], width, color=f"C{r}", alpha=0.85, label=name)
            ax.bar_label(bars, fontsize=9)
        ax.set_xticks(range(n_layers), layer_names(n_layers))
        ax.set_xlabel("stochastic layer (z1 = bottom)")
        ax.set_title(title)
    axes[0].set_ylabel("active units")
    axes[0].legend(title="run (dotted outline: layer size)")
    figure.suptitle("Active units per layer", fontsize=14)
    figure.savefig(path, dpi=120)


def plot_pca(samples_by_run: dict[str, list[torch.Tensor]], labels: torch.Tensor, path: Path) -> None:
    """Grid of scatter plots: rows = runs, columns = layers, the first two PCs of z_i ~ q coloured by class.

    samples_by_run: per run, one (N, d_i) tensor of posterior samples per layer
    (`posterior_samples`); labels: (N,) class labels of the same images (digits for MNIST), -1 for a
    dataset without classes, whose points get one colour.
    """
    n_layers = max(len(samples) for samples in samples_by_run.values())
    figure = Figure(figsize=(3.2 * n_layers + 1.2, 3.3 * len(samples_by_run) + 0.6), layout="constrained")
    axes = figure.subplots(len(samples_by_run), n_layers, squeeze=False)
    classes = int(labels.max()) + 1 if bool((labels >= 0).all()) else 0
    colours = matplotlib.colormaps["tab10" if classes <= DIGITS else "nipy_spectral"]
    colour_of = {"c": labels.cpu().numpy(), "cmap": colours, "vmin": -0.5, "vmax": classes - 0.5} if classes else {}
    point_size = min(20.0, max(3.0, 8000 / len(labels)))  # smaller points for denser plots
    for row, (name, samples) in zip(axes, samples_by_run.items()):
        for i, ax in enumerate(row):
            if i >= len(samples):
                ax.set_axis_off()
                continue
            scores, ratios = pca_2d(samples[i])
            points = ax.scatter(scores[:, 0].numpy(), scores[:, 1].numpy(), s=point_size, alpha=0.7, linewidths=0,
                                **colour_of)
            ax.set_title(f"{name} z{i + 1}\nd={samples[i].shape[1]}, explained variance "
                         f"PC1 {ratios[0]:.0%}, PC2 {ratios[1]:.0%}", fontsize=9)
            ax.set_xlabel("PC1")
            ax.set_ylabel("PC2")
            ax.tick_params(labelsize=7)
    if classes:
        figure.colorbar(points, ax=axes, ticks=range(0, classes, max(1, classes // DIGITS)), label="class label",
                        shrink=0.6, aspect=30, pad=0.01)
    figure.suptitle("First two principal components of posterior samples z$_i$ ~ q, test images", fontsize=13)
    figure.savefig(path, dpi=110)


def plot_kl_history(history_by_run: dict[str, list[dict]], path: Path) -> None:
    """Each layer's KL term against epoch, one panel per run (metrics.json's `history[*]["kl_per_layer"]`).

    The KL is the training-time average over each epoch's batches, on a symmetric log scale; a
    dashed line marks the first epoch whose KL weight is 1 when warm-up was used.
    """
    figure = Figure(figsize=(5.5 * len(history_by_run) + 0.5, 4.2), layout="constrained")
    axes = figure.subplots(1, len(history_by_run), sharey=True, squeeze=False)[0]
    for ax, (name, history) in zip(axes, history_by_run.items()):
        epochs = [record["epoch"] for record in history]
        kl = torch.tensor([record["kl_per_layer"] for record in history])  # (epochs, L)
        marker = "o" if len(epochs) < 30 else None
        for i, layer in enumerate(layer_names(kl.shape[1])):
            ax.plot(epochs, kl[:, i].numpy(), marker=marker, markersize=3, color=f"C{i}", label=layer)
        if history[0]["kl_weight"] < 1:
            warm = next((record["epoch"] for record in history if record["kl_weight"] >= 1), None)
            if warm is not None:
                ax.axvline(warm, color="grey", linestyle="--", linewidth=1, label="KL weight reaches 1")
        # Symmetric log: the bottom-up VAE's lower-layer terms can be negative (see active_units).
        ax.set_yscale("symlog", linthresh=ACTIVITY_THRESHOLD)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("KL per layer (nats, training batches)")
    figure.suptitle("KL(q‖p) per layer during training", fontsize=13)
    figure.savefig(path, dpi=120)


@torch.no_grad()
def log_to_tensorboard(writer: SummaryWriter, model: HierarchicalVAE, images: torch.Tensor, active: ActiveUnits,
                       step: int, n_images: int = 64) -> None:
    """Add the active units per layer (both criteria), prior samples and reconstructions of `images` at `step`.

    Scalars `active_units_kl/z<i>` and `active_units_cov/z<i>`, images `samples` and
    `reconstructions` (n_images each; rows of test images alternate with rows of
    their reconstructions). Puts the model in eval mode; draws from torch's global generator.
    """
    counts = active.counts()
    for criterion in ("kl", "cov"):
        for layer, count in zip(layer_names(model.num_layers), counts[criterion]):
            writer.add_scalar(f"active_units_{criterion}/{layer}", count, step)
    writer.add_image("samples", to_grid(model.generative.sample(n_images), TENSORBOARD_IMAGES_PER_ROW), step)
    rows = reconstruction_rows(model, images[:n_images // 2], TENSORBOARD_IMAGES_PER_ROW)
    writer.add_image("reconstructions", to_grid(rows, TENSORBOARD_IMAGES_PER_ROW), step)


