"""The cheaper paths of a training step keep the model's function and distributions (issue 20):
one matmul per Gaussian head, each KL term computed once, no materialised broadcasts; and the
binarization of training batches has the pixels' probabilities, is torch.bernoulli's draw and is fixed by
the RNG state; a checkpoint of another numerics version is not resumed."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lvae.core.models import (BottomUpLayer, GaussianHead, StochasticLayer, build_model, has_separate_head_maps,
                              merge_separate_head_maps)
from lvae.data.images import ImageData
from lvae.run.config import compose_config
from lvae.run.loop import training_forward
from lvae.run.provenance import NUMERICS_VERSION
from lvae.run.settings import model_spec
from lvae.run.stored import trained_model

D, B, S = 20, 8, 3


def small_model(name: str, *overrides: str):
    cfg = compose_config(f"model={name}", "layers=3", "batch_norm=true", "model.hidden_sizes=[16,12,10]",
                         "model.latent_sizes=[6,5,4]", *overrides)
    return cfg, build_model(model_spec(cfg), D)


def separate_head_maps(weights: dict) -> dict:
    """The layout of numerics version 1: a Gaussian head's mean and variance maps as separate modules."""
    old = {}
    for key, value in weights.items():
        if ".mean_and_var." not in f".{key}":
            old[key] = value
            continue
        head, rest = key.rsplit("mean_and_var.", 1)
        mean, var = (value, value) if value.dim() == 0 else value.chunk(2)
        old[f"{head}mean.{rest}"], old[f"{head}var.{rest}"] = mean.clone(), var.clone()
    return old


@pytest.mark.parametrize("name, likelihood", [("vae", "bernoulli"), ("lvae", "bernoulli"), ("lvae", "gaussian")])
def test_every_gaussian_head_is_one_matmul(name, likelihood):
    _, model = small_model(name, f"likelihood={likelihood}", "model.head_batch_norm=true")
    heads = [m for m in model.modules() if isinstance(m, GaussianHead)]
    assert len(heads) == 3 + 2 + (likelihood == "gaussian"), "inference, prior and (Gaussian) output heads"
    for head in heads:
        assert sum(isinstance(m, nn.Linear) for m in head.modules()) == 1
    head = GaussianHead(7, 3, min_variance=1e-3)
    d = torch.randn(S, B, 7)
    mean, var = head(d)
    weight, bias = head.linear.weight, head.linear.bias
    torch.testing.assert_close(mean, d @ weight[:3].T + bias[:3])
    torch.testing.assert_close(var, F.softplus(d @ weight[3:].T + bias[3:]) + 1e-3)


@pytest.mark.parametrize("name", ["vae", "lvae"])
def test_weights_of_separate_head_maps_load_merged(name):
    """A stored run of the older layout (separate mean and variance maps) loads with the same function."""
    cfg, model = small_model(name, "model.head_batch_norm=true", "likelihood=gaussian", "model.min_variance=1e-3")
    for _ in range(2):  # batch-norm statistics that are not the initial ones
        model(torch.rand(32, D))
    weights = model.state_dict()
    old = separate_head_maps(weights)
    assert has_separate_head_maps(old) and not has_separate_head_maps(weights)
    merged = merge_separate_head_maps(old)
    assert list(merged) == list(weights)
    for key in weights:
        assert torch.equal(merged[key], weights[key]), key
    loaded = trained_model(cfg, old, D, torch.device("cpu"))
    x = torch.rand(B, D)
    torch.manual_seed(1)
    expected = model.eval()(x, S).log_px
    torch.manual_seed(1)
    torch.testing.assert_close(loaded(x, S).log_px, expected)


def test_glorot_initialises_the_mean_and_variance_maps_apart():
    """Each map has the spread of a separate 512 -> 64 map, not of one 512 -> 128 map."""
    torch.manual_seed(0)
    _, model = small_model("lvae", "model.init=glorot", "model.hidden_sizes=[512,512,512]",
                           "model.latent_sizes=[64,32,16]")
    for weight in model.upward_heads[0].linear.weight.split(64):
        assert abs(weight.std().item() / math.sqrt(2.0 / (512 + 64)) - 1) < 0.05


