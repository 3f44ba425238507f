"""Linear-Gaussian hierarchies built from the project's own model classes.

With mlp_depth = 0 every map is Linear, and a variance head whose weights are
zero gives a constant variance: the generative model becomes
z_L ~ N(0, I), z_i = A_i z_{i+1} + c_i + noise, x = W z_1 + b + noise,
so x is Gaussian and log p(x) is known in closed form. When W has orthogonal
columns the exact posterior is diagonal, and the models can represent it.
"""

from __future__ import annotations

import torch
from torch.distributions import MultivariateNormal
from torch.nn import functional as F

from lvae.core.models import BottomUpVAE, GaussianHead, LadderVAE

MIN_VARIANCE = 1e-6


def set_head(head: GaussianHead, weight: torch.Tensor, bias: torch.Tensor, variance: torch.Tensor) -> None:
    """mean = weight @ input + bias, variance constant."""
    mean_weight, var_weight = head.linear.weight.split(head.out_features)
    mean_bias, var_bias = head.linear.bias.split(head.out_features)
    with torch.no_grad():
        mean_weight.copy_(weight)
        mean_bias.copy_(bias)
        var_weight.zero_()
        # softplus^-1(v) = v + log(1 - exp(-v))
        target = variance - MIN_VARIANCE
        var_bias.copy_(target + torch.log(-torch.expm1(-target)))
        assert torch.allclose(F.softplus(var_bias) + MIN_VARIANCE, variance, rtol=1e-5)


class LinearGaussian:
    """Parameters of a linear-Gaussian hierarchy, bottom to top, in float64."""

    def __init__(self, data_dim: int, latent_sizes: list[int], seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        d1 = latent_sizes[0]
        q, _ = torch.linalg.qr(torch.randn(data_dim, d1, generator=g, dtype=torch.float64))
        self.W = q * torch.linspace(1.5, 3.0, d1, dtype=torch.float64)  # orthogonal columns
        self.b = torch.randn(data_dim, generator=g, dtype=torch.float64)
        self.noise = torch.full((data_dim,), 0.3, dtype=torch.float64)
        self.A = [torch.randn(latent_sizes[i], latent_sizes[i + 1], generator=g, dtype=torch.float64)
                  for i in range(len(latent_sizes) - 1)]
        self.c = [0.5 * torch.randn(latent_sizes[i], generator=g, dtype=torch.float64)
                  for i in range(len(latent_sizes) - 1)]
        self.s = [0.2 + torch.rand(latent_sizes[i], generator=g, dtype=torch.float64)
                  for i in range(len(latent_sizes) - 1)]
        self.latent_sizes = latent_sizes

    def build(self, model_class) -> BottomUpVAE | LadderVAE:
        """The model with its generative side set to these parameters (inference left for the caller)."""
        model = model_class(self.W.shape[0], self.latent_sizes, [1] * len(self.latent_sizes), depth=0,
                            batch_norm=False, likelihood="gaussian", min_variance=MIN_VARIANCE).double()
        set_head(model.generative.decoder_head, self.W, self.b, self.noise)
        for i, prior in enumerate(model.generative.priors):
            set_head(prior.head, self.A[i], self.c[i], self.s[i])
        return model.eval()

    def layer1_marginal(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and covariance of z_1 under the prior."""
        mean = torch.zeros(self.latent_sizes[-1], dtype=torch.float64)
        cov = torch.eye(self.latent_sizes[-1], dtype=torch.float64)
        for i in reversed(range(len(self.A))):
            mean = self.A[i] @ mean + self.c[i]
            cov = self.A[i] @ cov @ self.A[i].T + torch.diag(self.s[i])
        return mean, cov

    def marginal(self) -> MultivariateNormal:
        """p(x), exactly."""
        mean, cov = self.layer1_marginal()
        return MultivariateNormal(self.W @ mean + self.b, self.W @ cov @ self.W.T + torch.diag(self.noise))

    def likelihood_term(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """p(x|z_1) as a Gaussian in z_1: N(z_1; G (x - b), v), with G = (W^T W)^-1 W^T (diagonal W^T W)."""
        wtw = (self.W * self.W).sum(0)
        gain = self.W.T / wtw[:, None]
        return gain, -gain @ self.b, self.noise[0] / wtw

    def exact_one_layer_posterior(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One layer: p(z|x) = N(M^-1 W^T (x - b), sigma^2 M^-1), M = W^T W + sigma^2 I (diagonal)."""
        assert len(self.latent_sizes) == 1
        m = (self.W * self.W).sum(0) + self.noise[0]
        gain = self.W.T / m[:, None]
        return gain, -gain @ self.b, self.noise[0] / m

    def exact_top_posterior_scalar(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Two layers, scalar z_2: p(z_2|x) = N(g^T (x - m), 1/precision), linear in x."""
        assert len(self.latent_sizes) == 2 and self.latent_sizes[1] == 1
        a = self.W @ self.A[0]  # (D, 1)
        sigma = self.W @ torch.diag(self.s[0]) @ self.W.T + torch.diag(self.noise)
        sigma_inv_a = torch.linalg.solve(sigma, a)
        precision = 1.0 + (a.T @ sigma_inv_a).squeeze()
        gain = (sigma_inv_a / precision).T  # (1, D)
        offset = self.W @ self.c[0] + self.b
        return gain, -gain @ offset, (1.0 / precision).reshape(1)
