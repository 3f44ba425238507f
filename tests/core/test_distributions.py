"""The density helpers against torch.distributions and the Gaussian product identity."""

import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from lvae.core.distributions import (bernoulli_log_prob, gaussian_kl, gaussian_log_prob, precision_weighted_merge,
                                     sample_gaussian)

torch.manual_seed(0)


def _gaussian(shape=(7, 5)):
    return torch.randn(shape, dtype=torch.float64), torch.rand(shape, dtype=torch.float64) * 3 + 0.05


def test_gaussian_log_prob_matches_torch():
    mean, var = _gaussian()
    z = torch.randn_like(mean) * 2
    expected = Normal(mean, var.sqrt()).log_prob(z)
    torch.testing.assert_close(gaussian_log_prob(z, mean, var), expected)


def test_gaussian_kl_matches_torch():
    (mq, vq), (mp, vp) = _gaussian(), _gaussian()
    expected = kl_divergence(Normal(mq, vq.sqrt()), Normal(mp, vp.sqrt()))
    torch.testing.assert_close(gaussian_kl(mq, vq, mp, vp), expected)
    assert (gaussian_kl(mq, vq, mq, vq).abs() < 1e-12).all()


def test_bernoulli_log_prob_matches_torch():
    logits = torch.randn(6, 9, dtype=torch.float64) * 5
    x = torch.bernoulli(torch.full_like(logits, 0.3))
    torch.testing.assert_close(bernoulli_log_prob(x, logits), Bernoulli(logits=logits).log_prob(x))


def test_precision_weighted_merge_is_the_normalised_product():
    """N(z; a) N(z; b) = N(mu_a; mu_b, var_a + var_b) N(z; merged), for every z."""
    (ma, va), (mb, vb) = _gaussian(), _gaussian()
    mean, var = precision_weighted_merge(ma, va, mb, vb)
    for _ in range(3):
        z = torch.randn_like(ma) * 3
        product = gaussian_log_prob(z, ma, va) + gaussian_log_prob(z, mb, vb)
        normaliser = gaussian_log_prob(ma, mb, va + vb)
        torch.testing.assert_close(product - normaliser, gaussian_log_prob(z, mean, var))


def test_merge_with_a_flat_gaussian_returns_the_other():
    ma, va = _gaussian()
    mean, var = precision_weighted_merge(ma, va, torch.zeros_like(ma), torch.full_like(va, 1e12))
    torch.testing.assert_close(mean, ma, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(var, va, rtol=1e-9, atol=1e-9)


def test_reparameterised_samples_have_the_right_moments_and_gradients():
    mean = torch.tensor([1.5, -2.0], requires_grad=True)
    var = torch.tensor([0.25, 4.0], requires_grad=True)
    z = sample_gaussian(mean.expand(200_000, 2), var.expand(200_000, 2))
    n = z.shape[0]
    # 5 standard errors: sd(mean) = sqrt(var / n), sd(sample variance) ~ var sqrt(2 / n)
    assert ((z.mean(0) - mean).abs() < 5 * (var / n).sqrt()).all()
    assert ((z.var(0) - var).abs() < 5 * var * (2 / n) ** 0.5).all()
    z.sum().backward()
    torch.testing.assert_close(mean.grad, torch.full((2,), float(n)))
    assert torch.isfinite(var.grad).all()
