"""The hierarchical VAE (bottom-up inference) and the Ladder VAE (top-down inference).

Both share one generative model (docs/method.md, eq. 1-3). A forward pass
returns a `Trace`: for every stochastic layer the sample z_i, the parameters of
q(z_i|.) and of p(z_i|z_{i+1}), and log p(x|z_1). Objectives and evaluation are
computed from the trace alone, so both models share them.

Shapes: x is (B, D); every sampled tensor is (S, B, d) with S samples per image.
Per-image work that does not depend on the samples (`encode`: the LVAE upward
pass, the VAE's q(z_1|x)) is done once for the B images and broadcast over S.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from lvae.core.distributions import (bernoulli_log_prob, gaussian_kl, gaussian_log_prob, precision_weighted_merge,
                                     sample_gaussian)

LEAKY_RELU_SLOPE = 0.01  # Lasagne's leaky_rectify, used by the authors' code

Gaussian = tuple[torch.Tensor, torch.Tensor]  # (mean, variance)


@dataclass
class StochasticLayer:
    """One layer z_i of a forward pass: its sample, q(z_i|.) and p(z_i|z_{i+1}).

    The layer's term of the ELBO is E_q[log q(z_i|.) - log p(z_i|z_{i+1})]; the terms of
    all layers add up to KL(q(z|x) || p(z)). How a single sample estimates it without bias
    depends on the order in which inference draws the layers, so each inference model
    builds the kind of layer that matches its factorisation.

    This class: z_{i+1}, the parent of the prior, was drawn *before* z_i (top-down
    inference, and every top layer, whose prior N(0, I) has no parent). Given the samples
    already drawn, the term is then exactly the analytic KL(q(z_i|.) || p(z_i|z_{i+1})).
    """

    z: torch.Tensor
    q_mean: torch.Tensor
    q_var: torch.Tensor
    p_mean: torch.Tensor
    p_var: torch.Tensor

    def log_q(self) -> torch.Tensor:
        return gaussian_log_prob(self.z, self.q_mean, self.q_var).sum(-1)

    def log_p(self) -> torch.Tensor:
        return gaussian_log_prob(self.z, self.p_mean, self.p_var).sum(-1)

    def kl_term_per_unit(self) -> torch.Tensor:
        """Unbiased one-sample estimate of this layer's ELBO term, per unit (docs/method.md, eq. 7)."""
        return gaussian_kl(self.q_mean, self.q_var, self.p_mean, self.p_var)


@dataclass
class BottomUpLayer(StochasticLayer):
    """A layer whose prior's parent z_{i+1} was drawn *after* z_i, from q(z_{i+1}|z_i) (bottom-up inference).

    The analytic KL at the sampled z_{i+1} is biased here: z_{i+1} depends on z_i, so the
    expected cross-entropy is not the cross-entropy at the sample. The unbiased term scores
    both densities at the joint sample, log q(z_i|z_{i-1}) - log p(z_i|z_{i+1}) (docs/method.md, eq. 8).

    Why not the analytic entropy of q(z_i|z_{i-1}) in place of log q: with z_i = mu + sigma * eps
    the two differ by (eps^2 - 1) / 2 per unit, a term free of parameters, so their gradients are
    identical; but that term does not cancel against log p, and for a collapsed unit
    (q = p) it adds variance 1/2 per unit to an estimate that is otherwise close to 0.
    """

    def kl_term_per_unit(self) -> torch.Tensor:
        return gaussian_log_prob(self.z, self.q_mean, self.q_var) - gaussian_log_prob(self.z, self.p_mean, self.p_var)


@dataclass
class Trace:
    layers: list[StochasticLayer]  # bottom (z_1) to top (z_L)
    log_px: torch.Tensor  # log p(x|z_1), (S, B)


def over_samples(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """module(y) for y of shape (..., C): BatchNorm1d wants (N, C), so the sample and batch axes are folded."""
    out = module(y.reshape(-1, y.shape[-1]))
    return out.reshape(*y.shape[:-1], out.shape[-1])


def dense(in_features: int, out_features: int, batch_norm: bool) -> nn.Module:
    """Linear, followed by batch norm when asked."""
    linear = nn.Linear(in_features, out_features)
    return nn.Sequential(linear, nn.BatchNorm1d(out_features)) if batch_norm else linear


class MLP(nn.Module):
    """d(y) = MLP(y): `depth` x (Linear -> [BatchNorm] -> leaky ReLU); identity when depth = 0."""

    def __init__(self, in_features: int, width: int, depth: int, batch_norm: bool):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(in_features if i == 0 else width, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True))  # no extra activation buffer
        self.net = nn.Sequential(*layers)
        self.out_features = width if depth > 0 else in_features

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return over_samples(self.net, y)


