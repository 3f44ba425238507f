"""Model structure: shapes, the LVAE's merged posterior, shared per-image work, gradients."""

import math

import pytest
import torch

from lvae.core.distributions import precision_weighted_merge
from lvae.core.models import BottomUpVAE, GaussianHead, LadderVAE, ModelSpec, build_model
from lvae.core.objectives import training_bound
from lvae.run.config import compose_config
from lvae.run.settings import model_spec

D, B, S = 20, 8, 3


def small_model(name: str, layers: int, batch_norm: bool = True, **fields):
    """A model of `layers` small layers, the ModelSpec's other fields as given or the paper's."""
    spec = ModelSpec(name=name, latent_sizes=(6, 5, 4, 3, 2)[:layers], hidden_sizes=(16, 12, 10, 8, 6)[:layers],
                     batch_norm=batch_norm, **fields)
    return build_model(spec, D)


@pytest.mark.parametrize("name", ["vae", "lvae"])
@pytest.mark.parametrize("layers", [1, 2, 5])
def test_trace_shapes(name, layers, device):
    torch.manual_seed(0)
    model = small_model(name, layers).to(device)
    x = torch.bernoulli(torch.rand(B, D, device=device))
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
def test_gradients_are_finite_and_reach_every_parameter(name, batch_norm, device):
    torch.manual_seed(0)
    model = small_model(name, 5, batch_norm).to(device)
    x = torch.bernoulli(torch.rand(32, D, device=device))
    (-training_bound(model(x, 4), iw_samples=2, kl_weight=0.3).mean()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_paper_layer_sizes():
    cfg = compose_config("model=lvae", "layers=5")
    model = build_model(model_spec(cfg), 784)
    assert isinstance(model, LadderVAE) and model.latent_sizes == [64, 32, 16, 8, 4]
    assert [m.out_features for m in model.upward] == [512, 256, 128, 64, 32]
    widths = [lin.out_features for lin in model.upward[0].net if isinstance(lin, torch.nn.Linear)]
    assert widths == [512, 512], "two hidden layers per deterministic map"
    cfg = compose_config("model=vae", "layers=2", "batch_norm=false")
    model = build_model(model_spec(cfg), 784)
    assert isinstance(model, BottomUpVAE) and model.latent_sizes == [64, 32]
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())


def test_prior_samples_are_images():
    torch.manual_seed(0)
    model = small_model("lvae", 3).eval()
    samples = model.generative.sample(10)
    assert samples.shape == (10, D) and ((samples >= 0) & (samples <= 1)).all()


@pytest.mark.parametrize("head_batch_norm", [False, True])
@pytest.mark.parametrize("name", ["vae", "lvae"])
def test_folding_batchnorm_keeps_the_function(name, head_batch_norm):
    from lvae.core.evaluate import fold_batchnorm

    torch.manual_seed(0)
    model = small_model(name, 3, True, head_batch_norm=head_batch_norm)
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


# --- Where the authors' code differs from the paper: switches, off by default -------------------

@pytest.mark.parametrize("name", ["vae", "lvae"])
def test_head_batch_norm_normalises_every_mean_and_variance_map(name):
    def heads(model):
        return [m for m in model.modules() if isinstance(m, GaussianHead)]

    plain, normed = small_model(name, 3), small_model(name, 3, True, head_batch_norm=True)
    assert all(isinstance(h.mean_and_var, torch.nn.Linear) for h in heads(plain))
    norms = [h.mean_and_var[1] for h in heads(normed)]
    assert all(isinstance(n, torch.nn.BatchNorm1d) for n in norms)
    assert [n.num_features for n in norms] == [2 * h.out_features for h in heads(normed)], "means and variances"
    assert len(heads(normed)) == 3 + 2, "3 inference heads and 2 prior heads (Bernoulli output: no head)"
    no_bn = small_model(name, 3, False, head_batch_norm=True)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in no_bn.modules()), "only with batch_norm=true"
    trace = normed(torch.bernoulli(torch.rand(B, D)), S)
    assert trace.layers[0].z.shape == (S, B, 6)


def test_vae_prior_widths_can_mirror_the_encoder():
    def prior_widths(model):
        return [prior.body.net[0].out_features for prior in model.generative.priors]

    assert prior_widths(small_model("vae", 4)) == [16, 12, 10], "the map into z_i: hidden_sizes[i]"
    mirrored = small_model("vae", 4, True, vae_mirror_encoder_widths=True)
    assert prior_widths(mirrored) == [12, 10, 8], "the map z_(i+1) -> z_i: hidden_sizes[i+1]"
    assert [e.body.net[0].out_features for e in mirrored.encoders] == [16, 12, 10, 8]
    lvae = small_model("lvae", 4, True, vae_mirror_encoder_widths=True)
    assert prior_widths(lvae) == [16, 12, 10], "the switch is the VAE's only"


def test_glorot_init():
    torch.manual_seed(0)
    model = build_model(ModelSpec("lvae", latent_sizes=(64, 32), hidden_sizes=(512, 256), init="glorot"), 784)
    first = model.upward[0].net[0]  # 784 -> 512, a hidden layer: gain sqrt(2)
    expected_std = math.sqrt(2.0) * math.sqrt(2.0 / (784 + 512))
    assert abs(first.weight.std().item() / expected_std - 1) < 0.02
    for head_weight in model.upward_heads[0].linear.weight.split(64):  # mean and variance maps, each 512 -> 64: gain 1
        assert abs(head_weight.std().item() / math.sqrt(2.0 / (512 + 64)) - 1) < 0.05
    assert all((m.bias == 0).all() for m in model.modules() if isinstance(m, torch.nn.Linear))
