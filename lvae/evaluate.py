"""Evaluation: batch-norm statistics, the importance-weighted log-likelihood and bounds.

The 5000-sample estimate of log p(x) (PAPER.md §1) is computed in chunks sized by
a memory budget: a chunk holds `images x samples` pairs, and when one image's
samples do not fit they are split over several chunks and combined with a
running logsumexp in float64. The per-image work (`model.encode`) runs once per
image chunk and is reused for all of its samples.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Iterable

import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_linear_bn_eval
from tqdm.auto import tqdm

from .data import ImageData
from .models import MLP, HierarchicalVAE
from .objectives import elbo, kl_per_layer, log_importance_weights, training_bound

BYTES_PER_FLOAT = 4


@torch.no_grad()
def recompute_batchnorm_statistics(model: HierarchicalVAE, batches: Iterable[torch.Tensor]) -> None:
    """Replace running batch-norm statistics by their average over `batches`.

    The authors compute test-time statistics over the whole training set rather
    than keeping the exponential moving average of training (PAPER.md §4).
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None = cumulative average over all batches seen
    model.train()
    for x in batches:
        model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def fold_batchnorm(model: HierarchicalVAE) -> HierarchicalVAE:
    """An evaluation copy of `model` with every Linear -> BatchNorm pair folded into one Linear.

    In eval mode batch norm is a fixed affine map, so the fold computes the same
    function with one pass over each activation instead of two.
    """
    folded = copy.deepcopy(model).eval()
    for mlp in folded.modules():
        if isinstance(mlp, MLP):
            layers: list[nn.Module] = []
            for layer in mlp.net:
                if isinstance(layer, _BatchNorm):
                    layers[-1] = fuse_linear_bn_eval(layers[-1], layer)
                else:
                    layers.append(layer)
            mlp.net = nn.Sequential(*layers)
    return folded


def chunk_shape(model: HierarchicalVAE, n_images: int, n_samples: int, memory_budget_mb: float) -> tuple[int, int]:
    """(images, samples) per chunk so that one chunk's activations fit the budget."""
    pairs = max(1, int(memory_budget_mb * 2**20) // (BYTES_PER_FLOAT * model.floats_per_sample()))
    images = max(1, min(n_images, pairs // n_samples))
    samples = max(1, min(n_samples, pairs // images))
    return images, samples


@torch.no_grad()
def iw_log_likelihood(model: HierarchicalVAE, images: torch.Tensor, iw_samples: int,
                      memory_budget_mb: float, progress: bool = False) -> torch.Tensor:
    """log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x), for each image: (N,) float64."""
    model.eval()
    n_images, n_samples = chunk_shape(model, len(images), iw_samples, memory_budget_mb)
    estimates = []
    bar = tqdm(total=len(images), desc=f"log p(x), K={iw_samples}", unit="img", disable=not progress, leave=False)
    for x in images.split(n_images):
        context = model.encode(x)
        total = torch.full((len(x),), -math.inf, dtype=torch.float64, device=x.device)
        for start in range(0, iw_samples, n_samples):
            trace = model(x, min(n_samples, iw_samples - start), context=context)
            total = torch.logaddexp(total, log_importance_weights(trace).double().logsumexp(0))
        estimates.append(total - math.log(iw_samples))
        bar.update(len(x))
    bar.close()
    return torch.cat(estimates)


@torch.no_grad()
def per_image(model: HierarchicalVAE, images: torch.Tensor, n_samples: int, memory_budget_mb: float,
              statistic: Callable) -> torch.Tensor:
    """statistic(trace) for chunks of images with n_samples each, concatenated on the last axis."""
    model.eval()
    n_images, _ = chunk_shape(model, len(images), n_samples, memory_budget_mb)
    return torch.cat([statistic(model(x, n_samples)) for x in images.split(n_images)], dim=-1)


def mean_and_stderr(values: torch.Tensor) -> dict:
    """Mean over images and its standard error (sample std / sqrt(n))."""
    values = values.double()
    stderr = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": values.mean().item(), "stderr": stderr, "images": len(values)}


def evaluate_model(model: HierarchicalVAE, data: ImageData, cfg: DictConfig) -> dict:
    """Every end-of-run number: test log p(x) (K = eval.iw_samples), test ELBO, train bound, KL per layer.

    Call `recompute_batchnorm_statistics` first when the model uses batch norm.
    """
    budget, progress = cfg.eval.memory_budget_mb, cfg.train.progress
    model = fold_batchnorm(model)
    test = data.test[: cfg.eval.test_subset]
    train = data.fixed_train_subset(cfg.eval.train_subset, seed=cfg.data.binarization_seed)
    iw, mc = cfg.train.iw_samples, cfg.train.mc_samples

    log_likelihood = iw_log_likelihood(model, test, cfg.eval.iw_samples, budget, progress)
    # One 1-sample pass gives both the test ELBO (row 0) and the KL of every layer (rows 1..L).
    test_elbo, *test_kl = per_image(model, test, 1, budget,
                                    lambda t: torch.cat([elbo(t), kl_per_layer(t)[:, 0]]))
    train_bound = per_image(model, train, mc * iw, budget, lambda t: training_bound(t, iw))
    return {
        "test_log_likelihood": {**mean_and_stderr(log_likelihood), "iw_samples": cfg.eval.iw_samples},
        "test_elbo": {**mean_and_stderr(test_elbo), "samples": 1},
        "train_bound": {**mean_and_stderr(train_bound), "iw_samples": iw, "mc_samples": mc},
        "kl_per_layer": [kl.double().mean().item() for kl in test_kl],
    }
