"""Bounds: K = 1 equals the ELBO, the analytic-KL ELBO has the right expectation, warm-up."""

import math

import pytest
import torch

from lvae.core.models import ModelSpec, build_model
from lvae.core.objectives import elbo, iw_bound, kl_warmup_weight, log_importance_weights, training_bound


def _model_and_data(name="lvae"):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name, latent_sizes=(6, 4, 2), hidden_sizes=(16, 12, 10)), 20).eval()
    return model, torch.bernoulli(torch.rand(5, 20))


def test_iw_bound_with_one_sample_is_the_elbo_estimate():
    model, x = _model_and_data()
    trace = model(x, 4)
    log_w = log_importance_weights(trace)
    single_sample_elbo = trace.log_px + sum(l.log_p() - l.log_q() for l in trace.layers)
    torch.testing.assert_close(iw_bound(log_w, iw_samples=1), single_sample_elbo.mean(0))


def test_iw_bound_groups_mc_and_iw_samples():
    log_w = torch.randn(6, 3)  # 2 MC groups x 3 importance samples, 3 images
    manual = torch.stack([log_w[:3].logsumexp(0), log_w[3:].logsumexp(0)]).mean(0) - math.log(3)
    torch.testing.assert_close(iw_bound(log_w, iw_samples=3), manual)


@pytest.mark.parametrize("name", ["vae", "lvae"])
def test_analytic_kl_elbo_and_log_ratio_elbo_agree_in_expectation(name):
    model, x = _model_and_data(name)
    with torch.no_grad():
        trace = model(x, 20_000)
    analytic, sampled = elbo(trace), log_importance_weights(trace)
    diff = analytic - sampled  # same samples: a paired difference with expectation 0
    stderr = diff.std(0) / math.sqrt(diff.shape[0])
    assert (diff.mean(0).abs() < 5 * stderr).all(), (diff.mean(0), stderr)
    assert (analytic.var(0) <= sampled.var(0)).all(), "analytic KL should lower the variance"


def test_training_bound_uses_the_warmup_weight():
    model, x = _model_and_data()
    trace = model(x, 2)
    kl = sum(l.kl_term_per_unit().sum(-1) for l in trace.layers)
    torch.testing.assert_close(training_bound(trace, 1, kl_weight=0.25), (trace.log_px - 0.25 * kl).mean(0))
    torch.testing.assert_close(training_bound(trace, 1, kl_weight=0.0), trace.log_px.mean(0))
    log_ratio = sum(l.log_p() - l.log_q() for l in trace.layers)
    torch.testing.assert_close(training_bound(trace, 2, kl_weight=0.5),
                               (trace.log_px + 0.5 * log_ratio).logsumexp(0) - math.log(2))


def test_warmup_weight_rises_linearly_then_stays_at_one():
    steps = 10
    assert kl_warmup_weight(0, steps, 4) == 0.0
    assert kl_warmup_weight(20, steps, 4) == 0.5
    assert kl_warmup_weight(40, steps, 4) == 1.0
    assert kl_warmup_weight(400, steps, 4) == 1.0
    assert kl_warmup_weight(0, steps, 0) == 1.0, "warmup_epochs = 0 switches warm-up off"
