"""Fine-tuning: a run that starts from a completed run's weights (init_from), with a decaying learning rate."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lvae.core.models import build_model
from lvae.run.checkpoint import CheckpointError, load_checkpoint
from lvae.run.config import ConfigError, compose_config
from lvae.run.finetune import learning_rate, load_initial_weights
from lvae.run.record import write_weights
from lvae.run.settings import model_spec
from lvae.run.train import run
from tests.helpers.tiny_run import tiny_run


def test_learning_rate_decays_by_epoch():
    cfg = compose_config("train.lr=0.5", "train.lr_decay=0.5")
    assert [learning_rate(cfg.train, epoch) for epoch in range(3)] == [0.5, 0.25, 0.125]
    assert learning_rate(compose_config().train, 7) == compose_config().train.lr


def _base_run(synthetic_mnist: Path, run_dir: Path, *overrides: str):
    cfg = compose_config(f"data.root={synthetic_mnist}", *tiny_run(*overrides))
    run(cfg, run_dir)
    return cfg


def test_initial_weights_come_from_a_completed_run_of_the_same_architecture(synthetic_mnist, tmp_path):
    cfg = _base_run(synthetic_mnist, tmp_path / "base")
    model = build_model(model_spec(cfg), 784)
    load_initial_weights(model, tmp_path / "base")
    saved = load_checkpoint(tmp_path / "base" / "checkpoint.pt")["model"]
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())

    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_initial_weights(build_model(model_spec(replace(cfg, layers=1)), 784), tmp_path / "base")
    with pytest.raises(ConfigError, match="no run there"):
        load_initial_weights(model, tmp_path / "nothing")
    (tmp_path / "base" / "metrics.json").write_text(json.dumps({"status": "running", "epoch": 1}))
    with pytest.raises(ConfigError, match="that run is running"):
        load_initial_weights(model, tmp_path / "base")


def test_a_run_with_init_from_starts_from_those_weights_and_decays_its_learning_rate(synthetic_mnist, tmp_path):
    base = _base_run(synthetic_mnist, tmp_path / "base")
    base_weights = load_checkpoint(tmp_path / "base" / "checkpoint.pt")["model"]
    _base_run(synthetic_mnist, tmp_path / "finetuned", f"init_from={tmp_path / 'base'}", "train.epochs=0",
              "warmup_epochs=0")
    weights = load_checkpoint(tmp_path / "finetuned" / "checkpoint.pt")["model"]
    assert all(torch.equal(weights[key], value) for key, value in base_weights.items()
               if "running" not in key and "num_batches" not in key)  # batch-norm statistics are recomputed
    _base_run(synthetic_mnist, tmp_path / "decayed", f"init_from={tmp_path / 'base'}", "train.epochs=3",
              "train.lr_decay=0.5")
    optimizer = load_checkpoint(tmp_path / "decayed" / "checkpoint.pt")["optimizer"]
    assert optimizer["param_groups"][0]["lr"] == base.train.lr * 0.25


def test_a_published_run_with_its_weights_can_be_fine_tuned(synthetic_mnist, tmp_path):
    """What a user does next with results/<folder>: fine-tune it, as from the run's own folder."""
    _base_run(synthetic_mnist, tmp_path / "base")
    published = tmp_path / "published"  # what `lvae.report --publish DIR --weights` writes: no checkpoint.pt
    published.mkdir()
    for name in ("config.yaml", "metrics.json"):
        shutil.copy2(tmp_path / "base" / name, published / name)
    write_weights(tmp_path / "base", published)
    cfg = compose_config(f"data.root={synthetic_mnist}", *tiny_run())
    from_run, from_published = (build_model(model_spec(cfg), 784) for _ in range(2))
    load_initial_weights(from_run, tmp_path / "base")
    load_initial_weights(from_published, published)
    assert all(torch.equal(value, from_run.state_dict()[key]) for key, value in from_published.state_dict().items())
