"""Training curves: points at the asked epochs, in metrics.json's history and TensorBoard, changing nothing in training.

That a resumed run's curves equal an uninterrupted run's is checked with the other resume tests
(tests/run/test_reliability.py: their reference run records a point every epoch).
"""

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lvae.core.evaluate import CURVE_POINTS, curve_interval, curve_point, fold_batchnorm, iw_log_likelihood
from lvae.core.models import build_model
from lvae.data.images import ImageData
from lvae.run.checkpoint import load_checkpoint
from lvae.run.config import ConfigError, compose_config, validate
from lvae.run.record import is_complete_for
from lvae.run.settings import curve_settings, model_spec
from lvae.run.train import run
from tests.helpers.tiny_run import tiny_run

TINY = tiny_run("warmup_epochs=2", "eval.curve_iw_samples=8", "eval.curve_images=24")


def test_the_default_gives_about_twenty_points_and_none_to_short_runs():
    assert curve_interval(None, 2000) == 2000 // CURVE_POINTS and curve_interval(None, 200) == 10
    assert curve_interval(None, 10) == 1 and curve_interval(None, 9) == 0, "tiny runs (the tests') record none"
    assert curve_interval(0, 2000) == 0 and curve_interval(3, 10) == 3


def test_a_negative_interval_is_refused_with_the_key_and_the_allowed_values():
    with pytest.raises(ConfigError, match=r"eval.curve_every=-1 is not allowed: .*0 \(none\)"):
        validate(compose_config("eval.curve_every=-1"))


def test_curves_are_recorded_at_their_epochs_and_change_nothing_in_training(synthetic_mnist, tmp_path):
    data = f"data.root={synthetic_mnist}"
    with_curves = run(compose_config(*TINY, data, "train.epochs=5", "eval.curve_every=2"), tmp_path / "curves")
    without = run(compose_config(*TINY, data, "train.epochs=5", "eval.curve_every=0"), tmp_path / "none")

    curves = {record["epoch"]: record["curve"] for record in with_curves["history"] if "curve" in record}
    assert sorted(curves) == [2, 4, 5], "every 2 epochs, and the last"
    assert not any("curve" in record for record in without["history"])
    for curve in curves.values():
        assert curve["iw_samples"] == 8 and curve["images"] == 24
        assert [len(units) for units in curve["kl_per_unit"]] == [4, 2]
        assert all(kl >= 0 for units in curve["kl_per_unit"] for kl in units), "the LVAE's terms are divergences"
        assert curve["test_bound"] > curve["test_elbo"] - 5, "K=8 bound vs 1-sample ELBO, on the same images"
    # The points are measured on a copy with their own noise: the weights and the end-of-run numbers are the same.
    weights = [load_checkpoint(tmp_path / name / "checkpoint.pt")["model"] for name in ("curves", "none")]
    assert all(weights[0][key].equal(weights[1][key]) for key in weights[0])
    assert with_curves["test_log_likelihood"] == without["test_log_likelihood"]
    assert json.loads((tmp_path / "curves" / "metrics.json").read_text())["history"] == with_curves["history"]

    events = EventAccumulator(str(tmp_path / "curves" / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("curve/test_bound")] == [2, 4, 5]
    assert {"curve/test_elbo", "curve/train_elbo", "curve/active_units_kl/z1"} <= set(events.Tags()["scalars"])
    assert "curve/kl_per_unit/z2" in events.Tags()["histograms"]

    # Curve settings change no end-of-run number: the finished run stays complete for other values.
    assert is_complete_for(tmp_path / "curves", compose_config(*TINY, data, "train.epochs=5", "eval.curve_every=0"))


def test_a_curve_points_test_bound_is_the_k_sample_bound_with_the_configured_k():
    """The point's test bound is log p(x) estimated with eval.curve_iw_samples samples on its images, each
    with its own noise: exactly what iw_log_likelihood gives for that K, and not what another K gives."""
    cfg = compose_config(*TINY, "eval.curve_iw_samples=16", "eval.curve_images=12")
    settings = curve_settings(cfg)
    assert (settings.iw_samples, settings.images) == (16, 12)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(40, 784, generator=generator)
    data = ImageData(pixels[:24], torch.zeros(24), pixels[24:], torch.zeros(16), binarize=True)
    data.test = data.draw(data.test, generator)
    model = build_model(model_spec(cfg), 784).eval()
    point = curve_point(model, data, settings)
    indices, images = data.test_sample(12)
    folded = fold_batchnorm(model)

    def bound(k: int) -> float:
        estimates = iw_log_likelihood(folded, images, k, settings.memory_budget_mb, indices=indices, seed=cfg.seed)
        return estimates.mean().item()

    assert point["test_bound"] == bound(16) and point["iw_samples"] == 16
    assert point["test_bound"] not in (bound(1), bound(64))
