"""Training lowers the loss; a whole run writes its directory with every field."""

import json
import platform
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from lvae.core.evaluate import iw_log_likelihood
from lvae.core.models import build_model
from lvae.data import load_dataset
from lvae.data.images import ImageData
from lvae.run.checkpoint import load_checkpoint
from lvae.run.config import compose_config
from lvae.run.loop import train_model
from lvae.run import provenance
from lvae.run.provenance import NUMERICS_VERSION, REPO_ROOT, command_line, describe_device
from lvae.run.settings import model_spec
from lvae.run.train import run
from tests.helpers.tiny_run import TINY_MODEL

SMALL = ("model.hidden_sizes=[64,32,16]", "model.latent_sizes=[8,4,2]")


@pytest.mark.parametrize("name", ["vae", "lvae"])
def test_training_on_a_tiny_set_lowers_the_loss(name, tmp_path):
    torch.manual_seed(0)
    prototypes = torch.rand(4, 50).round() * 0.9 + 0.05
    train = prototypes.repeat(64, 1)
    data = ImageData(train, torch.zeros(256), train[:8], torch.zeros(8), binarize=True)
    cfg = compose_config(f"model={name}", "layers=3", *SMALL, "train.epochs=15", "train.batch_size=32",
                         "warmup_epochs=0", "train.progress=false")
    model = build_model(model_spec(cfg), 50)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, eps=cfg.train.adam_eps)
    with SummaryWriter(str(tmp_path)) as writer:
        history = train_model(model, optimizer, data, cfg, writer).history
    first, last = history[0]["train_objective"], history[-1]["train_objective"]
    assert last > first + 10, (first, last)  # in nats per image; 50 pixels start near 35 nats


EXPECTED_FIELDS = {
    "status", "model", "layers", "batch_norm", "warmup_epochs", "likelihood", "dataset", "epochs", "seed",
    "test_log_likelihood", "test_elbo", "train_bound", "kl_per_layer", "wall_time_s", "date", "command",
    "device", "hostname", "git_commit", "git_dirty", "versions", "history", "active_units", "compiled",
}


def test_a_composed_run_writes_metrics_checkpoint_config_and_tensorboard(synthetic_mnist, tmp_path, device):
    cfg = compose_config(f"data.root={synthetic_mnist}", "model=lvae", "layers=3", *SMALL, "train.epochs=3",
                         "train.batch_size=32", "warmup_epochs=2", "eval.iw_samples=64", "eval.train_subset=40",
                         "eval.memory_budget_mb=1", f"device={device.type}", "train.progress=false")
    run_dir = tmp_path / "run"
    returned = run(cfg, run_dir)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(returned))
    assert EXPECTED_FIELDS <= set(metrics), EXPECTED_FIELDS - set(metrics)
    assert metrics["status"] == "completed" and metrics["epochs"] == 3 and len(metrics["history"]) == 3
    ll, test_elbo, train = metrics["test_log_likelihood"], metrics["test_elbo"], metrics["train_bound"]
    assert ll["iw_samples"] == 64 and ll["images"] == 32 and train["images"] == 40
    assert test_elbo["mean"] <= ll["mean"] < 0, "the K=64 bound is at least the ELBO (up to noise)"
    assert len(metrics["kl_per_layer"]) == 3 and all(k >= 0 for k in metrics["kl_per_layer"])
    assert [h["kl_weight"] for h in metrics["history"]][-1] == 1.0
    assert set(metrics["versions"]) >= {"torch", "python", "lvae"} and metrics["device"].startswith(device.type)
    on_cuda = device.type == "cuda"  # `auto` compiles on CUDA; a short run on the CPU stays eager
    assert metrics["compiled"] == {"train_epochs": 3 if on_cuda else 0, "evaluation": on_cuda}

    assert (run_dir / "config.yaml").read_text().count("layers: 3") == 1
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")  # weights_only=True
    assert checkpoint["training"]["epoch"] == 3 and checkpoint["config"]["layers"] == 3
    model = build_model(model_spec(cfg), 784).to(device)
    model.load_state_dict(checkpoint["model"])
    # The checkpoint alone reproduces the estimate (batch-norm statistics included).
    data = load_dataset(cfg.data, device)
    reloaded = iw_log_likelihood(model, data.test, 64, memory_budget_mb=1).mean().item()
    assert abs(reloaded - ll["mean"]) < 3 * ll["stderr"]

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/elbo", "train/kl_weight", "kl_per_layer/z1", "eval/test_log_likelihood"} <= tags
    assert len(events.Scalars("train/loss")) == 3

    per_image = torch.load(run_dir / "per_image.pt", weights_only=True)
    assert per_image["test_log_likelihood"].shape == (32,)
    assert per_image["test_log_likelihood"].mean().item() == pytest.approx(ll["mean"])
    assert metrics["numerics_version"] == NUMERICS_VERSION


