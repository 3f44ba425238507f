"""Every ELBO estimator against its closed form, for both inference orders.

Linear-Gaussian hierarchies (tests/helpers/gaussian_chain.py) with 2 and 3 stochastic
layers, built with the project's own model classes: there the ELBO, E_q[log p(x|z_1)]
and each layer's term E_q[log q(z_i|.) - log p(z_i|z_{i+1})] have closed forms. Each
estimator is drawn many times for one image (the image repeated along the batch), and its
mean must match the closed form within Z standard errors of that mean, the standard error
coming from the draws' own variance.

The cases (tests/helpers/elbo_cases.py) include the strongly dependent one, where an
analytic KL at the sampled parent is 1/s^2 = 20 nats off for bottom-up inference.
"""

from __future__ import annotations

import pytest
import torch

from lvae.core.evaluate import evaluate_model
from lvae.core.objectives import elbo, kl_per_layer, log_importance_weights, training_bound
from lvae.data.images import ImageData
from lvae.run.config import compose_config
from lvae.run.settings import eval_settings

from ..helpers.elbo_cases import CASES, DRAWS, FLOAT_TOLERANCE, MODELS, STRONG_VARIANCE, Z, assert_unbiased, setup


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("case", CASES)
def test_per_sample_estimators_match_the_closed_form(case, model_name, device):
    """The K=1 training objective (with and without warm-up weight), the ELBO and every
    layer's KL term, per layer and per unit; and the log-ratio ELBO of the IW bound."""
    torch.manual_seed(0)
    model, x, exact = setup(case, model_name, device)
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
    from lvae.core.distributions import gaussian_kl

    analytic_at_sample = gaussian_kl(layer.q_mean, layer.q_var, layer.p_mean, layer.p_var)[0, :, 0]
    bias = (analytic_at_sample.mean() - exact.kl_per_unit[0][0]).item()
    assert abs(bias - 1 / STRONG_VARIANCE) < 1.0, bias


def _repeated_image_data(x: torch.Tensor, n: int) -> ImageData:
    images = x.expand(n, -1).contiguous()
    labels = torch.full((n,), -1)
    return ImageData(train=images, train_labels=labels, test=images, test_labels=labels, binarize=False)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("case", ["3 layers", "strongly dependent"])
def test_reported_numbers_match_the_closed_form(case, model_name, device):
    """What a run reports (evaluate_model: test ELBO, KL per layer, train bound, and the
    K-sample estimate at K = 1, which is an ELBO estimate too), each within Z of its
    reported standard error of the closed form."""
    torch.manual_seed(0)
    model, x, exact = setup(case, model_name, device)
    n = 4000
    cfg = compose_config("likelihood=gaussian", "data.binarize=false", "eval.iw_samples=1",
                         f"eval.train_subset={n}", "train.progress=false", "eval.memory_budget_mb=16")
    results = evaluate_model(model, _repeated_image_data(x, n), eval_settings(cfg))

    def check(mean: float, stderr: float, expected: torch.Tensor, what: str) -> None:
        assert abs(mean - expected.item()) <= Z * stderr + FLOAT_TOLERANCE, (what, mean, stderr, expected.item())

    for key in ("test_elbo", "train_bound", "test_log_likelihood"):
        check(results[key]["mean"], results[key]["stderr"], exact.objective(), key)
    for i, (mean, stderr) in enumerate(zip(results["kl_per_layer"], results["kl_per_layer_stderr"])):
        check(mean, stderr, exact.kl_per_layer[i], f"KL of z{i + 1}")
    assert results["test_log_likelihood"]["remaining_gap"] is None, "K = 1 has no halves to compare"
