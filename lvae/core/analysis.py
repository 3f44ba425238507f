"""Looking inside a trained hierarchy (docs/method.md, section 5; the paper's section on active units and PCA).

- Active units per layer, by the paper's criterion (the KL term of a unit, averaged
  over the data, above 0.01 nats) and by Burda et al.'s (Cov_x(E_q[z_u|x]) > 0.01).
- One posterior sample z_i ~ q per image and layer, and its first two principal components.
- Figures: active units, PCA of each layer's posterior coloured by digit label, KL per
  layer against epoch, and image grids (prior samples, reconstructions).

Figures are drawn on `matplotlib.figure.Figure` objects and saved by matplotlib's Agg
renderer; pyplot and its global state are never used, so nothing here needs a display
or leaves figures open inside a training process.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from torch.utils.tensorboard import SummaryWriter

from lvae.core.evaluate import per_image
from lvae.core.models import HierarchicalVAE, StochasticLayer

ACTIVITY_THRESHOLD = 0.01  # both criteria (docs/method.md, section 5)
DIGITS = 10
TENSORBOARD_IMAGES_PER_ROW = 8


@dataclass
class ActiveUnits:
    """Activity of every latent unit, one tensor per layer from z_1 (bottom) to z_L (top)."""

    kl: list[torch.Tensor]  # (d_i,) the unit's KL term (StochasticLayer.kl_term_per_unit) averaged over images, nats
    posterior_mean_variance: list[torch.Tensor]  # (d_i,) Cov_x(E_q[z_u|x]), the variance over images
    threshold: float = ACTIVITY_THRESHOLD

    @property
    def layer_sizes(self) -> list[int]:
        return [len(values) for values in self.kl]

    def active_by_kl(self) -> list[torch.Tensor]:
        """Per layer, which units are active by the paper's criterion (boolean mask)."""
        return [values > self.threshold for values in self.kl]

    def active_by_cov(self) -> list[torch.Tensor]:
        """Per layer, which units are active by Burda et al.'s criterion (boolean mask)."""
        return [values > self.threshold for values in self.posterior_mean_variance]

    def counts(self) -> dict:
        """Active units per layer by both criteria, and the layer sizes."""
        return {
            "layer_sizes": self.layer_sizes,
            "kl": [int(mask.sum()) for mask in self.active_by_kl()],
            "cov": [int(mask.sum()) for mask in self.active_by_cov()],
        }

    def to_json(self) -> dict:
        """The counts, the threshold and every unit's value, as plain Python values."""
        return {
            **self.counts(),
            "threshold": self.threshold,
            "kl_per_unit": [values.tolist() for values in self.kl],
            "posterior_mean_variance_per_unit": [values.tolist() for values in self.posterior_mean_variance],
        }


def per_layer_per_image(model: HierarchicalVAE, images: torch.Tensor, n_samples: int, memory_budget_mb: float,
                        statistic: Callable[[StochasticLayer], torch.Tensor], **noise) -> list[torch.Tensor]:
    """statistic(layer) -> (B, d_i) for every layer of the traces of all images: one (N, d_i) per layer, on the CPU.

    The traces come from `lvae.core.evaluate.per_image` (eval mode, no gradients, image
    chunks sized by the memory budget), with n_samples samples per image; `noise`: the
    images' `indices` in their set and the `seed` that choose their noise (see per_image).
    """
    def all_layers(trace) -> torch.Tensor:  # (sum_i d_i, B): per_image joins chunks on the last axis
        return torch.cat([statistic(layer) for layer in trace.layers], dim=-1).T

    values = per_image(model, images, n_samples, memory_budget_mb, all_layers, stream="analysis", **noise)
    return [v.cpu() for v in values.T.split(model.latent_sizes, dim=-1)]


