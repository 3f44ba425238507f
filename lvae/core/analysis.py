"""Looking inside a trained hierarchy (docs/method.md, section 5; the paper's section on active units and PCA).

- Active units per layer, by the paper's criterion (the KL term of a unit, averaged
  over the data, above 0.01 nats) and by Burda et al.'s (Cov_x(E_q[z_u|x]) > 0.01).
- One posterior sample z_i ~ q per image and layer, and its first two principal components,
  and how much of the digit a layer's samples hold (a nearest-class-mean rule).

The figures of these statistics are lvae/run/figures.py's (a run's) and lvae/report/figures.py's (the paper's).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from lvae.core.evaluate import per_image
from lvae.core.models import HierarchicalVAE, StochasticLayer

ACTIVITY_THRESHOLD = 0.01  # both criteria (docs/method.md, section 5)
DIGITS = 10


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


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device):
    """torch's global generators (the CPU's and `device`'s) seeded with `seed` inside, restored after: the
    figures' draws repeat, and the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def layer_names(n_layers: int) -> list[str]:
    return [f"z{i}" for i in range(1, n_layers + 1)]


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
