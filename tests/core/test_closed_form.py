"""The importance-weighted estimate against log p(x) known in closed form.

Linear-Gaussian models (probabilistic PCA and a two-layer chain) built with the
project's classes. When the inference model equals the exact posterior, every
importance weight equals p(x), so the estimate is exact at any K. When it does
not, the estimate is a lower bound that rises towards log p(x) as K grows; the
tolerance at K = 5000 comes from the delta method: with normalised weights
w~ = w / p(x) of variance v, log mean(w~) has bias about -v / (2K) and
standard deviation about sqrt(v / K).
"""

import math

import pytest
import torch

from lvae.core.evaluate import iw_log_likelihood
from lvae.core.models import BottomUpVAE, LadderVAE
from lvae.core.objectives import log_importance_weights

from ..helpers.linear_gaussian import LinearGaussian, set_head

N_IMAGES = 200
FLOAT_TOLERANCE = 1e-6  # the models run in float64 here


def _data(truth: LinearGaussian) -> torch.Tensor:
    return truth.marginal().sample(torch.Size([N_IMAGES]))


def test_ppca_with_exact_posterior_gives_exact_log_likelihood_at_every_k(device):
    torch.manual_seed(0)
    truth = LinearGaussian(data_dim=6, latent_sizes=[2])
    model = truth.build(BottomUpVAE)
    set_head(model.encoders[0].head, *truth.exact_one_layer_posterior())
    x = _data(truth)
    exact = truth.marginal().log_prob(x)
    model, x = model.to(device), x.to(device)
    for k in (1, 7, 5000):
        estimate = iw_log_likelihood(model, x, k, memory_budget_mb=1).cpu()
        torch.testing.assert_close(estimate, exact, atol=FLOAT_TOLERANCE, rtol=0)


def test_lvae_with_exact_posterior_gives_exact_log_likelihood(device):
    """Two layers, scalar z_2: the precision-weighted merge of the likelihood term of
    z_1 with p(z_1|z_2) is the exact p(z_1|z_2,x), and q(z_2|x) is exact too."""
    torch.manual_seed(0)
    truth = LinearGaussian(data_dim=6, latent_sizes=[3, 1])
    model = truth.build(LadderVAE)
    set_head(model.upward_heads[0], *truth.likelihood_term())
    set_head(model.upward_heads[1], *truth.exact_top_posterior_scalar())
    x = _data(truth)
    exact = truth.marginal().log_prob(x)
    model, x = model.to(device), x.to(device)
    for k in (1, 5000):
        torch.testing.assert_close(iw_log_likelihood(model, x, k, memory_budget_mb=1).cpu(), exact,
                                   atol=FLOAT_TOLERANCE, rtol=0)


def _perturbed_ppca():
    truth = LinearGaussian(data_dim=6, latent_sizes=[2])
    model = truth.build(BottomUpVAE)
    gain, offset, var = truth.exact_one_layer_posterior()
    set_head(model.encoders[0].head, gain, offset + 0.4, var * 2.0)  # shifted and too wide
    return truth, model


def _weight_variance(model, x, k: int) -> torch.Tensor:
    """Per image, the variance of w / p(x), estimated from k fresh samples."""
    with torch.no_grad():
        log_w = log_importance_weights(model(x, k))
    log_p_hat = log_w.logsumexp(0) - math.log(k)
    return (log_w - log_p_hat).exp().var(0)


@pytest.mark.parametrize("model_name", ["vae", "lvae"])
def test_estimate_rises_towards_log_likelihood_with_k(model_name, device):
    torch.manual_seed(1)
    if model_name == "vae":
        truth, model = _perturbed_ppca()
    else:
        truth = LinearGaussian(data_dim=6, latent_sizes=[3, 1])
        model = truth.build(LadderVAE)
        gain, offset, var = truth.likelihood_term()
        set_head(model.upward_heads[0], gain * 0.9, offset, var * 3.0)
        gain, offset, var = truth.exact_top_posterior_scalar()
        set_head(model.upward_heads[1], gain, offset - 0.3, var * 0.7)
    x = _data(truth)
    exact = truth.marginal().log_prob(x).to(device)
    model, x = model.to(device), x.to(device)
    gaps = {k: (exact - iw_log_likelihood(model, x, k, memory_budget_mb=1)).mean().item()
            for k in (1, 10, 100, 5000)}
    # A lower bound that tightens: every gap positive at small K and shrinking.
    assert gaps[1] > gaps[10] > gaps[100] > 0, gaps
    assert gaps[1] > 0.05, "the perturbed posterior should leave a visible K=1 gap"
    k = 5000
    v = _weight_variance(model, x, k).mean().item()
    bias, stderr = v / (2 * k), math.sqrt(v / (k * N_IMAGES))
    assert abs(gaps[k] - bias) < 5 * stderr + bias, (gaps, v)