@pytest.mark.parametrize("iw_samples, mc_samples", [(1, 1), (1, 3), (3, 1)])
def test_a_training_forward_computes_each_kl_term_once(monkeypatch, iw_samples, mc_samples):
    calls = []

    def counted(method):
        def kl_term_per_unit(layer):
            calls.append(type(layer))
            return method(layer)
        return kl_term_per_unit

    for kind in (StochasticLayer, BottomUpLayer):
        monkeypatch.setattr(kind, "kl_term_per_unit", counted(kind.kl_term_per_unit))
    for name in ("vae", "lvae"):
        _, model = small_model(name)
        calls.clear()
        training_forward(model, iw_samples, mc_samples)(torch.bernoulli(torch.rand(B, D)), torch.tensor(0.5))
        assert len(calls) == model.num_layers, name


def test_the_top_prior_is_a_broadcast_not_a_copy():
    _, model = small_model("lvae")
    top = model(torch.rand(B, D), S).layers[-1]
    assert top.p_mean.stride() == top.p_var.stride() == (0, 0, 0)
    assert (top.p_mean == 0).all() and (top.p_var == 1).all()


def binarizing(p: torch.Tensor) -> ImageData:
    return ImageData(train=p, train_labels=torch.zeros(len(p)), test=p, test_labels=torch.zeros(len(p)), binarize=True)


def test_binarization_has_the_pixel_probabilities():
    """For each p the fraction of ones over many draws is within 5 standard errors of p; 0 and 1 are exact."""
    p = torch.tensor([0.0, 1 / 255, 0.1, 0.5, 0.77, 254 / 255, 1.0])
    draws = 200_000
    x = binarizing(p[None]).draw(p.expand(draws, -1), torch.Generator().manual_seed(0))
    assert x.dtype == p.dtype and set(x.unique().tolist()) <= {0.0, 1.0}
    frequency = x.double().mean(0)
    stderr = (p.double() * (1 - p.double()) / draws).sqrt()
    assert frequency[0] == 0 and frequency[-1] == 1
    assert ((frequency - p.double()).abs() <= 5 * stderr + 1e-12).all(), (frequency, p)


def test_binarization_is_fixed_by_the_rng_state():
    """A resumed run restores the global RNG state (lvae/run/checkpoint.py), so it draws the same pixels."""
    data = binarizing(torch.rand(64, D))
    order = torch.arange(64)
    state = torch.get_rng_state()
    first = data.train_batch(order, 0, 32)
    torch.set_rng_state(state)
    assert torch.equal(data.train_batch(order, 0, 32), first)
    assert not torch.equal(data.train_batch(order, 0, 32), first), "a fresh draw after that"


@pytest.mark.parametrize("pixels", [1, 17, 256 * 784])
def test_the_binarization_is_torch_bernoullis_draw_on_the_cpu(pixels):
    """1{u < p} is torch.bernoulli's draw bit for bit, leaving the generator in the same state: the cheaper
    draw changed no number (the test sets and training batches of every stored run are those it draws)."""
    p = torch.randint(0, 256, (pixels,), generator=torch.Generator().manual_seed(5)) / 255
    ours, theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(binarizing(p[None]).draw(p, ours), torch.bernoulli(p, generator=theirs))
    assert torch.equal(ours.get_state(), theirs.get_state())


def tiny_run(data_root, run_dir) -> tuple[str, ...]:
    """The overrides of a tiny run, less train.epochs, after running it for 1 epoch in run_dir."""
    from lvae.run.train import run

    tiny = ("model=lvae", "layers=2", "model.hidden_sizes=[32,16]", "model.latent_sizes=[4,2]",
            "train.batch_size=16", "eval.iw_samples=4", "eval.train_subset=16", "eval.analyze=false",
            "device=cpu", "train.progress=false", f"data.root={data_root}")
    run(compose_config(*tiny, "train.epochs=1"), run_dir)
    return tiny


