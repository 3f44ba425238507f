"""Model structure: shapes, the LVAE's merged posterior, shared per-image work, gradients."""

import pytest
import torch

from lvae.distributions import precision_weighted_merge
from lvae.models import BottomUpVAE, LadderVAE, build_model
from lvae.objectives import training_bound

from .conftest import compose_config

D, B, S = 20, 8, 3


def small_model(name: str, layers: int, batch_norm: bool = True):
    cfg = compose_config(f"model={name}", f"layers={layers}", f"batch_norm={batch_norm}",
                         "model.hidden_sizes=[16,12,10,8,6]", "model.latent_sizes=[6,5,4,3,2]")
    return build_model(cfg, D)


@pytest.mark.parametrize("name", ["vae", "lvae"])
@pytest.mark.parametrize("layers", [1, 2, 5])
def test_trace_shapes(name, layers):
    torch.manual_seed(0)
    model = small_model(name, layers)
    x = torch.bernoulli(torch.rand(B, D))
    trace = model(x, n_samples=S)
    assert [layer.z.shape for layer in trace.layers] == [(S, B, d) for d in [6, 5, 4, 3, 2][:layers]]
    for layer in trace.layers:
        for t in (layer.q_mean, layer.q_var, layer.p_mean, layer.p_var):
            assert t.shape == layer.z.shape
        assert (layer.q_var > 0).all() and (layer.p_var > 0).all()
    assert trace.log_px.shape == (S, B)
    top = trace.layers[-1]
    assert (top.p_mean == 0).all() and (top.p_var == 1).all(), "p(z_L) = N(0, I)"


def test_lvae_posterior_is_the_merge_of_upward_term_and_prior():
    """The known trap: the KL must use the merged posterior, not the upward Gaussian."""
    torch.manual_seed(0)
    model = small_model("lvae", 3).eval()
    x = torch.bernoulli(torch.rand(B, D))
    context = model.encode(x)
    trace = model(x, S, context=context)
    for i, layer in enumerate(trace.layers[:-1]):
        p_mean, p_var = model.generative.priors[i](trace.layers[i + 1].z)
        torch.testing.assert_close(layer.p_mean, p_mean)
        mean, var = precision_weighted_merge(*context[i], p_mean, p_var)
        torch.testing.assert_close(layer.q_mean, mean)
        torch.testing.assert_close(layer.q_var, var)
        assert not torch.allclose(layer.q_var, context[i][1].expand_as(layer.q_var))
    torch.testing.assert_close(trace.layers[-1].q_mean, context[-1][0].expand(S, B, -1))


def test_vae_posterior_is_bottom_up():
    torch.manual_seed(0)
    model = small_model("vae", 3).eval()
    x = torch.bernoulli(torch.rand(B, D))
    trace = model(x, S)
    for i in range(1, 3):
        mean, var = model.encoders[i](trace.layers[i - 1].z)
        torch.testing.assert_close(trace.layers[i].q_mean, mean)
        torch.testing.assert_close(trace.layers[i].q_var, var)


@pytest.mark.parametrize("name", ["vae", "lvae"])
def test_reusing_the_per_image_context_changes_nothing(name):
    model = small_model(name, 4).eval()
    x = torch.bernoulli(torch.rand(B, D))
    torch.manual_seed(5)
    direct = model(x, S)
    context = model.encode(x)
    torch.manual_seed(5)
    reused = model(x, S, context=context)
    torch.testing.assert_close(direct.log_px, reused.log_px)


@pytest.mark.parametrize("name", ["vae", "lvae"])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_gradients_are_finite_and_reach_every_parameter(name, batch_norm):
    torch.manual_seed(0)
    model = small_model(name, 5, batch_norm)
    x = torch.bernoulli(torch.rand(32, D))
    (-training_bound(model(x, 4), iw_samples=2, kl_weight=0.3).mean()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_paper_layer_sizes():
    cfg = compose_config("model=lvae", "layers=5")
    model = build_model(cfg, 784)
    assert isinstance(model, LadderVAE) and model.latent_sizes == [64, 32, 16, 8, 4]
    assert [m.out_features for m in model.upward] == [512, 256, 128, 64, 32]
    widths = [lin.out_features for lin in model.upward[0].net if isinstance(lin, torch.nn.Linear)]
    assert widths == [512, 512], "two hidden layers per deterministic map"
    cfg = compose_config("model=vae", "layers=2", "batch_norm=false")
    model = build_model(cfg, 784)
    assert isinstance(model, BottomUpVAE) and model.latent_sizes == [64, 32]
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())


def test_prior_samples_are_images():
    torch.manual_seed(0)
    model = small_model("lvae", 3).eval()
    samples = model.generative.sample(10)
    assert samples.shape == (10, D) and ((samples >= 0) & (samples <= 1)).all()


@pytest.mark.parametrize("name", ["vae", "lvae"])
def test_folding_batchnorm_keeps_the_function(name):
    from lvae.evaluate import fold_batchnorm

    torch.manual_seed(0)
    model = small_model(name, 3)
    for x in (torch.bernoulli(torch.rand(64, D)) for _ in range(3)):  # non-trivial running statistics
        model(x)
    model.eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules()), "the original is left alone"
    x = torch.bernoulli(torch.rand(B, D))
    torch.manual_seed(3)
    expected = model(x, S)
    torch.manual_seed(3)
    actual = folded(x, S)
    torch.testing.assert_close(actual.log_px, expected.log_px, rtol=1e-4, atol=1e-4)
