"""The ELBO of a linear-Gaussian hierarchy in closed form, written from the equations alone.

With mlp_depth = 0 and constant variances (`linear_gaussian.set_head`), both inference
models are affine-Gaussian chains: every z_i is an affine function of the layers drawn
before it plus independent Gaussian noise. For one image x, q(z|x) is then a Gaussian
over y = (z_1, ..., z_L) stacked, with a mean and covariance built here in the order in
which the model draws the layers, and every log-density of the ELBO is a quadratic form
in y whose expectation is known:

    E[log N(r; 0, diag(s))] = -1/2 sum_u (log 2 pi s_u + ((R m + r0)_u^2 + (R C R^T)_uu) / s_u)

for a residual r = R y + r0 and y ~ N(m, C). Nothing here calls the project's estimators:
the parameters come from `ChainParameters`, which the tests also write into the models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lvae.core.models import BottomUpVAE, LadderVAE

from .linear_gaussian import MIN_VARIANCE, set_head

Affine = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (weight, bias, constant variance)


def _random_affine(g: torch.Generator, out: int, inp: int, scale: float = 0.7) -> Affine:
    return (scale * torch.randn(out, inp, generator=g, dtype=torch.float64),
            0.5 * torch.randn(out, generator=g, dtype=torch.float64),
            0.2 + torch.rand(out, generator=g, dtype=torch.float64))


@dataclass
class ChainParameters:
    """Every map of a linear-Gaussian hierarchy, bottom (index 0) to top.

    likelihood: p(x|z_1) = N(W z_1 + b, v); priors[i]: p(z_i|z_{i+1}) (i < L-1), p(z_L) = N(0, I);
    encoders[i]: the VAE's q(z_1|x) (i = 0) and q(z_i|z_{i-1}); upward[i]: the LVAE's
    (mu_hat_i(x), sigma2_hat_i), merged top-down with p(z_i|z_{i+1}).
    """

    data_dim: int
    latent_sizes: list[int]
    likelihood: Affine
    priors: list[Affine]
    encoders: list[Affine]
    upward: list[Affine]

    @classmethod
    def random(cls, data_dim: int, latent_sizes: list[int], seed: int = 0) -> "ChainParameters":
        g = torch.Generator().manual_seed(seed)
        sizes = latent_sizes
        return cls(
            data_dim, list(sizes),
            likelihood=_random_affine(g, data_dim, sizes[0]),
            priors=[_random_affine(g, sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1)],
            encoders=[_random_affine(g, sizes[i], ([data_dim] + sizes)[i]) for i in range(len(sizes))],
            upward=[_random_affine(g, sizes[i], data_dim) for i in range(len(sizes))],
        )

    def build(self, model_class) -> BottomUpVAE | LadderVAE:
        """A float64 model of the project's class with exactly these maps."""
        model = model_class(self.data_dim, self.latent_sizes, [1] * len(self.latent_sizes), depth=0,
                            batch_norm=False, likelihood="gaussian", min_variance=MIN_VARIANCE).double()
        set_head(model.generative.decoder_head, *self.likelihood)
        for prior, affine in zip(model.generative.priors, self.priors):
            set_head(prior.head, *affine)
        if model_class is BottomUpVAE:
            for encoder, affine in zip(model.encoders, self.encoders):
                set_head(encoder.head, *affine)
        else:
            for head, affine in zip(model.upward_heads, self.upward):
                set_head(head, *affine)
        return model.eval()

    def sample_x(self, n: int, seed: int = 0) -> torch.Tensor:
        """n images drawn from the generative model (typical data for it): (n, D)."""
        g = torch.Generator().manual_seed(seed)

        def draw(affine: Affine, parent: torch.Tensor) -> torch.Tensor:
            weight, bias, var = affine
            return parent @ weight.T + bias + var.sqrt() * torch.randn(n, len(bias), generator=g, dtype=torch.float64)

        z = torch.randn(n, self.latent_sizes[-1], generator=g, dtype=torch.float64)
        for affine in reversed(self.priors):
            z = draw(affine, z)
        return draw(self.likelihood, z)

    # --- q(z|x) as one Gaussian over y = (z_1, ..., z_L) ---------------------------------

    def _offsets(self) -> list[int]:
        return [sum(self.latent_sizes[:i]) for i in range(len(self.latent_sizes) + 1)]

    def select(self, i: int) -> torch.Tensor:
        """E_i: the (d_i, n) matrix that picks z_i out of y."""
        o = self._offsets()
        e = torch.zeros(self.latent_sizes[i], o[-1], dtype=torch.float64)
        e[:, o[i]:o[i + 1]] = torch.eye(self.latent_sizes[i], dtype=torch.float64)
        return e

    def _conditionals(self, model_class, x: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(i, F_i, f_i, v_i) in drawing order: z_i = F_i y + f_i + N(0, diag(v_i)), F_i using earlier layers only."""
        n_layers, out = len(self.latent_sizes), []
        if model_class is BottomUpVAE:  # z_1 from x, then z_i from z_{i-1}
            for i, (weight, bias, var) in enumerate(self.encoders):
                if i == 0:
                    out.append((0, torch.zeros_like(self.select(0)), weight @ x + bias, var))
                else:
                    out.append((i, weight @ self.select(i - 1), bias, var))
            return out
        for i in reversed(range(n_layers)):  # the LVAE: z_L from x, then z_i from x and z_{i+1}
            weight, bias, var_hat = self.upward[i]
            mean_hat = weight @ x + bias
            if i == n_layers - 1:
                out.append((i, torch.zeros_like(self.select(i)), mean_hat, var_hat))
                continue
            a, c, s = self.priors[i]
            var = 1.0 / (1.0 / var_hat + 1.0 / s)  # precision-weighted merge, written out
            out.append((i, (var / s)[:, None] * (a @ self.select(i + 1)), var * (mean_hat / var_hat + c / s), var))
        return out

    def posterior(self, model_class, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Mean m (n,) and covariance C (n, n) of q(y|x), and the conditionals that built them."""
        n = self._offsets()[-1]
        m, cov = torch.zeros(n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)
        conditionals = self._conditionals(model_class, x)
        for i, f_matrix, f_offset, var in conditionals:
            e = self.select(i)
            cross = f_matrix @ cov  # Cov(z_i, y); zero in the columns of z_i and of layers not drawn yet
            m = m + e.T @ (f_matrix @ m + f_offset)
            cov = cov + e.T @ cross + cross.T @ e + e.T @ (cross @ f_matrix.T + torch.diag(var)) @ e
        return m, cov, conditionals


def expected_log_normal(residual: torch.Tensor, offset: torch.Tensor, var: torch.Tensor,
                        m: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """E[log N(R y + r0; 0, diag(var))] per unit, for y ~ N(m, cov)."""
    mean = residual @ m + offset
    second_moment = mean.square() + torch.diagonal(residual @ cov @ residual.T)
    return -0.5 * (math.log(2 * math.pi) + var.log() + second_moment / var)


@dataclass
class ExactElbo:
    """E_q[log p(x|z_1)], each layer's term E_q[log q(z_i|.) - log p(z_i|z_{i+1})] per unit, and the ELBO."""

    log_likelihood: torch.Tensor  # scalar
    kl_per_unit: list[torch.Tensor]  # (d_i,) per layer, bottom first

    @property
    def kl_per_layer(self) -> torch.Tensor:
        return torch.stack([k.sum() for k in self.kl_per_unit])

    def objective(self, kl_weight: float = 1.0) -> torch.Tensor:
        return self.log_likelihood - kl_weight * self.kl_per_layer.sum()


def exact_elbo(params: ChainParameters, model_class, x: torch.Tensor) -> ExactElbo:
    """The closed-form terms of the ELBO of one image x (D,) under the model `params` describes."""
    m, cov, conditionals = params.posterior(model_class, x)
    weight, bias, noise = params.likelihood
    log_likelihood = expected_log_normal(-weight @ params.select(0), x - bias, noise, m, cov).sum()
    log_q = {i: expected_log_normal(params.select(i) - f_matrix, -f_offset, var, m, cov)
             for i, f_matrix, f_offset, var in conditionals}
    terms = []
    for i in range(len(params.latent_sizes)):
        if i + 1 < len(params.latent_sizes):
            a, c, s = params.priors[i]
            log_p = expected_log_normal(params.select(i) - a @ params.select(i + 1), -c, s, m, cov)
        else:
            log_p = expected_log_normal(params.select(i), torch.zeros(params.latent_sizes[i], dtype=torch.float64),
                                        torch.ones(params.latent_sizes[i], dtype=torch.float64), m, cov)
        terms.append(log_q[i] - log_p)
    return ExactElbo(log_likelihood, terms)
