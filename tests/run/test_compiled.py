"""Compiled and eager runs compute the same numbers (lvae/core/compiling.py).

Inductor draws random numbers its own way; with its `fallback_random` setting (used here
only) it draws them as eager torch does, so that a compiled step can be compared with the
eager one value for value. Without it, the compiled training objective must still match
the closed form. The tests that compile take tens of seconds each on 2 CPU cores, hence `slow`.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._inductor import config as inductor_config

from lvae.core.compiling import CPU_MIN_EVAL_PAIRS, CPU_MIN_TRAIN_STEPS, compiled, use_compile
from lvae.core.evaluate import evaluate_model
from lvae.core.models import build_model
from lvae.data.images import ImageData
from lvae.run.config import compose_config
from lvae.run.loop import training_forward
from lvae.run.settings import eval_settings, model_spec

from ..helpers.elbo_cases import assert_unbiased, setup

D = 20
# float32, and fused kernels add in another order than eager ones: agreement to about 1e-5 relative.
FLOAT32 = {"rtol": 1e-4, "atol": 1e-4}


def tiny_model(name: str, device: torch.device):
    torch.manual_seed(0)
    cfg = compose_config(f"model={name}", "layers=2", "model.hidden_sizes=[16,12]", "model.latent_sizes=[6,3]")
    return build_model(model_spec(cfg), D).to(device)


def binary_images(n: int, device: torch.device) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, D), 0.3, device=device))


@pytest.mark.slow
def test_a_compiled_training_step_matches_the_eager_one(device):
    """Loss, the epoch statistics, every gradient and the batch-norm statistics it updates (the LVAE;
    the VAE's compiled step is checked against the closed form below, its evaluation against eager)."""
    model, x = tiny_model("lvae", device), binary_images(32, device)
    results = {}
    for mode in ("eager", "compiled"):
        copy_ = copy.deepcopy(model)
        forward = training_forward(copy_, iw_samples=2, mc_samples=1)
        if mode == "compiled":
            forward = compiled(forward, device)
        torch.manual_seed(3)
        with inductor_config.patch(fallback_random=True):
            loss, sums = forward(x, torch.full((), 0.3, device=device))
        loss.backward()
        results[mode] = (loss, sums, {n: p.grad for n, p in copy_.named_parameters()}, copy_.state_dict())
    (loss, sums, grads, state), (c_loss, c_sums, c_grads, c_state) = results["eager"], results["compiled"]
    torch.testing.assert_close(c_loss, loss, **FLOAT32)
    torch.testing.assert_close(c_sums, sums, **FLOAT32)
    for key in grads:
        torch.testing.assert_close(c_grads[key], grads[key], **FLOAT32, msg=lambda m, k=key: f"gradient of {k}: {m}")
    for key in state:
        torch.testing.assert_close(c_state[key], state[key], **FLOAT32, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["vae", "lvae"])
def test_the_compiled_training_objective_matches_the_closed_form(model_name, device):
    """With inductor's own random numbers: the strongly dependent case (tests/helpers/elbo_cases.py),
    K=1 objective at two warm-up weights, ELBO and KL per layer from the step's statistics."""
    torch.manual_seed(0)
    model, x, exact = setup("strongly dependent", model_name, device)
    forward = compiled(training_forward(model, iw_samples=1, mc_samples=1), device)
    batch, calls = 200, 100  # 20,000 draws, as the eager tests
    images = x.expand(batch, -1)
    for kl_weight in (1.0, 0.3):
        weight = torch.full((), kl_weight, dtype=torch.float64, device=device)
        steps = [forward(images, weight) for _ in range(calls)]
        losses = torch.stack([-loss.detach() for loss, _ in steps])  # each the mean of `batch` draws
        assert_unbiased(losses, exact.objective(kl_weight), f"compiled training objective, KL weight {kl_weight}")
    sums = torch.stack([s for _, s in steps]) / batch  # per call: bound, ELBO, KL of z1, z2 (batch means)
    assert_unbiased(sums[:, 1], exact.objective(), "compiled step's ELBO")
    assert_unbiased(sums[:, 2:], exact.kl_per_layer, "compiled step's KL per layer")


@pytest.mark.slow
def test_a_compiled_evaluation_matches_the_eager_one(device):
    """The VAE's (the LVAE's compiled forward pass is checked with its training step above)."""
    model, images = tiny_model("vae", device), binary_images(24, device)
    labels = torch.zeros(len(images), device=device)
    data = ImageData(train=images, train_labels=labels, test=images, test_labels=labels, binarize=True)
    results = {}
    for setting in ("false", "true"):
        cfg = compose_config("eval.iw_samples=64", "eval.train_subset=24", "eval.memory_budget_mb=1",
                             "train.progress=false", f"eval.compile={setting}")
        torch.manual_seed(5)
        with inductor_config.patch(fallback_random=True):
            results[setting] = evaluate_model(model.eval(), data, eval_settings(cfg))
    eager, compiled_ = results["false"], results["true"]
    assert not eager["compiled"] and compiled_["compiled"]
    torch.testing.assert_close(compiled_["per_image"]["test_log_likelihood"],
                               eager["per_image"]["test_log_likelihood"], **FLOAT32)
    torch.testing.assert_close(compiled_["per_image"]["test_elbo"], eager["per_image"]["test_elbo"], **FLOAT32)
    for key in ("train_bound", "test_elbo"):
        assert compiled_[key]["mean"] == pytest.approx(eager[key]["mean"], rel=1e-5)
    assert compiled_["kl_per_layer"] == pytest.approx(eager["kl_per_layer"], rel=1e-4, abs=1e-5)


def test_auto_compiles_on_cuda_and_for_long_cpu_runs_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_compile(None, cuda, 1, CPU_MIN_TRAIN_STEPS)
    assert not use_compile(None, cpu, CPU_MIN_TRAIN_STEPS - 1, CPU_MIN_TRAIN_STEPS)
    assert use_compile(None, cpu, CPU_MIN_EVAL_PAIRS, CPU_MIN_EVAL_PAIRS)
    assert use_compile(True, cpu, 0, CPU_MIN_TRAIN_STEPS) and not use_compile(False, cuda, 10**9, 0)
    paper, quick = compose_config(), compose_config("experiment=fig3", "budget=quick")
    steps_per_epoch = 60_000 // paper.train.batch_size
    assert use_compile(paper.train.compile, cpu, paper.train.epochs * steps_per_epoch, CPU_MIN_TRAIN_STEPS)
    assert not use_compile(quick.train.compile, cpu, quick.train.epochs * steps_per_epoch, CPU_MIN_TRAIN_STEPS)
