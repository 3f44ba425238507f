"""Training and evaluation bounds computed from a model's `Trace` (docs/method.md, section 3).

Samples in a trace are laid out sample-major: S = mc_samples * iw_samples, and
sample s = m * iw_samples + k.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from lvae.core.models import Trace


def kl_warmup_weight(step: int, steps_per_epoch: int, warmup_epochs: int) -> float:
    """Weight on the KL part, rising linearly from 0 to 1 over `warmup_epochs` (docs/method.md, eq. 11).

    Updated every step so that short warm-ups (a few epochs) still ramp smoothly;
    warmup_epochs = 0 switches warm-up off (weight 1 from the first step).
    """
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, step / (warmup_epochs * steps_per_epoch))


def kl_per_layer(trace: Trace) -> torch.Tensor:
    """Each layer's KL term E_q[log q(z_i|.) - log p(z_i|z_{i+1})], one unbiased sample each: (L, S, B).

    Which estimate a layer uses is the layer's own knowledge (`StochasticLayer.kl_term_per_unit`):
    the analytic KL at the sampled parent for top-down inference and every top layer (docs/method.md,
    eq. 7), log q - log p at the joint sample for the bottom-up VAE's lower layers (eq. 8).
    """
    return torch.stack([layer.kl_term_per_unit().sum(-1) for layer in trace.layers])


def elbo(trace: Trace, kl_weight: float = 1.0, kl: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ELBO estimate log p(x|z_1) - kl_weight * sum_i KL_i, per sample: (S, B).

    Unbiased for E_q[log p(x, z) - log q(z|x)] at kl_weight = 1, with lower variance
    than the single-sample log-ratio wherever a layer's term is (partly) analytic.
    kl: `kl_per_layer(trace)` when the caller has it already (each term is then computed once).
    """
    return trace.log_px - kl_weight * (kl_per_layer(trace) if kl is None else kl).sum(0)


def log_importance_weights(trace: Trace, kl_weight: float = 1.0) -> torch.Tensor:
    """log p(x|z) + kl_weight * (log p(z) - log q(z|x)), per sample: (S, B).

    With kl_weight = 1 these are the log importance weights log p(x,z)/q(z|x).
    """
    log_prior_ratio = sum(layer.log_p() - layer.log_q() for layer in trace.layers)
    return trace.log_px + kl_weight * log_prior_ratio


def iw_bound(log_weights: torch.Tensor, iw_samples: int) -> torch.Tensor:
    """mean over MC groups of log (1/K) sum_k w_k (IWAE bound), per image: (B,)."""
    grouped = log_weights.reshape(-1, iw_samples, log_weights.shape[-1])
    return (grouped.logsumexp(dim=1) - math.log(iw_samples)).mean(0)


def training_bound(trace: Trace, iw_samples: int, kl_weight: float = 1.0,
                   kl: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The bound that training maximises, per image: (B,).

    K = 1: the ELBO of `elbo` (each layer's KL term as `kl_per_layer` estimates it), averaged over the MC samples.
    K > 1: the importance-weighted bound, with the warm-up weight on the
    log-ratio of prior and posterior inside each weight.
    kl: `kl_per_layer(trace)` when the caller has it already (K = 1 uses it).
    """
    if iw_samples == 1:
        return elbo(trace, kl_weight, kl).mean(0)
    return iw_bound(log_importance_weights(trace, kl_weight), iw_samples)
