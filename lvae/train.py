"""One run: train a model, then evaluate it, in a run directory that survives crashes.

Run directory (Hydra's output dir, or any folder given to `run`):
    config.yaml      the fully resolved config
    checkpoint.pt    model, optimiser, training position and RNG states (weights_only=True)
    metrics.json     status, end-of-run numbers, per-epoch history, provenance
    per_image.pt     the test log-likelihood and test ELBO of every test image (float64 tensors)
    tensorboard/     scalars per epoch

Running the same config on the same directory again continues from the last
checkpoint (and returns at once if the run is complete); on the CPU the result is
bitwise identical to a run that was never interrupted. SIGTERM and SIGINT write a
checkpoint at the next step and stop; a non-finite loss or gradient stops the run
at the end of its epoch without touching the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from .checkpoint import (
    CheckpointError,
    atomic_write,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    write_json,
)
from .analyze import analyze_runs, log_to_tensorboard
from .config import ConfigError, resolve_device, run_differences, validate
from .data import ImageData, load_dataset
from .evaluate import evaluate_model, recompute_batchnorm_statistics
from .finetune import load_initial_weights, set_learning_rate
from .models import HierarchicalVAE, build_model
from .objectives import elbo, kl_per_layer, kl_warmup_weight, training_bound
from .provenance import provenance
from .report import format_run

log = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """Training produced a non-finite loss or gradient."""


class RunInterrupted(RuntimeError):
    """A signal stopped training after a checkpoint was written."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


@dataclass
class TrainingState:
    """Where training stands: everything besides model and optimiser that the rest depends on."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps taken; drives the warm-up weight
    train_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    # Inside an epoch that a signal interrupted: its batch order and how far it got.
    order: Optional[torch.Tensor] = None
    next_batch: int = 0
    sums: Optional[torch.Tensor] = None  # running bound, ELBO, KL per layer (summed over images)
    seen: int = 0

    def to_checkpoint(self) -> dict:
        return asdict(self)


class StopRequest:
    """Set by SIGTERM/SIGINT; the training loop checks it after every step (no host sync)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    @contextlib.contextmanager
    def catching_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        self.signum = signum


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def train_model(model: HierarchicalVAE, optimizer: torch.optim.Optimizer, data: ImageData, cfg: DictConfig,
                writer: SummaryWriter, state: Optional[TrainingState] = None,
                save: Callable[[TrainingState], None] = lambda state: None,
                stop: Optional[StopRequest] = None) -> TrainingState:
    """Train from `state` (default: the start) to cfg.train.epochs, calling save(state) every
    checkpoint_every epochs and before stopping on `stop`.

    Running sums and the non-finite check stay on the device and are read once
    per epoch, so no step waits for the host.
    """
    state = state or TrainingState()
    stop = stop or StopRequest()
    tc = cfg.train
    n_batches = data.batches_per_epoch(tc.batch_size)
    epochs = tqdm(range(state.epoch, tc.epochs), desc=f"train {cfg.model.name} L={cfg.layers}", unit="epoch",
                  initial=state.epoch, total=tc.epochs, disable=not tc.progress)
    for epoch in epochs:
        model.train()
        set_learning_rate(optimizer, tc, epoch)
        if state.order is None:  # a fresh epoch, not one resumed in its middle
            state.order, state.next_batch, state.seen = data.epoch_order(), 0, 0
            state.sums = torch.zeros(2 + model.num_layers, device=data.train.device)
        started = time.perf_counter()
        first_bad_step = torch.full((), -1, device=data.train.device)
        while state.next_batch < n_batches:
            x = data.train_batch(state.order, state.next_batch, tc.batch_size)
            kl_weight = kl_warmup_weight(state.step, n_batches, cfg.warmup_epochs)
            trace = model(x, tc.mc_samples * tc.iw_samples)
            bound = training_bound(trace, tc.iw_samples, kl_weight)
            loss = -bound.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip_norm)
            optimizer.step()
            with torch.no_grad():
                finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
                first_bad_step = torch.where(finite | (first_bad_step >= 0), first_bad_step, state.step)
                state.sums += torch.cat([bound.sum().view(1), elbo(trace).mean(0).sum().view(1),
                                         kl_per_layer(trace).mean(1).sum(-1)])
            state.seen += len(x)
            state.step += 1
            state.next_batch += 1
            if stop.signum is not None:
                _raise_if_diverged(first_bad_step, epoch)
                state.train_seconds += time.perf_counter() - started
                save(state)
                raise RunInterrupted(stop.signum, f"stopped by {signal.Signals(stop.signum).name} at epoch "
                                     f"{epoch + 1}, step {state.step}; checkpoint written")
        _raise_if_diverged(first_bad_step, epoch)
        bound_mean, elbo_mean, *kl = (state.sums / state.seen).tolist()  # the one host sync of the epoch
        state.train_seconds += time.perf_counter() - started
        state.history.append({"epoch": epoch + 1, "train_objective": bound_mean, "train_elbo": elbo_mean,
                              "kl_weight": kl_weight, "kl_per_layer": kl, "seconds": time.perf_counter() - started})
        state.epoch, state.order, state.sums = epoch + 1, None, None
        _log_epoch(writer, state.history[-1])
        epochs.set_postfix(bound=f"{bound_mean:.2f}", kl_weight=f"{kl_weight:.2f}")
        if state.epoch % tc.checkpoint_every == 0 and state.epoch < tc.epochs:
            save(state)
    return state


