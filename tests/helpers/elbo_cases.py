"""The closed-form ELBO cases that the estimator tests draw from (tests/core/test_elbo_closed_form.py,
tests/run/test_compiled.py), and the check that a mean of draws matches an exact value.

STRONGLY_DEPENDENT is the case an analytic KL at the sampled parent gets wrong by
1/s^2 nats for bottom-up inference: q(z_2|z_1) = N(z_1, s^2) nearly copies z_1 and
p(z_1|z_2) = N(z_2, s^2), with s^2 = 0.05 (a bias of 20 nats).
"""

from __future__ import annotations

import torch

from lvae.core.models import BottomUpVAE, LadderVAE

from .gaussian_chain import ChainParameters, exact_elbo

DRAWS = 20_000
Z = 5.0  # tolerance in standard errors of the mean: a false alarm about once in 3.5 million checks
FLOAT_TOLERANCE = 1e-9  # float64 models
MODELS = {"vae": BottomUpVAE, "lvae": LadderVAE}
STRONG_VARIANCE = 0.05


def strongly_dependent(data_dim: int = 4) -> ChainParameters:
    one, zero = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    params = ChainParameters.random(data_dim, [1, 1], seed=3)
    small = torch.full((1,), STRONG_VARIANCE, dtype=torch.float64)
    params.encoders = [(torch.zeros(1, data_dim, dtype=torch.float64), zero, torch.ones(1, dtype=torch.float64)),
                       (one, zero, small)]  # q(z_1) = N(0, 1), q(z_2|z_1) = N(z_1, s^2)
    params.priors = [(one, zero, small)]  # p(z_1|z_2) = N(z_2, s^2)
    return params


CASES = {
    "2 layers": lambda: ChainParameters.random(6, [3, 2], seed=1),
    "3 layers": lambda: ChainParameters.random(6, [3, 2, 2], seed=2),
    "strongly dependent": strongly_dependent,
}


def assert_unbiased(draws: torch.Tensor, exact: torch.Tensor, what: str) -> None:
    """draws: (N, ...) independent draws of an estimator, on any device; exact: its expectation (...)."""
    draws = draws.cpu()
    mean, stderr = draws.mean(0), draws.std(0) / draws.shape[0] ** 0.5
    error = (mean - exact).abs()
    assert (error <= Z * stderr + FLOAT_TOLERANCE).all(), (
        f"{what}: mean of {draws.shape[0]} draws {mean.tolist()} vs closed form {exact.tolist()}: "
        f"off by {(error / stderr).max().item():.1f} standard errors")


def setup(case: str, model_name: str, device: torch.device = torch.device("cpu")):
    """The model on `device`, one image x (on `device`) and the closed-form values (on the CPU)."""
    params = CASES[case]()
    model_class = MODELS[model_name]
    x = params.sample_x(1, seed=7)[0]
    return params.build(model_class).to(device), x.to(device), exact_elbo(params, model_class, x)