class GaussianHead(nn.Module):
    """mu = Linear(d), sigma2 = Softplus(Linear(d)) + min_variance (docs/method.md, eq. 2).

    The two linear maps are one Linear with 2 x out_features outputs, the means' first, split
    after: one matmul instead of two small ones. batch_norm puts batch norm after the maps (the
    authors' code does; the paper describes batch norm in the MLPs only); batch norm works per
    feature, so one over all 2 x out_features outputs is that of two separate maps.
    """

    def __init__(self, in_features: int, out_features: int, min_variance: float, batch_norm: bool = False):
        super().__init__()
        self.out_features = out_features
        self.mean_and_var = dense(in_features, 2 * out_features, batch_norm)
        self.min_variance = min_variance

    @property
    def linear(self) -> nn.Linear:
        """The Linear of both maps: output rows [:out_features] are the mean's, the others the variance's."""
        return self.mean_and_var[0] if isinstance(self.mean_and_var, nn.Sequential) else self.mean_and_var

    def forward(self, d: torch.Tensor) -> Gaussian:
        mean, var_input = over_samples(self.mean_and_var, d).split(self.out_features, dim=-1)
        return mean, F.softplus(var_input) + self.min_variance


# A state-dict key of a Gaussian head's separate mean or variance map (numerics version 1).
SEPARATE_HEAD_KEY = re.compile(r"(?P<head>|.*\.)(?P<map>mean|var)\.(?P<rest>.+)")


def has_separate_head_maps(weights: dict) -> bool:
    """Whether a state dict comes from a model whose Gaussian heads had separate mean and variance maps."""
    return any(SEPARATE_HEAD_KEY.fullmatch(key) for key in weights)


def merge_separate_head_maps(weights: dict) -> dict:
    """A state dict with separate mean and variance maps per Gaussian head (numerics version 1) in
    this code's layout: each pair of weights, biases and batch-norm statistics concatenated, the
    mean's first, and a batch-norm step count (the same in both) kept once. Other keys are kept."""
    merged = {}
    for key, value in weights.items():
        match = SEPARATE_HEAD_KEY.fullmatch(key)
        if match is None:
            merged[key] = value
        elif match["map"] == "mean":
            var = weights[f"{match['head']}var.{match['rest']}"]
            merged[f"{match['head']}mean_and_var.{match['rest']}"] = value if value.dim() == 0 else torch.cat([value, var])
    return merged


class GaussianMap(nn.Module):
    """y -> (mu(y), sigma2(y)) through d(y) = MLP(y)."""

    def __init__(self, in_features: int, out_features: int, width: int, depth: int,
                 batch_norm: bool, min_variance: float, head_batch_norm: bool = False):
        super().__init__()
        self.body = MLP(in_features, width, depth, batch_norm)
        self.head = GaussianHead(self.body.out_features, out_features, min_variance, head_batch_norm)

    def forward(self, y: torch.Tensor) -> Gaussian:
        return self.head(self.body(y))