def _raise_if_diverged(first_bad_step: torch.Tensor, epoch: int) -> None:
    step = int(first_bad_step)
    if step >= 0:
        raise RunFailed(f"non-finite loss or gradient at epoch {epoch + 1}, step {step + 1} "
                        "(steps counted from the start of training); the last good checkpoint was kept")


def _log_epoch(writer: SummaryWriter, record: dict) -> None:
    epoch = record["epoch"]
    writer.add_scalar("train/loss", -record["train_objective"], epoch)
    writer.add_scalar("train/objective", record["train_objective"], epoch)
    writer.add_scalar("train/elbo", record["train_elbo"], epoch)
    writer.add_scalar("train/kl_weight", record["kl_weight"], epoch)
    for i, value in enumerate(record["kl_per_layer"], start=1):
        writer.add_scalar(f"kl_per_layer/z{i}", value, epoch)


def _restore(checkpoint: dict, cfg: DictConfig, path: Path, model: nn.Module,
             optimizer: torch.optim.Optimizer) -> TrainingState:
    differences = run_differences(checkpoint["config"], cfg)
    if differences:
        raise ConfigError(f"the checkpoint in {path.parent} belongs to another run; refusing to resume it with "
                          f"a config that differs in: {'; '.join(differences)}. Use another run directory "
                          "(other overrides or hydra.run.dir=...), or the original config.")
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {str(error).splitlines()[0]}") from error
    restore_rng_state(checkpoint["rng"])
    state = TrainingState(**checkpoint["training"])
    if state.epoch > cfg.train.epochs:
        raise ConfigError(f"the checkpoint in {path.parent} has trained {state.epoch} epochs, more than "
                          f"train.epochs={cfg.train.epochs}: ask for at least {state.epoch} epochs.")
    device = next(model.parameters()).device
    state.order = None if state.order is None else state.order.to(device)
    state.sums = None if state.sums is None else state.sums.to(device)
    return state


def _finished_metrics(run_dir: Path, cfg: DictConfig) -> Optional[dict]:
    """The stored metrics when run_dir holds this very run (training and evaluation) completed."""
    metrics_path, config_path = run_dir / "metrics.json", run_dir / "config.yaml"
    if not (metrics_path.exists() and config_path.exists()):
        return None
    metrics = json.loads(metrics_path.read_text())
    stored = OmegaConf.to_container(OmegaConf.load(config_path))
    same = (not run_differences(stored, cfg) and stored["train"]["epochs"] == cfg.train.epochs
            and stored["eval"] == OmegaConf.to_container(cfg.eval))
    return metrics if same and metrics.get("status") == "completed" else None