def active_units(model: HierarchicalVAE, images: torch.Tensor, memory_budget_mb: float,
                 n_samples: int = 1, **noise) -> ActiveUnits:
    """Per-unit activity of every layer on `images`, by both criteria of docs/method.md, section 5.

    KL criterion (the paper): the unit's KL term E_q[log q(z_u|.) - log p(z_u|z_{i+1})],
    estimated without bias by `StochasticLayer.kl_term_per_unit` (the analytic KL at the
    sampled parent for top-down inference and every top layer, eq. 7; log q - log p at the
    joint sample for the bottom-up VAE's lower layers, eq. 8), averaged over the n_samples
    samples of each image and over the images; active when > 0.01 nats. For the bottom-up
    VAE a lower layer's term is not a divergence of its own and can be negative; the terms
    of all layers add up to KL(q(z|x) || p(z)).

    Cov criterion (Burda et al.): the variance over images of E_q[z_u|x]; active when
    > 0.01. E_q[z_u|x] is estimated by `layer.q_mean` averaged over the n_samples
    samples of each image (one sample by default). It is exact for the first layer
    sampled (the VAE's z_1, the LVAE's z_L); every other layer's q_mean depends on a
    sampled parent, and the spread of those parents adds E_x[Var(q_mean|x)] / n_samples
    to the variance, so units can look more active with few samples.
    """
    kl = per_layer_per_image(model, images, n_samples, memory_budget_mb,
                             lambda layer: layer.kl_term_per_unit().mean(0), **noise)
    posterior_means = per_layer_per_image(model, images, n_samples, memory_budget_mb,
                                          lambda layer: layer.q_mean.mean(0), **noise)
    return ActiveUnits(kl=[values.double().mean(0) for values in kl],
                       posterior_mean_variance=[means.double().var(0) for means in posterior_means])


def posterior_samples(model: HierarchicalVAE, images: torch.Tensor, memory_budget_mb: float,
                      **noise) -> list[torch.Tensor]:
    """One sample z_i ~ q(z_i|.) per image for every layer: a (N, d_i) tensor per layer, z_1 first."""
    return per_layer_per_image(model, images, 1, memory_budget_mb, lambda layer: layer.z[0], **noise)


def pca_2d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the rows of x (N, d) on their first two principal components, and the explained-variance ratios.

    The components are the top right singular vectors of the centred data. Returns
    (N, 2) scores and (2,) fractions of the total variance. When d = 1 there is no
    second component: its scores and ratio are zero.
    """
    centred = x.double() - x.double().mean(0)
    _, singular_values, components = torch.linalg.svd(centred, full_matrices=False)
    kept = min(2, len(components))
    scores = centred.new_zeros(len(x), 2)
    scores[:, :kept] = centred @ components[:kept].T
    variances = singular_values.square()
    ratios = centred.new_zeros(2)
    if variances.sum() > 0:
        ratios[:kept] = variances[:kept] / variances.sum()
    return scores.float(), ratios.float()


@torch.no_grad()
def reconstruction_rows(model: HierarchicalVAE, images: torch.Tensor, images_per_row: int) -> torch.Tensor:
    """Rows of `images_per_row` images, each followed by a row of their reconstructions: (2N, D).

    A reconstruction is E[x | z_1] with z_1 ~ q(z_1|x). N is len(images) rounded down
    to whole rows (one shorter row when there are fewer images than a row holds).
    """
    model.eval()
    per_row, pixels = min(images_per_row, len(images)), images.shape[1]
    images = images[: len(images) // per_row * per_row]
    reconstructions = model.generative.mean_image(model(images, 1).layers[0].z[0])
    rows = torch.stack([images.reshape(-1, per_row, pixels), reconstructions.reshape(-1, per_row, pixels)], dim=1)
    return rows.reshape(-1, pixels)


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


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device):
    """torch's global generators (the CPU's and `device`'s) seeded with `seed` inside, restored after: the
    figures' draws repeat, and the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def layer_names(n_layers: int) -> list[str]:
    return [f"z{i}" for i in range(1, n_layers + 1)]


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


def nearest_centroid_accuracy(samples: torch.Tensor, labels: torch.Tensor) -> float:
    """How well a layer's posterior samples tell the classes apart: the accuracy of a nearest-class-mean
    classifier fitted on a random half of the images and scored on the other half, N - N // 2 images
    (chance: about 1 / classes). samples: (N, d); labels: (N,) integer classes."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).to(labels.device)
    fit, score = order[:len(labels) // 2], order[len(labels) // 2:]
    classes = labels[fit].unique()
    centroids = torch.stack([samples[fit][labels[fit] == c].double().mean(0) for c in classes])
    nearest = torch.cdist(samples[score].double(), centroids).argmin(1)
    return (classes[nearest] == labels[score]).double().mean().item()