def test_a_checkpoint_of_another_numerics_version_is_not_resumed(synthetic_mnist, tmp_path):
    """A checkpoint that records another numerics version than the installed one is left untouched."""
    import lvae.run.checkpoint
    from lvae.run.checkpoint import CheckpointError, load_checkpoint
    from lvae.run.train import run

    tiny = tiny_run(synthetic_mnist, tmp_path)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["numerics_version"] == NUMERICS_VERSION
    checkpoint["numerics_version"] = NUMERICS_VERSION + 1
    lvae.run.checkpoint.save_checkpoint(tmp_path / "checkpoint.pt", **checkpoint)
    written = (tmp_path / "checkpoint.pt").read_bytes()
    refusal = f"numerics version {NUMERICS_VERSION + 1}; this one is {NUMERICS_VERSION}.*left untouched"
    with pytest.raises(CheckpointError, match=refusal):
        run(compose_config(*tiny, "train.epochs=2"), tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == written


def test_a_run_of_separate_head_maps_fine_tunes_but_does_not_resume(synthetic_mnist, tmp_path):
    """A run of the older layout is not continued (its optimiser state and numerics are the old ones);
    fine-tuning from it (init_from) loads its weights merged."""
    import lvae.run.checkpoint
    from lvae.run.checkpoint import CheckpointError, load_checkpoint
    from lvae.run.train import run

    tiny = tiny_run(synthetic_mnist, tmp_path)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    checkpoint["model"] = separate_head_maps(checkpoint["model"])
    lvae.run.checkpoint.save_checkpoint(tmp_path / "checkpoint.pt", **checkpoint)
    written = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match="another lvae.*separate mean and variance maps.*left untouched"):
        run(compose_config(*tiny, "train.epochs=2"), tmp_path)  # more epochs: training continues from the checkpoint
    assert (tmp_path / "checkpoint.pt").read_bytes() == written
    # Fine-tuning from it (weights only, a fresh optimiser) loads the weights, merged.
    from lvae.run.finetune import load_initial_weights

    model = build_model(model_spec(compose_config(*tiny)), 28 * 28)
    load_initial_weights(model, tmp_path)
    merged = merge_separate_head_maps(checkpoint["model"])
    assert all(torch.equal(value, merged[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize("max_norm", [1e-3, 1e6])
def test_the_gradient_norm_is_clipped_to_the_threshold_and_left_below_it(synthetic_mnist, tmp_path, max_norm):
    """What the optimiser sees: the gradient scaled to norm train.grad_clip_norm when above it, as it is below."""
    from torch.utils.tensorboard import SummaryWriter

    from lvae.data import load_dataset
    from lvae.run.loop import train_model

    cfg = compose_config(f"data.root={synthetic_mnist}", "layers=2", "model.hidden_sizes=[16,8]",
                         "model.latent_sizes=[4,2]", "train.batch_size=48", "train.epochs=1",
                         f"train.grad_clip_norm={max_norm}", "train.progress=false")
    data = load_dataset(cfg.data, torch.device("cpu"))
    model = build_model(model_spec(cfg), data.dim)
    optimizer = torch.optim.Adam(model.parameters())
    seen, step = [], optimizer.step

    def recording_step(*args, **kwargs):
        grads = [p.grad for p in model.parameters()]
        seen.append(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])).item())
        return step(*args, **kwargs)

    optimizer.step = recording_step
    with SummaryWriter(str(tmp_path)) as writer:
        train_model(model, optimizer, data, cfg, writer)
    assert len(seen) == 2  # 96 images, batches of 48
    if max_norm < 1:
        assert seen == pytest.approx([max_norm] * 2, rel=1e-3)
    else:
        assert all(0 < norm < max_norm for norm in seen)
