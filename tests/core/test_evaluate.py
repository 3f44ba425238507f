"""Evaluation helpers against values known exactly: batch-norm statistics over known
batches, and the convergence diagnostic of the K-sample estimate."""

from __future__ import annotations

import math

import torch
from torch import nn

from lvae.core.evaluate import (BYTES_PER_FLOAT, IMAGE_GROUP, chunk_layout, chunk_shape, iw_estimates,
                                iw_log_likelihood, iw_log_likelihood_halves, recompute_batchnorm_statistics)
from lvae.core.models import BottomUpVAE

from ..helpers.linear_gaussian import LinearGaussian, set_head
from .test_models import small_model


def test_batchnorm_statistics_are_the_average_over_the_given_batches():
    """Population statistics = the mean of the batches' means and of their (unbiased)
    variances, whatever the running statistics held before (training's moving averages)."""
    torch.manual_seed(0)
    model = small_model("vae", layers=3)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    for m in norms:  # what training leaves behind: far from the truth, many batches counted
        m.running_mean.fill_(100.0)
        m.running_var.fill_(50.0)
        m.num_batches_tracked.fill_(1000)
    seen: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in norms}
    hooks = [m.register_forward_hook(lambda m, inputs, _: seen[m].append(
        (inputs[0].detach().mean(0), inputs[0].detach().var(0, unbiased=True)))) for m in norms]
    batches = [torch.bernoulli(torch.rand(16, 20)) for _ in range(5)]
    recompute_batchnorm_statistics(model, batches)
    for hook in hooks:
        hook.remove()
    for m in norms:
        means, variances = zip(*seen[m])
        assert len(means) == len(batches)
        torch.testing.assert_close(m.running_mean, torch.stack(means).mean(0))
        torch.testing.assert_close(m.running_var, torch.stack(variances).mean(0))
    assert not model.training


def _ppca_with_exact_posterior():
    truth = LinearGaussian(data_dim=6, latent_sizes=[2])
    model = truth.build(BottomUpVAE)
    set_head(model.encoders[0].head, *truth.exact_one_layer_posterior())
    return truth, model


def test_halves_count_every_sample_once_across_chunks():
    """With the exact posterior every weight equals p(x), so each half's log-sum is
    log(its number of samples) + log p(x): a sample counted twice, lost, or put in the
    wrong half shows, also when sample chunks and blocks straddle the middle (blocks of 3
    samples, one block per chunk, K = 7)."""
    torch.manual_seed(0)
    truth, model = _ppca_with_exact_posterior()
    x = truth.marginal().sample(torch.Size([5]))
    exact = truth.marginal().log_prob(x)
    k, samples_per_chunk = 7, 3
    budget = samples_per_chunk * BYTES_PER_FLOAT * model.floats_per_sample() / 2**20
    assert chunk_shape(model, len(x), k, budget) == (1, samples_per_chunk)
    assert chunk_layout(model, len(x), k, budget, sample_block=3) == (IMAGE_GROUP, samples_per_chunk)
    halves = iw_log_likelihood_halves(model, x, k, budget, sample_block=3)
    torch.testing.assert_close(halves, torch.stack([exact + math.log(3), exact + math.log(4)]))
    estimate, remaining = iw_estimates(halves, k)
    torch.testing.assert_close(estimate, exact)
    torch.testing.assert_close(iw_log_likelihood(model, x, k, budget), exact)
    torch.testing.assert_close(remaining, torch.zeros_like(remaining), atol=1e-12, rtol=0)


def test_remaining_gap_estimates_the_gap_left_at_k():
    """PPCA, log p(x) exact, a perturbed posterior: the gap left at K is about v / (2K) (delta
    method, v the variance of w / p(x)), and so is the K-sample estimate minus the mean of
    its two halves."""
    torch.manual_seed(0)
    truth, model = _ppca_with_exact_posterior()
    x = truth.marginal().sample(torch.Size([2000]))
    exact = truth.marginal().log_prob(x)
    gain, offset, var = truth.exact_one_layer_posterior()
    set_head(model.encoders[0].head, gain, offset + 0.4, var * 2.0)  # shifted and too wide
    k = 100
    estimate, remaining = iw_estimates(iw_log_likelihood_halves(model, x, k, memory_budget_mb=64), k)
    true_gap = exact - estimate
    difference = true_gap - remaining  # per image: the diagnostic's error
    stderr = difference.std().item() / math.sqrt(len(x))
    assert remaining.mean() > 0.01, "a visible gap at K = 100"
    assert abs(difference.mean().item()) < 5 * stderr + 0.25 * true_gap.mean().item(), (
        true_gap.mean().item(), remaining.mean().item(), stderr)
