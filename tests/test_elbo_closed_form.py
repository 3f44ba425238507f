"""Every ELBO estimator against its closed form, for both inference orders.

Linear-Gaussian hierarchies (tests/helpers/gaussian_chain.py) with 2 and 3 stochastic
layers, built with the project's own model classes: there the ELBO, E_q[log p(x|z_1)]
and each layer's term E_q[log q(z_i|.) - log p(z_i|z_{i+1})] have closed forms. Each
estimator is drawn many times for one image (the image repeated along the batch), and its
mean must match the closed form within Z standard errors of that mean, the standard error
coming from the draws' own variance.

STRONGLY_DEPENDENT is the case an analytic KL at the sampled parent gets wrong by
1/s^2 nats for bottom-up inference: q(z_2|z_1) = N(z_1, s^2) nearly copies z_1 and
p(z_1|z_2) = N(z_2, s^2), with s^2 = 0.05 (a bias of 20 nats).
"""

from __future__ import annotations

import pytest
import torch

from lvae.config import compose_config
from lvae.data import ImageData
from lvae.evaluate import evaluate_model
from lvae.models import BottomUpVAE, LadderVAE
from lvae.objectives import elbo, kl_per_layer, log_importance_weights, training_bound

from .helpers.gaussian_chain import ChainParameters, exact_elbo

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
    """draws: (N, ...) independent draws of an estimator; exact: its expectation (...)."""
    mean, stderr = draws.mean(0), draws.std(0) / draws.shape[0] ** 0.5
    error = (mean - exact).abs()
    assert (error <= Z * stderr + FLOAT_TOLERANCE).all(), (
        f"{what}: mean of {draws.shape[0]} draws {mean.tolist()} vs closed form {exact.tolist()}: "
        f"off by {(error / stderr).max().item():.1f} standard errors")


def setup(case: str, model_name: str):
    params = CASES[case]()
    model_class = MODELS[model_name]
    x = params.sample_x(1, seed=7)[0]
    return params.build(model_class), x, exact_elbo(params, model_class, x)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("case", CASES)
def test_per_sample_estimators_match_the_closed_form(case, model_name):
    """The K=1 training objective (with and without warm-up weight), the ELBO and every
    layer's KL term, per layer and per unit; and the log-ratio ELBO of the IW bound."""
    torch.manual_seed(0)
    model, x, exact = setup(case, model_name)
    with torch.no_grad():
        trace = model(x.expand(DRAWS, -1), 1)  # DRAWS independent single-sample draws
    for kl_weight in (1.0, 0.3):
        assert_unbiased(training_bound(trace, 1, kl_weight), exact.objective(kl_weight),
                        f"training objective, KL weight {kl_weight}")
    assert_unbiased(elbo(trace)[0], exact.objective(), "ELBO")
    assert_unbiased(kl_per_layer(trace)[:, 0].T, exact.kl_per_layer, "KL term per layer")
    for i, layer in enumerate(trace.layers):
        assert_unbiased(layer.kl_term_per_unit()[0], exact.kl_per_unit[i], f"KL term per unit, z{i + 1}")
    assert_unbiased(log_importance_weights(trace)[0], exact.objective(), "log p(x,z) - log q(z|x)")
    assert_unbiased(trace.log_px[0], exact.log_likelihood, "log p(x|z_1)")


def test_the_strongly_dependent_case_is_one_an_analytic_kl_gets_wrong():
    """Guards the guard: at the sampled parent, the analytic KL of z_1 is 1/s^2 nats off."""
    torch.manual_seed(0)
    model, x, exact = setup("strongly dependent", "vae")
    with torch.no_grad():
        layer = model(x.expand(DRAWS, -1), 1).layers[0]
    from lvae.distributions import gaussian_kl

    analytic_at_sample = gaussian_kl(layer.q_mean, layer.q_var, layer.p_mean, layer.p_var)[0, :, 0]
    bias = (analytic_at_sample.mean() - exact.kl_per_unit[0][0]).item()
    assert abs(bias - 1 / STRONG_VARIANCE) < 1.0, bias


def _repeated_image_data(x: torch.Tensor, n: int) -> ImageData:
    images = x.expand(n, -1).contiguous()
    labels = torch.full((n,), -1)
    return ImageData(train=images, train_labels=labels, test=images, test_labels=labels, binarize=False)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("case", ["3 layers", "strongly dependent"])
def test_reported_numbers_match_the_closed_form(case, model_name):
    """What a run reports (evaluate_model: test ELBO, KL per layer, train bound, and the
    K-sample estimate at K = 1, which is an ELBO estimate too), each within Z of its
    reported standard error of the closed form."""
    torch.manual_seed(0)
    model, x, exact = setup(case, model_name)
    n = 4000
    cfg = compose_config("likelihood=gaussian", "data.binarize=false", "eval.iw_samples=1",
                         f"eval.train_subset={n}", "train.progress=false", "eval.memory_budget_mb=16")
    results = evaluate_model(model, _repeated_image_data(x, n), cfg)

    def check(mean: float, stderr: float, expected: torch.Tensor, what: str) -> None:
        assert abs(mean - expected.item()) <= Z * stderr + FLOAT_TOLERANCE, (what, mean, stderr, expected.item())

    for key in ("test_elbo", "train_bound", "test_log_likelihood"):
        check(results[key]["mean"], results[key]["stderr"], exact.objective(), key)
    for i, (mean, stderr) in enumerate(zip(results["kl_per_layer"], results["kl_per_layer_stderr"])):
        check(mean, stderr, exact.kl_per_layer[i], f"KL of z{i + 1}")
    assert results["test_log_likelihood"]["remaining_gap"] is None, "K = 1 has no halves to compare"
