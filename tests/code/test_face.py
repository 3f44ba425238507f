"""The Python face: a trained run read back without Hydra, the log-likelihood, a model from keyword arguments."""

from __future__ import annotations

import torch

import lvae
from lvae.run.checkpoint import load_checkpoint
from lvae.run.config import compose_config
from lvae.run.train import run
from tests.helpers.tiny_run import tiny_run

TINY = tiny_run("eval.iw_samples=16")


def test_a_trained_run_comes_back_as_evaluated(synthetic_mnist, tmp_path):
    cfg = compose_config(f"data.root={synthetic_mnist}", *TINY)
    metrics = run(cfg, tmp_path / "run")

    trained = lvae.load_run(tmp_path / "run")
    assert isinstance(trained.model, lvae.LadderVAE) and not trained.model.training
    stored = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["model"]  # batch-norm statistics of the evaluation
    assert all(torch.equal(value, stored[key]) for key, value in trained.model.state_dict().items())
    assert trained.config.layers == 2 and trained.metrics == metrics
    assert trained.data.test.shape == (32, 784)

    log_px = lvae.iw_log_likelihood(trained.model, trained.data.test, k=16)
    assert log_px.shape == (32,) and log_px.dtype == torch.float64 and torch.isfinite(log_px).all()
    # The same estimator as the run's evaluation: within a few standard errors of its number.
    reported = metrics["test_log_likelihood"]
    assert abs(log_px.mean().item() - reported["mean"]) < 5 * reported["stderr"] + 1.0


def test_a_model_from_keyword_arguments_has_the_run_configs_defaults():
    model = lvae.new_model("vae", layers=2, batch_norm=False, hidden_sizes=[16, 8], latent_sizes=[4, 2])
    assert isinstance(model, lvae.BottomUpVAE) and model.latent_sizes == [4, 2]
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    assert lvae.new_model().latent_sizes == [64, 32, 16, 8, 4]  # the paper's 5-layer LVAE
    direct = lvae.LadderVAE(data_dim=784, latent_sizes=[4, 2], hidden_sizes=[16, 8], depth=2, batch_norm=True,
                            likelihood="bernoulli", min_variance=1e-6)
    assert direct(torch.rand(3, 784).bernoulli(), n_samples=2).layers[0].z.shape[:2] == (2, 3)