def test_a_stored_result_of_other_code_is_returned_with_a_warning(synthetic_mnist, tmp_path, caplog):
    cfg = compose_config(f"data.root={synthetic_mnist}", "layers=1", "model.hidden_sizes=[8]",
                         "model.latent_sizes=[2]", "train.epochs=1", "eval.iw_samples=4", "eval.train_subset=8",
                         "eval.analyze=false", "device=cpu", "train.progress=false")
    run_dir = tmp_path / "run"
    run(cfg, run_dir)
    with caplog.at_level("WARNING"):
        run(cfg, run_dir)
    assert "another numerics version" not in caplog.text
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, "numerics_version": 1}))
    with caplog.at_level("WARNING"):
        assert run(cfg, run_dir)["numerics_version"] == 1, "kept, never recomputed silently"
    assert "computed by another numerics version than the installed one (1, now" in caplog.text


def test_gaussian_output_on_continuous_pixels_runs_end_to_end(synthetic_mnist, tmp_path):
    cfg = compose_config(f"data.root={synthetic_mnist}", "model=vae", "layers=2", *SMALL, "train.epochs=1",
                         "likelihood=gaussian", "data.binarize=false", "model.min_variance=1e-3",
                         "eval.iw_samples=16", "eval.train_subset=16", "device=cpu", "train.progress=false")
    metrics = run(cfg, tmp_path / "run")
    assert metrics["likelihood"] == "gaussian"
    for key in ("test_log_likelihood", "test_elbo", "train_bound"):
        assert torch.isfinite(torch.tensor(metrics[key]["mean"])), key


def test_element_wise_gradient_clip_is_applied_after_the_norm_clip(monkeypatch, synthetic_mnist):
    """train.grad_clip_value (the authors' ±0.9) clips each entry after the total-norm clip; off by default."""
    calls = []
    real_norm_clip = torch.nn.utils.clip_grads_with_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_value_", lambda params, value: calls.append(("value", value)))
    monkeypatch.setattr(torch.nn.utils, "clip_grads_with_norm_",
                        lambda *args, **kwargs: calls.append(("norm",)) or real_norm_clip(*args, **kwargs))
    for value, per_step in ((None, [("norm",)]), (0.9, [("norm",), ("value", 0.9)])):
        calls.clear()  # a norm limit that every gradient exceeds: the norm clip runs at each of the two steps
        cfg = compose_config(f"data.root={synthetic_mnist}", *TINY_MODEL, "train.batch_size=48", "train.epochs=1",
                             "train.grad_clip_norm=1e-6", f"train.grad_clip_value={'null' if value is None else value}",
                             "train.progress=false")
        data = load_dataset(cfg.data, torch.device("cpu"))
        model = build_model(model_spec(cfg), data.dim)
        with SummaryWriter(str(synthetic_mnist / f"tensorboard_{value}")) as writer:
            train_model(model, torch.optim.Adam(model.parameters()), data, cfg, writer)
        assert calls == per_step * 2  # 96 images, batches of 48


def test_a_run_leaves_the_tf32_flags_and_the_callers_as_they_were(synthetic_mnist, tmp_path):
    """allow_tf32 holds for the run's training only: the process (a notebook, a sweep's next job) keeps its own."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        run(compose_config(f"data.root={synthetic_mnist}", "model=vae", "layers=1", *SMALL, "train.epochs=1",
                           "train.batch_size=32", "eval.iw_samples=2", "eval.train_subset=8", "eval.analyze=false",
                           "allow_tf32=true", "device=cpu", "train.progress=false"), tmp_path / "run")
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("script, recorded", [
    # python -m lvae.cli, or a worktree's absolute path
    (str(REPO_ROOT / "lvae" / "cli" / "__main__.py"), "lvae/cli/__main__.py"),
    ("train.py", "train.py"),
    ("/elsewhere/train.py", "/elsewhere/train.py"),
])
def test_the_recorded_command_names_the_script_within_the_repository(monkeypatch, script, recorded):
    monkeypatch.setattr(sys, "argv", [script, "model=lvae", "layers=5"])
    assert command_line() == f"{recorded} model=lvae layers=5"


def test_a_cpu_run_records_the_cpus_model_where_the_system_names_it(monkeypatch, tmp_path):
    """Two x86_64 CPUs can round a float32 sum differently, so "x86_64" alone cannot say where a number came from."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: Example\nmodel name\t: Example CPU 9000 @ 3.0GHz\nflags\t: fpu\n")
    monkeypatch.setattr(provenance, "CPUINFO", cpuinfo)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert describe_device(torch.device("cpu")) == f"cpu (Example CPU 9000 @ 3.0GHz, {platform.machine()}, 2 threads)"
    monkeypatch.setattr(provenance, "CPUINFO", tmp_path / "absent")  # not Linux: the architecture alone
    assert describe_device(torch.device("cpu")) == f"cpu ({platform.processor() or platform.machine()}, 2 threads)"