class TopDownGenerative(nn.Module):
    """p(z_L) = N(0, I), p(z_i|z_{i+1}) = N(mu_p,i, sigma2_p,i), p(x|z_1) (docs/method.md, eq. 1-3).

    The map z_{i+1} -> z_i has hidden width prior_widths[i]; p(x|z_1) has decoder_width.
    The output layer never has batch norm.
    """

    def __init__(self, data_dim: int, latent_sizes: list[int], prior_widths: list[int], decoder_width: int,
                 depth: int, batch_norm: bool, likelihood: str, min_variance: float, head_batch_norm: bool = False):
        super().__init__()
        self.latent_sizes = latent_sizes
        self.priors = nn.ModuleList(
            GaussianMap(latent_sizes[i + 1], latent_sizes[i], prior_widths[i], depth, batch_norm, min_variance,
                        head_batch_norm)
            for i in range(len(latent_sizes) - 1)
        )
        self.decoder_body = MLP(latent_sizes[0], decoder_width, depth, batch_norm)
        self.likelihood = likelihood
        if likelihood == "bernoulli":
            self.decoder_head: nn.Module = nn.Linear(self.decoder_body.out_features, data_dim)
        else:
            self.decoder_head = GaussianHead(self.decoder_body.out_features, data_dim, min_variance)

    def prior(self, i: int, z_above: Optional[torch.Tensor], like: torch.Tensor) -> Gaussian:
        """Parameters of p(z_i | z_{i+1}) (0-based i); the top layer's prior is N(0, I)."""
        if i == len(self.latent_sizes) - 1:
            shape = (*like.shape[:-1], self.latent_sizes[i])
            return like.new_zeros(()).expand(shape), like.new_ones(()).expand(shape)  # broadcasts, not copies
        return self.priors[i](z_above)

    def log_likelihood(self, x: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """log p(x | z_1), summed over pixels: (S, B)."""
        output = self.decoder_head(self.decoder_body(z1))
        if self.likelihood == "bernoulli":
            return bernoulli_log_prob(x, output).sum(-1)
        mean, var = output
        return gaussian_log_prob(x, mean, var).sum(-1)

    def mean_image(self, z1: torch.Tensor) -> torch.Tensor:
        """E[x | z_1]: pixel probabilities (Bernoulli) or means (Gaussian)."""
        output = self.decoder_head(self.decoder_body(z1))
        return torch.sigmoid(output) if self.likelihood == "bernoulli" else output[0]

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Ancestral samples from the prior, returned as E[x | z_1]: (n, D)."""
        z = torch.randn(n, self.latent_sizes[-1], device=next(self.parameters()).device)
        for i in reversed(range(len(self.latent_sizes) - 1)):
            z = sample_gaussian(*self.priors[i](z))
        return self.mean_image(z)


class HierarchicalVAE(nn.Module):
    """What both models share: the generative model and the layout of a trace.

    hidden_sizes[i] is the width of the maps into z_i, of inference and of the prior
    (as the paper describes one generative model for both); prior_widths overrides the
    prior's (the authors' code gives its VAE's prior the widths that mirror its encoder).
    head_batch_norm adds batch norm to every mean and variance map (the authors' code).
    """

    def __init__(self, data_dim: int, latent_sizes: list[int], hidden_sizes: list[int],
                 depth: int, batch_norm: bool, likelihood: str, min_variance: float,
                 head_batch_norm: bool = False, prior_widths: Optional[list[int]] = None):
        super().__init__()
        self.data_dim = data_dim
        self.latent_sizes = list(latent_sizes)
        self.hidden_sizes = list(hidden_sizes)
        self.head_batch_norm = batch_norm and head_batch_norm
        self.generative = TopDownGenerative(
            data_dim, self.latent_sizes, list(prior_widths or self.hidden_sizes[:-1]), self.hidden_sizes[0],
            depth, batch_norm, likelihood, min_variance, self.head_batch_norm,
        )

    @property
    def num_layers(self) -> int:
        return len(self.latent_sizes)

    def encode(self, x: torch.Tensor):
        """Per-image work shared by all samples of x."""
        raise NotImplementedError

    def sample_posterior(self, context, n_samples: int, noise: Optional[torch.Tensor] = None) -> list[StochasticLayer]:
        raise NotImplementedError

    @property
    def noise_size(self) -> int:
        """Standard-normal numbers one posterior sample takes: one per latent unit (the last axis of `noise`)."""
        return sum(self.latent_sizes)

    def layer_noise(self, noise: Optional[torch.Tensor]) -> list[Optional[torch.Tensor]]:
        """`noise` (S, B, noise_size) cut into each layer's eps, z_1's units first; None: each layer draws its own."""
        return [None] * self.num_layers if noise is None else list(noise.split(self.latent_sizes, dim=-1))

    def forward(self, x: torch.Tensor, n_samples: int = 1, context=None, noise: Optional[torch.Tensor] = None) -> Trace:
        """Draw n_samples from q(z|x) for each image of x and score them under p.

        noise: the eps of every sample, (n_samples, B, noise_size); None draws it from the global RNG (training).
        """
        if context is None:
            context = self.encode(x)
        layers = self.sample_posterior(context, n_samples, noise)
        return Trace(layers, self.generative.log_likelihood(x, layers[0].z))

    def per_sample_modules(self) -> list[nn.Module]:
        """The networks that run once per sample (not once per image)."""
        return [self.generative]

    def floats_per_sample(self) -> int:
        """Activation floats one (image, sample) pair holds at a time, from the layer shapes.

        Each dense layer keeps its pre-activation, its batch-norm output and its
        activation; each latent layer about ten vectors (means, variances, sample,
        merge and log-density temporaries); the output a few vectors of size D.
        """
        dense = sum(m.out_features for module in self.per_sample_modules()
                    for m in module.modules() if isinstance(m, nn.Linear))
        return 3 * dense + 10 * sum(self.latent_sizes) + 4 * self.data_dim


class BottomUpVAE(HierarchicalVAE):
    """q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1}) (slides, "VAE inference part")."""

    def __init__(self, data_dim: int, latent_sizes: list[int], hidden_sizes: list[int],
                 depth: int, batch_norm: bool, likelihood: str, min_variance: float, **options):
        super().__init__(data_dim, latent_sizes, hidden_sizes, depth, batch_norm, likelihood, min_variance, **options)
        inputs = [data_dim] + self.latent_sizes[:-1]
        self.encoders = nn.ModuleList(
            GaussianMap(inputs[i], self.latent_sizes[i], self.hidden_sizes[i], depth, batch_norm, min_variance,
                        self.head_batch_norm)
            for i in range(self.num_layers)
        )

    def encode(self, x: torch.Tensor) -> Gaussian:
        return self.encoders[0](x)  # q(z_1 | x) depends on x alone

    def sample_posterior(self, context: Gaussian, n_samples: int,
                         noise: Optional[torch.Tensor] = None) -> list[StochasticLayer]:
        mean, var = (t.expand(n_samples, *t.shape) for t in context)
        eps = self.layer_noise(noise)
        posteriors, samples = [], []
        for i in range(self.num_layers):
            if i > 0:
                mean, var = self.encoders[i](samples[-1])
            posteriors.append((mean, var))
            samples.append(sample_gaussian(mean, var, eps[i]))
        layers = []
        for i in range(self.num_layers):
            top = i + 1 == self.num_layers
            z_above = None if top else samples[i + 1]
            p_mean, p_var = self.generative.prior(i, z_above, like=samples[i])
            # Only the top layer's prior, N(0, I), is free of samples drawn after z_i.
            layer_kind = StochasticLayer if top else BottomUpLayer
            layers.append(layer_kind(samples[i], *posteriors[i], p_mean, p_var))
        return layers

    def per_sample_modules(self) -> list[nn.Module]:
        return [self.generative, *self.encoders[1:]]


class LadderVAE(HierarchicalVAE):
    """Deterministic upward pass, then precision-weighted top-down inference (docs/method.md, eq. 5)."""

    def __init__(self, data_dim: int, latent_sizes: list[int], hidden_sizes: list[int],
                 depth: int, batch_norm: bool, likelihood: str, min_variance: float, **options):
        super().__init__(data_dim, latent_sizes, hidden_sizes, depth, batch_norm, likelihood, min_variance, **options)
        self.upward = nn.ModuleList()
        self.upward_heads = nn.ModuleList()
        width = data_dim
        for i in range(self.num_layers):
            mlp = MLP(width, self.hidden_sizes[i], depth, batch_norm)
            self.upward.append(mlp)
            self.upward_heads.append(GaussianHead(mlp.out_features, self.latent_sizes[i], min_variance,
                                                  self.head_batch_norm))
            width = mlp.out_features

    def encode(self, x: torch.Tensor) -> list[Gaussian]:
        """Upward pass d_n = MLP(d_{n-1}), (mu_hat_q,n, sigma2_hat_q,n) = heads(d_n), d_0 = x."""
        d, likelihood_terms = x, []
        for mlp, head in zip(self.upward, self.upward_heads):
            d = mlp(d)
            likelihood_terms.append(head(d))
        return likelihood_terms

    def sample_posterior(self, context: list[Gaussian], n_samples: int,
                         noise: Optional[torch.Tensor] = None) -> list[StochasticLayer]:
        layers: list[Optional[StochasticLayer]] = [None] * self.num_layers
        eps = self.layer_noise(noise)
        z_above = None
        for i in reversed(range(self.num_layers)):
            mean_hat, var_hat = context[i]
            like = mean_hat.expand(n_samples, *mean_hat.shape)
            p_mean, p_var = self.generative.prior(i, z_above, like=like)
            if i == self.num_layers - 1:
                q_mean, q_var = mean_hat.expand_as(like), var_hat.expand_as(like)
            else:
                q_mean, q_var = precision_weighted_merge(mean_hat, var_hat, p_mean, p_var)
            z_above = sample_gaussian(q_mean, q_var, eps[i])
            layers[i] = StochasticLayer(z_above, q_mean, q_var, p_mean, p_var)
        return layers  # type: ignore[return-value]


MODELS = {"vae": BottomUpVAE, "lvae": LadderVAE}


def glorot_init(model: nn.Module) -> None:
    """Glorot-normal weights and zero biases, as the authors' Lasagne code: gain sqrt(2) in the
    MLPs' hidden layers (Lasagne's 'relu' gain), 1 in the mean, variance and output maps. A Gaussian
    head's mean and variance maps are initialised apart, each with its own fan-out, as separate maps."""
    hidden = {id(m) for mlp in model.modules() if isinstance(mlp, MLP) for m in mlp.modules()}
    heads = {id(head.linear): head.out_features for head in model.modules() if isinstance(head, GaussianHead)}
    for module in model.modules():
        if isinstance(module, nn.Linear):
            gain = nn.init.calculate_gain("relu") if id(module) in hidden else 1.0
            for weight in module.weight.split(heads.get(id(module), module.out_features)):
                nn.init.xavier_normal_(weight, gain=gain)
            nn.init.zeros_(module.bias)