def _status(run_dir: Path, status: str, **fields) -> None:
    write_json(run_dir / "metrics.json", {"status": status, **fields})


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train and evaluate the run that `cfg` describes in run_dir, resuming what is there."""
    validate(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path, metrics_path = run_dir / "checkpoint.pt", run_dir / "metrics.json"
    checkpoint = load_checkpoint(checkpoint_path) if checkpoint_path.exists() else None
    finished = _finished_metrics(run_dir, cfg) if checkpoint is not None else None
    if finished is not None:
        log.info("run already complete in %s\n%s", run_dir, format_run(finished))
        return finished
    if 0 < cfg.train.epochs < cfg.warmup_epochs:
        log.warning("warmup_epochs=%d > train.epochs=%d: the KL weight ends at %.2f, so the bounds "
                    "are not those of the model's real objective.", cfg.warmup_epochs, cfg.train.epochs,
                    cfg.train.epochs / cfg.warmup_epochs)

    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
    origin = provenance(device)  # at the start: the code that runs is the code checked out now
    data = load_dataset(cfg.data, device)
    model = build_model(cfg, data.dim).to(device)
    tc = cfg.train
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=tuple(tc.adam_betas), eps=tc.adam_eps)
    state = TrainingState()
    if checkpoint is not None:
        state = _restore(checkpoint, cfg, checkpoint_path, model, optimizer)
        log.info("resuming %s from epoch %d, step %d", run_dir, state.epoch, state.step)
    elif cfg.init_from:
        load_initial_weights(model, Path(cfg.init_from))
        log.info("starting from the final weights of %s", cfg.init_from)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    config = OmegaConf.to_container(cfg, resolve=True)

    def save(state: TrainingState, rng: Optional[dict] = None) -> None:
        save_checkpoint(checkpoint_path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                        training=state.to_checkpoint(), rng=rng or capture_rng_state(), config=config)
        _status(run_dir, "running", epoch=state.epoch, step=state.step)

    with SummaryWriter(str(run_dir / "tensorboard"), purge_step=state.epoch + 1) as writer:
        if state.epoch < tc.epochs:
            try:
                with StopRequest().catching_signals() as stop:
                    state = train_model(model, optimizer, data, cfg, writer, state, save, stop)
            except RunFailed as error:
                _status(run_dir, "failed", reason=str(error), epoch=state.epoch, step=state.step)
                raise
            except RunInterrupted as error:
                _status(run_dir, "interrupted", reason=str(error), epoch=state.epoch, step=state.step)
                raise
        # The final checkpoint holds the evaluation's batch-norm statistics but the RNG state
        # of the end of training, so that evaluating it again repeats this evaluation exactly.
        rng_after_training = capture_rng_state()
        recompute_batchnorm_statistics(model, data.train_batches(tc.batch_size))
        save(state, rng_after_training)
        started = time.perf_counter()
        results = evaluate_model(model, data, cfg)
        per_image = results.pop("per_image")
        atomic_write(run_dir / "per_image.pt", lambda f: torch.save(per_image, f))
        if data.bits_per_dim(0.0) is not None:  # dequantized (scale 256) or binary (scale 1) data
            for key in ("test_log_likelihood", "test_elbo", "train_bound"):
                results[key]["bits_per_dim"] = data.bits_per_dim(results[key]["mean"])
                results[key]["bits_per_dim_stderr"] = results[key]["stderr"] / (data.dim * math.log(2))
        for key in ("test_log_likelihood", "test_elbo", "train_bound"):
            writer.add_scalar(f"eval/{key}", results[key]["mean"], tc.epochs)
        results["active_units"] = log_to_tensorboard(writer, model, data, tc.epochs, cfg.eval.memory_budget_mb,
                                                     cfg.eval.test_subset).counts()
        writer.add_hparams(_hparams(cfg), {f"hparam/{key}": results[key]["mean"]
                                           for key in ("test_log_likelihood", "test_elbo", "train_bound")},
                           run_name=".")

    evaluate_seconds = time.perf_counter() - started
    metrics = {
        "status": "completed",
        "model": cfg.model.name,
        "layers": cfg.layers,
        "batch_norm": cfg.batch_norm,
        "warmup_epochs": cfg.warmup_epochs,
        "likelihood": cfg.likelihood,
        "dataset": cfg.data.name,
        "dequantized": data.dequantize,
        "epochs": tc.epochs,
        "seed": cfg.seed,
        **results,
        "wall_time_s": {"train": state.train_seconds, "evaluate": evaluate_seconds,
                        "total": state.train_seconds + evaluate_seconds},
        **origin,
        "history": state.history,
    }
    write_json(metrics_path, metrics)
    if cfg.eval.analyze:
        analyze_runs([run_dir], run_dir, cfg.eval.test_subset, device)
    log.info("run dir: %s\n%s", run_dir, format_run(metrics))
    return metrics


def _hparams(cfg: DictConfig) -> dict:
    """The choices a sweep varies, for TensorBoard's HParams view."""
    return {"model": cfg.model.name, "layers": cfg.layers, "batch_norm": cfg.batch_norm,
            "warmup_epochs": cfg.warmup_epochs, "lr": cfg.train.lr, "iw_samples": cfg.train.iw_samples,
            "epochs": cfg.train.epochs, "seed": cfg.seed}
