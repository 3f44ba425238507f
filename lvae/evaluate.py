"""Evaluation: batch-norm statistics, the importance-weighted log-likelihood and bounds.

The 5000-sample estimate of log p(x) (docs/method.md, eq. 9) is computed in chunks sized by
a memory budget: a chunk holds `images x samples` pairs, and when one image's
samples do not fit they are split over several chunks and combined with a
running logsumexp in float64. The per-image work (`model.encode`) runs once per
image chunk and is reused for all of its samples.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable, Iterable

import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.utils.fusion import fuse_linear_bn_eval
from tqdm.auto import tqdm

from .compiling import CPU_MIN_EVAL_PAIRS, compile_mode, use_compile
from .data import ImageData
from .models import HierarchicalVAE
from .objectives import elbo, kl_per_layer, log_importance_weights, training_bound

BYTES_PER_FLOAT = 4


@contextlib.contextmanager
def float32_matmuls(allow_tf32: bool):
    """CUDA matmuls and convolutions in full float32 unless allow_tf32; the previous setting is restored."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow_tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


@torch.no_grad()
def recompute_batchnorm_statistics(model: HierarchicalVAE, batches: Iterable[torch.Tensor],
                                   allow_tf32: bool = False) -> None:
    """Replace running batch-norm statistics by their average over `batches` (full float32 on CUDA
    unless allow_tf32: the statistics are part of the measurement).

    The authors compute test-time statistics over the whole training set rather
    than keeping the exponential moving average of training (docs/method.md, section 5).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None = cumulative average over all batches seen
    model.train()
    with float32_matmuls(allow_tf32):
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
    for sequence in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:  # MLPs and `dense` maps
        for i in reversed(range(1, len(sequence))):
            if isinstance(sequence[i], nn.BatchNorm1d):
                sequence[i - 1] = fuse_linear_bn_eval(sequence[i - 1], sequence[i])
                del sequence[i]
    return folded


def chunk_shape(model: HierarchicalVAE, n_images: int, n_samples: int, memory_budget_mb: float) -> tuple[int, int]:
    """(images, samples) per chunk so that one chunk's activations fit the budget."""
    pairs = max(1, int(memory_budget_mb * 2**20) // (BYTES_PER_FLOAT * model.floats_per_sample()))
    images = max(1, min(n_images, pairs // n_samples))
    samples = max(1, min(n_samples, pairs // images))
    return images, samples


@torch.no_grad()
def iw_log_likelihood_halves(model: HierarchicalVAE, images: torch.Tensor, iw_samples: int,
                             memory_budget_mb: float, progress: bool = False) -> torch.Tensor:
    """log sum_k w_k over the first floor(K/2) samples and over the other samples, per image: (2, N) float64.

    w_k = p(x, z_k) / q(z_k|x), z_k ~ q(z|x). Both halves come from the one pass that
    the K-sample estimate needs; `iw_estimates` combines them.
    """
    model.eval()
    n_images, n_samples = chunk_shape(model, len(images), iw_samples, memory_budget_mb)
    half = iw_samples // 2
    sums = []
    bar = tqdm(total=len(images), desc=f"log p(x), K={iw_samples}", unit="img", disable=not progress, leave=False)
    for x in images.split(n_images):
        context = model.encode(x)
        total = torch.full((2, len(x)), -math.inf, dtype=torch.float64, device=x.device)
        for start in range(0, iw_samples, n_samples):
            log_w = log_importance_weights(model(x, min(n_samples, iw_samples - start), context=context)).double()
            cut = min(max(half - start, 0), len(log_w))  # where this chunk crosses into the second half
            chunk = torch.stack([log_w[:cut].logsumexp(0), log_w[cut:].logsumexp(0)])  # empty part: -inf
            total = torch.logaddexp(total, chunk)
        sums.append(total)
        bar.update(len(x))
    bar.close()
    return torch.cat(sums, dim=1)


def iw_log_likelihood(model: HierarchicalVAE, images: torch.Tensor, iw_samples: int,
                      memory_budget_mb: float, progress: bool = False) -> torch.Tensor:
    """log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x), for each image: (N,) float64 (docs/method.md, eq. 9)."""
    halves = iw_log_likelihood_halves(model, images, iw_samples, memory_budget_mb, progress)
    return iw_estimates(halves, iw_samples)[0]


def iw_estimates(halves: torch.Tensor, iw_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From `iw_log_likelihood_halves`: the K-sample estimate and how far it still is from converged, per image.

    The bound's gap to log p(x) shrinks about as c/K for large K, so the K-sample
    estimate minus the mean of the two K/2-sample estimates, about c/K, estimates the
    gap that remains at K. NaN when K = 1 (no halves).
    """
    estimate = halves.logsumexp(0) - math.log(iw_samples)
    half = iw_samples // 2
    if half == 0:
        return estimate, torch.full_like(estimate, math.nan)
    half_estimates = halves - torch.tensor([math.log(half), math.log(iw_samples - half)],
                                           dtype=halves.dtype, device=halves.device)[:, None]
    return estimate, estimate - half_estimates.mean(0)


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
    """Every end-of-run number: test log p(x) (K = eval.iw_samples) and how converged it is,
    test ELBO, train bound, KL per layer. A measurement: full float32 on CUDA unless eval.allow_tf32.
    Plain values, except `per_image`: the test estimates of every image as (N,) float64 tensors.

    Call `recompute_batchnorm_statistics` first when the model uses batch norm.
    """
    device = next(model.parameters()).device
    test_images = len(data.test[: cfg.eval.test_subset])
    compile_chunks = use_compile(cfg.eval.compile, device, test_images * cfg.eval.iw_samples, CPU_MIN_EVAL_PAIRS)
    with float32_matmuls(cfg.eval.allow_tf32):
        return {**_evaluate(evaluation_copy(model, compile_chunks), data, cfg), "compiled": compile_chunks}


def evaluation_copy(model: HierarchicalVAE, compile_forward: bool = False) -> HierarchicalVAE:
    """The model as evaluation runs it: batch norm folded (a copy), its forward pass, which every
    chunk runs, compiled when asked (lvae/compiling.py)."""
    folded = fold_batchnorm(model)
    if compile_forward:
        device = next(folded.parameters()).device
        folded.compile(mode=compile_mode(device), dynamic=False)
    return folded


def _evaluate(model: HierarchicalVAE, data: ImageData, cfg: DictConfig) -> dict:
    budget, progress, k = cfg.eval.memory_budget_mb, cfg.train.progress, cfg.eval.iw_samples
    test = data.test[: cfg.eval.test_subset]
    train = data.fixed_train_subset(cfg.eval.train_subset, seed=cfg.data.binarization_seed)
    iw, mc = cfg.train.iw_samples, cfg.train.mc_samples

    log_likelihood, remaining_gap = iw_estimates(iw_log_likelihood_halves(model, test, k, budget, progress), k)
    # One 1-sample pass gives both the test ELBO (row 0) and the KL term of every layer (rows 1..L).
    test_elbo, *test_kl = per_image(model, test, 1, budget,
                                    lambda t: torch.cat([elbo(t), kl_per_layer(t)[:, 0]]))
    train_bound = per_image(model, train, mc * iw, budget, lambda t: training_bound(t, iw))
    gap = mean_and_stderr(remaining_gap) if k > 1 else {"mean": None, "stderr": None}
    return {
        "test_log_likelihood": {**mean_and_stderr(log_likelihood), "iw_samples": k,
                                # K-sample estimate minus the mean of its two K/2 halves: the gap left at K
                                "remaining_gap": gap["mean"], "remaining_gap_stderr": gap["stderr"]},
        "test_elbo": {**mean_and_stderr(test_elbo), "samples": 1},
        "train_bound": {**mean_and_stderr(train_bound), "iw_samples": iw, "mc_samples": mc},
        "kl_per_layer": [mean_and_stderr(kl)["mean"] for kl in test_kl],
        "kl_per_layer_stderr": [mean_and_stderr(kl)["stderr"] for kl in test_kl],
        # Per test image, for paired comparisons between runs (all runs see the same test images).
        "per_image": {"test_log_likelihood": log_likelihood.cpu(), "test_elbo": test_elbo.double().cpu()},
    }