@dataclass(frozen=True)
class ModelSpec:
    """What a model is, besides the data's dimension: everything `build_model` needs. The defaults are the
    paper's 5-layer MNIST model (docs/method.md, section 4), and the run config's schema takes its defaults
    from them (lvae/run/config.py); a run's config says the rest (lvae.run.settings.model_spec)."""

    name: str = "lvae"  # "vae" (BottomUpVAE) or "lvae" (LadderVAE): a key of MODELS
    latent_sizes: tuple[int, ...] = (64, 32, 16, 8, 4)  # z_1 (bottom) .. z_L: L stochastic layers
    hidden_sizes: tuple[int, ...] = (512, 256, 128, 64, 32)  # the deterministic width of each layer, bottom first
    mlp_depth: int = 2  # hidden layers of each map d(y) = MLP(y)
    batch_norm: bool = True  # on the MLPs' dense layers
    likelihood: str = "bernoulli"  # "bernoulli" or "gaussian" p(x|z_1)
    min_variance: float = 1e-6  # added to every softplus variance, so that none reaches zero
    # Where the authors' released code differs from the paper (docs/estimators.md, "Where we differ"); off = the paper.
    head_batch_norm: bool = False  # batch norm also on the mean and variance maps (the authors' code)
    vae_mirror_encoder_widths: bool = False  # the VAE's z_{i+1} -> z_i as wide as its z_i -> z_{i+1} (authors' code)
    init: str = "pytorch"  # "pytorch" (torch.nn's defaults) or "glorot" (`glorot_init`)


def build_model(spec: ModelSpec, data_dim: int) -> HierarchicalVAE:
    """The model `spec` describes, for data of data_dim dimensions."""
    hidden_sizes = list(spec.hidden_sizes)
    mirror = spec.name == "vae" and spec.vae_mirror_encoder_widths
    model = MODELS[spec.name](
        data_dim=data_dim,
        latent_sizes=list(spec.latent_sizes),
        hidden_sizes=hidden_sizes,
        depth=spec.mlp_depth,
        batch_norm=spec.batch_norm,
        likelihood=spec.likelihood,
        min_variance=spec.min_variance,
        head_batch_norm=spec.head_batch_norm,
        prior_widths=hidden_sizes[1:] if mirror else None,  # z_{i+1} -> z_i as wide as z_i -> z_{i+1}
    )
    if spec.init == "glorot":
        glorot_init(model)
    return model
