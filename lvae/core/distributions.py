"""Diagonal-Gaussian and Bernoulli densities as small explicit helpers.

Every function works elementwise (no sum over units) so that callers can keep
per-unit terms (active units need them) or sum over the last axis.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(value: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """log N(value; mean, var), per unit."""
    return -0.5 * (LOG_2PI + var.log() + (value - mean).square() / var)


def gaussian_kl(
    mean_q: torch.Tensor, var_q: torch.Tensor, mean_p: torch.Tensor, var_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)), per unit, in nats."""
    return 0.5 * (var_p.log() - var_q.log() + (var_q + (mean_q - mean_p).square()) / var_p - 1.0)


def bernoulli_log_prob(value: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log Bernoulli(value; sigmoid(logits)) = value * logits - softplus(logits), per unit.

    Stable for any logits, and `value` broadcasts without being copied to the
    logits' shape (binary_cross_entropy_with_logits needs equal shapes).
    """
    return value * logits - F.softplus(logits)


def precision_weighted_merge(
    mean_a: torch.Tensor, var_a: torch.Tensor, mean_b: torch.Tensor, var_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised product of two diagonal Gaussians (docs/method.md, eq. 5, the LVAE downward pass).

    sigma2_q = 1 / (sigma_a^-2 + sigma_b^-2),  mu_q = (mu_a sigma_a^-2 + mu_b sigma_b^-2) sigma2_q.
    """
    precision_a, precision_b = var_a.reciprocal(), var_b.reciprocal()
    var = (precision_a + precision_b).reciprocal()
    mean = (mean_a * precision_a + mean_b * precision_b) * var
    return mean, var


def sample_gaussian(mean: torch.Tensor, var: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Reparameterised sample mean + sigma * eps, so gradients reach mean and var.

    eps ~ N(0, I) is drawn from the global RNG, or is `noise` when given (evaluation draws it
    per image, so that no image's sample depends on the others it is computed with).
    """
    eps = torch.randn_like(mean) if noise is None else noise
    return mean + var.sqrt() * eps
