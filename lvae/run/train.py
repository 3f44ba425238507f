"""One run: train a model, then evaluate it, in a run directory that survives crashes.

Run directory (Hydra's output dir, or any folder given to `run`):
    config.yaml      the fully resolved config
    checkpoint.pt    model, optimiser, training position, RNG states and their checksum (weights_only=True)
    metrics.json     status, end-of-run numbers, per-epoch history, provenance
    per_image.pt     the test log-likelihood and test ELBO of every test image (float64 tensors)
    tensorboard/     scalars per epoch
    .lock            held by the one process that works on the run (see lvae.run.checkpoint.hold_run_dir)

A run holds its directory from start to end; a second process there stops with a
message (RunDirBusy). Nothing in the directory changes until the run is accepted
(its config fits the checkpoint there, its data loaded); from then on every way
out leaves metrics.json's status `completed`, `interrupted` or `failed` with the reason.

Running the same config on the same directory again continues from the last
checkpoint (and returns at once if the run is complete); on the CPU the result is
bitwise identical to a run that was never interrupted, whatever step it stopped at.
SIGTERM and SIGINT during training write a checkpoint at the next step and stop; at
any other time they stop at once (evaluation starts again on a rerun). A
non-finite loss or gradient stops the run at the end of its epoch without touching
the last good checkpoint.
"""

from __future__ import annotations

import contextlib
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

from lvae.core.analysis import ACTIVITY_THRESHOLD, ActiveUnits, active_units, log_to_tensorboard, seeded_rng
from lvae.run.checkpoint import (
    CheckpointError,
    RunDirHold,
    capture_rng_state,
    hold_run_dir,
    load_checkpoint,
    open_run_logs,
    remove_stale_temporaries,
    restore_rng_state,
    save_checkpoint,
    state_dict_mismatch,
    write_text,
)
from lvae.core.compiling import CPU_MIN_TRAIN_STEPS, compiled, use_compile
from lvae.run.config import ConfigError, config_to_dict, resolve_device, run_differences, validate
from lvae.data import ImageData, load_dataset
from lvae.core.evaluate import curve_interval, curve_point, evaluate_model, recompute_batchnorm_statistics, tf32_matmuls
from lvae.run.finetune import load_initial_weights, set_learning_rate
from lvae.core.models import HierarchicalVAE, build_model, has_separate_head_maps
from lvae.core.objectives import elbo, kl_per_layer, kl_warmup_weight, training_bound
from lvae.run.provenance import NUMERICS_VERSION, is_current_numerics, numerics_version_of, provenance
from lvae.run.analysis import AnalysisSettings, RunToAnalyze, analyze, analyze_runs, run_name
from lvae.run.settings import curve_settings, eval_settings, model_spec
from lvae.run.record import (ANALYSIS_FILE, CHECKPOINT_FILE, CONFIG_FILE, Status, is_complete, is_complete_for,
                         differences_from_stored, read_config, read_record, run_identity, write_per_image,
                         write_record)
from lvae.run.summary import format_run

log = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """Training produced a non-finite loss or gradient, or diverged (see DIVERGED_NATS_PER_PIXEL), in
    epoch `epoch` (counted from 1) at step `step` (counted from 1, from the start of training)."""

    def __init__(self, message: str, epoch: int, step: int):
        super().__init__(message)
        self.epoch, self.step = epoch, step


class RunWriteFailed(OSError):
    """A write into the run directory failed (a full disk); the message names the file."""


class RunInterrupted(RuntimeError):
    """A signal stopped the run (during training: after a checkpoint was written)."""

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


def _signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def describe_position(epochs: int, steps: int) -> str:
    """Where training stands, as every message and metrics.json's `epoch` and `step` count it:
    optimiser steps taken and epochs complete."""
    return f"step {steps}, {epochs} complete epoch{'s' * (epochs != 1)}"


# A run has diverged when an epoch's mean training bound is this many nats per pixel below that of the
# model that learned nothing (see divergence_floor). Why 10: an untrained network starts within about
# 1 nat per pixel of that model and training only improves on it (MNIST: that model scores -543 nats, an
# untrained LVAE about -550, one epoch -130 to -200), while a run that diverged scores orders of
# magnitude lower (lr=1e4: about -1e17). No healthy run comes within a factor of ten of the floor.
DIVERGED_NATS_PER_PIXEL = 10.0


def divergence_floor(likelihood: str, pixels: int) -> float:
    """The mean training bound per image (nats) below which a run has diverged.

    The reference is the model that learned nothing, whose bound is exact (no latent variable, no KL
    term): every pixel 1/2 for Bernoulli output (-log 2 per pixel), the uniform density on [0, 1]
    for Gaussian output (pixels are scaled to [0, 1]: 0 per pixel). The floor lies
    DIVERGED_NATS_PER_PIXEL nats per pixel below it. The training bound (with the warm-up's KL weight
    below 1, or K importance samples) is never below the ELBO, so the floor holds for it too.
    """
    reference = -math.log(2.0) if likelihood == "bernoulli" else 0.0
    return (reference - DIVERGED_NATS_PER_PIXEL) * pixels


class StopRequest:
    """SIGTERM/SIGINT during a run.

    While `deferred` (training), a signal only sets `signum`: the loop checks it after
    every step and writes a checkpoint before it stops, without a host sync. At any
    other time (loading, evaluation) it raises RunInterrupted at once, naming `stage`:
    nothing half-done there is worth saving, and a rerun starts that stage again.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.deferred = False
        self.stage = "start-up"

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

    @contextlib.contextmanager
    def deferring(self):
        self.deferred = True
        try:
            yield self
        finally:
            self.deferred = False

    def _handle(self, signum, frame) -> None:
        first, self.signum = self.signum is None, signum
        if not self.deferred:
            self.deferred = True  # a second signal must not cut short the clean-up of the first
            raise RunInterrupted(signum, f"stopped by {_signal_name(signum)} during {self.stage}")
        if first:  # said at once: the step may take long (the first one compiles when torch.compile is on)
            log.warning("%s received: stopping after the current training step, with a checkpoint (a step "
                        "that torch.compile is compiling finishes compiling first, which can take a minute)",
                        _signal_name(signum))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def new_optimizer(model: nn.Module, tc: DictConfig) -> torch.optim.Adam:
    """Adam as train.* sets it, its update one fused kernel per step on CPU and CUDA rather than
    a loop over the parameter tensors. (A checkpoint restores the implementation it was written
    with, so a run started with the per-tensor loop resumes bitwise.)"""
    device = next(model.parameters()).device
    return torch.optim.Adam(model.parameters(), lr=tc.lr, betas=tuple(tc.adam_betas), eps=tc.adam_eps,
                            fused=device.type in ("cpu", "cuda"))


def training_forward(model: HierarchicalVAE, iw_samples: int, mc_samples: int) -> Callable:
    """forward(x, kl_weight) -> (loss, batch sums): the forward half of a training step.

    loss: minus the training bound (docs/method.md, eq. 10), averaged over the batch; batch
    sums: the bound, the ELBO and each layer's KL term summed over the batch, (2 + L,),
    detached, for the epoch's averages. One function, so that a compiled step fuses it all.
    """
    def forward(x: torch.Tensor, kl_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        trace = model(x, mc_samples * iw_samples)
        kl = kl_per_layer(trace)  # once, for the bound, the ELBO and the report (eager mode has no CSE)
        bound = training_bound(trace, iw_samples, kl_weight, kl)
        sums = torch.cat([bound.sum().view(1), elbo(trace, kl=kl).mean(0).sum().view(1), kl.mean(1).sum(-1)])
        return -bound.mean(), sums.detach()

    return forward


def train_model(model: HierarchicalVAE, optimizer: torch.optim.Optimizer, data: ImageData, cfg: DictConfig,
                writer: SummaryWriter, state: Optional[TrainingState] = None,
                save: Callable[[TrainingState], None] = lambda state: None,
                stop: Optional[StopRequest] = None) -> TrainingState:
    """Train from `state` (default: the start) to cfg.train.epochs, calling save(state) every
    checkpoint_every epochs and before stopping on `stop`. `state` is updated in place.

    Running sums and the non-finite check stay on the device and are read once
    per epoch, so no step waits for the host. The forward half of each step is compiled
    when train.compile says so (lvae/compiling.py); each epoch's record says whether it was.
    """
    state = state or TrainingState()
    stop = stop or StopRequest()
    tc = cfg.train
    n_batches = data.batches_per_epoch(tc.batch_size)
    device = data.train.device
    compile_step = use_compile(tc.compile, device, (tc.epochs - state.epoch) * n_batches, CPU_MIN_TRAIN_STEPS)
    floor = divergence_floor(cfg.likelihood, data.dim)
    forward = training_forward(model, tc.iw_samples, tc.mc_samples)
    if compile_step:  # the gradient clipping stays eager: compiled, clip_grad_norm_ breaks the graph (no gain)
        forward = compiled(forward, device)
    # CUDA graphs (compiled on CUDA) reuse their output memory: each step tells them where it begins.
    graph_steps = compile_step and device.type == "cuda"
    curve_every = curve_interval(cfg.eval.curve_every, tc.epochs)
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
        # A checkpoint taken after the epoch's last step resumes here with no batch left to run.
        while state.next_batch < n_batches:
            x = data.train_batch(state.order, state.next_batch, tc.batch_size)
            # A tensor filled on the device: neither a copy from the host nor a recompilation per value.
            kl_weight = torch.full((), kl_warmup_weight(state.step, n_batches, cfg.warmup_epochs), device=device)
            if graph_steps:
                torch.compiler.cudagraph_mark_step_begin()
            loss, batch_sums = forward(x, kl_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # One fused (foreach) norm over all gradients. On the CPU, reading it waits for nothing, so the
            # scaling pass is skipped when it would scale by 1; elsewhere it stays, so no step waits for the device.
            grad_norm = nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None],
                                                foreach=True)
            if device.type != "cpu" or grad_norm > tc.grad_clip_norm:
                nn.utils.clip_grads_with_norm_(model.parameters(), tc.grad_clip_norm, grad_norm, foreach=True)
            if tc.grad_clip_value is not None:  # the authors' code also clips each entry (README, "Where we differ")
                nn.utils.clip_grad_value_(model.parameters(), tc.grad_clip_value)
            optimizer.step()
            with torch.no_grad():
                finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
                first_bad_step = torch.where(finite | (first_bad_step >= 0), first_bad_step, state.step)
                state.sums += batch_sums
            state.seen += len(x)
            state.step += 1
            state.next_batch += 1
            if stop.signum is not None:
                _raise_if_diverged(first_bad_step, epoch)
                _raise_if_below(float(state.sums[0]) / state.seen, floor, cfg, epoch, state.step)
                state.train_seconds += time.perf_counter() - started
                save(state)
                raise RunInterrupted(stop.signum, f"stopped by {_signal_name(stop.signum)} at "
                                     f"{describe_position(state.epoch, state.step)}; checkpoint written")
        _raise_if_diverged(first_bad_step, epoch)
        bound_mean, elbo_mean, *kl = (state.sums / state.seen).tolist()  # the one host sync of the epoch
        _raise_if_below(bound_mean, floor, cfg, epoch, state.step)
        kl_weight = kl_warmup_weight(state.step - 1, n_batches, cfg.warmup_epochs)  # that of the epoch's last step
        state.train_seconds += time.perf_counter() - started
        state.history.append({"epoch": epoch + 1, "train_objective": bound_mean, "train_elbo": elbo_mean,
                              "kl_weight": kl_weight, "kl_per_layer": kl, "seconds": time.perf_counter() - started,
                              "compiled": compile_step})
        state.epoch, state.order, state.sums = epoch + 1, None, None
        if curve_every and (state.epoch % curve_every == 0 or state.epoch == tc.epochs):
            state.history[-1]["curve"] = curve_point(model, data, curve_settings(cfg))
        _log_epoch(writer, state.history[-1])
        epochs.set_postfix(bound=f"{bound_mean:.2f}", kl_weight=f"{kl_weight:.2f}")
        if state.epoch % tc.checkpoint_every == 0 and state.epoch < tc.epochs:
            save(state)
    return state


def _raise_if_diverged(first_bad_step: torch.Tensor, epoch: int) -> None:
    step = int(first_bad_step)
    if step >= 0:
        raise RunFailed(f"non-finite loss or gradient at step {step + 1}, in epoch {epoch + 1} (steps counted "
                        "from the start of training, epochs from 1)", epoch + 1, step + 1)


def _raise_if_below(bound_mean: float, floor: float, cfg: DictConfig, epoch: int, step: int) -> None:
    if bound_mean < floor:
        raise RunFailed(f"the run diverged in epoch {epoch + 1} (by step {step}): its mean training bound, "
                        f"{bound_mean:.4g} nats per image, is below {floor:.0f}, {DIVERGED_NATS_PER_PIXEL:g} nats "
                        "per pixel worse than a model that learned nothing (lvae/train.py, divergence_floor); "
                        f"try a lower train.lr (now {cfg.train.lr:g})", epoch + 1, step)


def _log_epoch(writer: SummaryWriter, record: dict) -> None:
    epoch = record["epoch"]
    writer.add_scalar("train/loss", -record["train_objective"], epoch)
    writer.add_scalar("train/objective", record["train_objective"], epoch)
    writer.add_scalar("train/elbo", record["train_elbo"], epoch)
    writer.add_scalar("train/kl_weight", record["kl_weight"], epoch)
    for i, value in enumerate(record["kl_per_layer"], start=1):
        writer.add_scalar(f"kl_per_layer/z{i}", value, epoch)
    curve = record.get("curve")
    if curve:
        for key in ("test_bound", "test_elbo", "train_elbo"):
            writer.add_scalar(f"curve/{key}", curve[key], epoch)
        for i, kl in enumerate(curve["kl_per_unit"], start=1):
            writer.add_histogram(f"curve/kl_per_unit/z{i}", torch.tensor(kl), epoch)
            writer.add_scalar(f"curve/active_units_kl/z{i}", sum(value > ACTIVITY_THRESHOLD for value in kl), epoch)


def _restore(checkpoint: dict, cfg: DictConfig, path: Path, model: nn.Module,
             optimizer: torch.optim.Optimizer) -> TrainingState:
    differences = run_differences(checkpoint["config"], cfg)
    if differences:
        raise ConfigError(f"the checkpoint in {path.parent} belongs to another run; refusing to resume it with "
                          f"a config that differs in: {'; '.join(differences)}. Use another run directory "
                          "(other overrides or hydra.run.dir=...), or the original config.")
    # Checkpoints record their numerics version since 2026-12-05; version 1's are told by their layout.
    written_by = 1 if has_separate_head_maps(checkpoint["model"]) else checkpoint.get("numerics_version", 2)
    if written_by != NUMERICS_VERSION:
        layout = ", with separate mean and variance maps per Gaussian head" if written_by == 1 else ""
        raise CheckpointError(f"checkpoint {path} was written by another lvae (numerics version {written_by}{layout}; "
                              f"this one is {NUMERICS_VERSION}, lvae/provenance.py says what changed); resuming it "
                              "would finish the run with other numerics than it started with. It was left untouched: "
                              "finish the run with the lvae commit its record names, or start it afresh in another "
                              "run directory.")
    mismatch = state_dict_mismatch(model.state_dict(), checkpoint["model"])
    if mismatch:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {mismatch}. It was left untouched.")
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {str(error).strip()}") from error
    restore_rng_state(checkpoint["rng"])
    state = TrainingState(**checkpoint["training"])
    if state.epoch > cfg.train.epochs:
        raise ConfigError(f"the checkpoint in {path.parent} has trained {state.epoch} epochs, more than "
                          f"train.epochs={cfg.train.epochs}: ask for at least {state.epoch} epochs.")
    device = next(model.parameters()).device
    state.order = None if state.order is None else state.order.to(device)
    state.sums = None if state.sums is None else state.sums.to(device)
    return state


def _record_status(run_dir: Path, status: Status, **fields) -> str:
    """metrics.json's status on the way out of a run: '' once written, else why not (a full disk),
    for the message of the error that stopped the run; failing to write it must not hide that."""
    try:
        write_record(run_dir, {"status": status.value, **fields})
    except OSError as error:
        return f" (the status {status.value!r} could not be recorded in {error.filename}: {error.strerror})"
    return ""


@dataclass
class _Session:
    """A run set up in its directory: what training and evaluation work on."""

    cfg: DictConfig
    run_dir: Path
    device: torch.device
    origin: dict  # provenance, taken at the start: the code that runs is the code checked out now
    data: ImageData
    model: HierarchicalVAE
    optimizer: torch.optim.Optimizer
    state: TrainingState
    checkpointed: Optional[tuple[int, int]] = None  # (epochs, steps) of the checkpoint on disk, if any

    def save(self, state: TrainingState, rng: Optional[dict] = None) -> None:
        save_checkpoint(self.run_dir / CHECKPOINT_FILE, model=self.model.state_dict(),
                        optimizer=self.optimizer.state_dict(), training=state.to_checkpoint(),
                        rng=rng or capture_rng_state(), config=config_to_dict(self.cfg),
                        numerics_version=NUMERICS_VERSION)
        self.checkpointed = (state.epoch, state.step)
        write_record(self.run_dir, {"status": Status.running.value, **self.position()})

    def position(self) -> dict:
        """Where a rerun resumes: the epochs and steps of the checkpoint on disk."""
        epoch, step = self.checkpointed or (0, 0)
        return {"epoch": epoch, "step": step}

    def kept_checkpoint(self) -> str:
        if self.checkpointed is None:
            return "no checkpoint had been written yet, so a rerun starts from the beginning"
        return f"the last good checkpoint ({describe_position(*self.checkpointed)}) was kept"


def run(cfg: DictConfig, run_dir: Path, record_files: Optional[dict[str, str]] = None) -> dict:
    """Train and evaluate the run that `cfg` describes in run_dir, resuming what is there.

    record_files (path in run_dir -> text) record how the run was launched (the CLI's
    .hydra/); they are written with config.yaml once the run is accepted, so that a
    refused launch leaves the record of the run as it was.
    """
    validate(cfg)
    with hold_run_dir(run_dir) as hold, StopRequest().catching_signals() as stop:
        checkpoint_path = run_dir / CHECKPOINT_FILE
        checkpoint = load_checkpoint(checkpoint_path) if checkpoint_path.exists() else None
        if checkpoint is None:
            _refuse_to_replace_a_record(run_dir, cfg)
        finished = is_complete_for(run_dir, cfg) if checkpoint is not None else None
        if finished is not None:
            return _already_complete(cfg, run_dir, finished, stop)
        session = _set_up(cfg, run_dir, checkpoint)
        try:
            _accept(session, hold, record_files or {})
            with SummaryWriter(str(run_dir / "tensorboard"), purge_step=session.state.epoch + 1) as writer:
                _train(session, writer, stop)
                started = time.perf_counter()
                results, active = _evaluate(session, writer)
            metrics = _write_metrics(session, results, time.perf_counter() - started)
        except RunInterrupted as error:
            unrecorded = _record_status(run_dir, Status.interrupted, reason=str(error), **session.position())
            raise RunInterrupted(error.signum, f"{error}{unrecorded}") from None
        except RunFailed as error:
            reason = f"{error}; {session.kept_checkpoint()}"
            unrecorded = _record_status(run_dir, Status.failed, reason=reason, failed_epoch=error.epoch,
                                        failed_step=error.step, **session.position())
            raise RunFailed(reason + unrecorded, error.epoch, error.step) from None
        except OSError as error:  # a full disk: every write names its file (lvae.run.checkpoint.atomic_write)
            reason = f"could not write {error.filename}: {error.strerror}" if error.filename else str(error)
            unrecorded = _record_status(run_dir, Status.failed, reason=reason, **session.position())
            raise RunWriteFailed(f"{reason}{unrecorded}; {session.kept_checkpoint()}") from None
        except Exception as error:
            reason = str(error) if isinstance(error, CheckpointError) else f"{type(error).__name__}: {error}"
            unrecorded = _record_status(run_dir, Status.failed, reason=reason, **session.position())
            if unrecorded:
                log.error("%s", unrecorded.strip(" ()"))
            raise
        if cfg.eval.analyze:
            stop.stage = "the analysis (metrics.json is complete; a rerun redoes the figures)"
            analyze([RunToAnalyze(run_name(run_dir, metrics), session.model, session.data, cfg.seed,
                                  session.state.history, active, run_dir)], run_dir, _analysis_settings(cfg))
        log.info("run dir: %s\n%s", run_dir, format_run(metrics))
        return metrics


def _refuse_to_replace_a_record(run_dir: Path, cfg: DictConfig) -> None:
    """run_dir has no checkpoint, but may hold the record of a run (config.yaml, metrics.json): a
    finished run whose checkpoint was deleted, a copied run folder. Training there replaces that
    record, so it must be the record of this very run (a completed one: with the same epochs and
    evaluation too); otherwise the launch is refused before anything is written."""
    stored_cfg, completed = read_config(run_dir), is_complete(read_record(run_dir))
    if stored_cfg is None:
        if completed:
            raise ConfigError(f"{run_dir} holds the metrics.json of a completed run but no config.yaml and no "
                              f"{CHECKPOINT_FILE}: refusing to replace that record. Move it away, or use another run "
                              "directory (other overrides or hydra.run.dir=...).")
        return
    differences = differences_from_stored(config_to_dict(stored_cfg), cfg, completed)
    if differences:
        what = "completed run" if completed else "run"
        raise ConfigError(f"{run_dir} holds the record of another {what} (its config.yaml{', metrics.json' * completed}) "
                          f"but no {CHECKPOINT_FILE}; refusing to replace it with a run whose config differs in: "
                          f"{'; '.join(differences)}. Use another run directory (other overrides or "
                          "hydra.run.dir=...), or the original config.")


def _already_complete(cfg: DictConfig, run_dir: Path, metrics: dict, stop: StopRequest) -> dict:
    if cfg.eval.analyze and not (run_dir / ANALYSIS_FILE).exists():  # a run stopped during its analysis
        stop.stage = "the analysis (metrics.json is complete; a rerun redoes the figures)"
        analyze_runs([run_dir], run_dir, _analysis_settings(cfg), resolve_device(cfg.device))
    log.info("run already complete in %s\n%s", run_dir, format_run(metrics))
    if not is_current_numerics(metrics):  # a stored result is never taken silently for this code's
        log.warning("these numbers were computed by another numerics version than the installed one (%s, "
                    "now %s; commit %s): move %s away and run the command again to recompute them.",
                    numerics_version_of(metrics), NUMERICS_VERSION,
                    metrics.get("git_commit", "unknown"), run_dir)
    return metrics


def _set_up(cfg: DictConfig, run_dir: Path, checkpoint: Optional[dict]) -> _Session:
    """Data, model, optimiser and training position (from the checkpoint, if any); writes nothing."""
    if 0 < cfg.train.epochs < cfg.warmup_epochs:
        log.warning("warmup_epochs=%d > train.epochs=%d: the KL weight ends at %.2f, so the bounds "
                    "are not those of the model's real objective.", cfg.warmup_epochs, cfg.train.epochs,
                    cfg.train.epochs / cfg.warmup_epochs)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    origin = provenance(device)
    data = load_dataset(cfg.data, device)
    data.test_subset(cfg.eval.test_subset)  # refuses a subset larger than the test set now, not after training
    model = build_model(model_spec(cfg), data.dim).to(device)
    tc = cfg.train
    optimizer = new_optimizer(model, tc)
    session = _Session(cfg, run_dir, device, origin, data, model, optimizer, TrainingState())
    if checkpoint is not None:
        session.state = _restore(checkpoint, cfg, run_dir / CHECKPOINT_FILE, model, optimizer)
        session.checkpointed = (session.state.epoch, session.state.step)
        log.info("resuming %s at %s", run_dir, describe_position(session.state.epoch, session.state.step))
    elif cfg.init_from:
        load_initial_weights(model, Path(cfg.init_from))
        log.info("starting from the final weights of %s", cfg.init_from)
    return session


def _accept(session: _Session, hold: RunDirHold, record_files: dict[str, str]) -> None:
    """The run is accepted: from here on it writes its directory, first its config and how it was
    launched, and its log file (lvae.run.checkpoint.RunLogFile) receives what was held."""
    hold.accepted = True
    open_run_logs()
    remove_stale_temporaries(session.run_dir)  # the lock is ours: no other write is in progress
    write_text(session.run_dir / CONFIG_FILE, OmegaConf.to_yaml(session.cfg, resolve=True))
    for name, text in record_files.items():
        path = session.run_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text)


def _train(session: _Session, writer: SummaryWriter, stop: StopRequest) -> None:
    """Train to the end, then write the final checkpoint; a signal waits for a checkpoint (see StopRequest)."""
    cfg = session.cfg
    with stop.deferring():
        if session.state.epoch < cfg.train.epochs:
            with tf32_matmuls(cfg.allow_tf32):  # TF32 for training when allowed, for this run only
                train_model(session.model, session.optimizer, session.data, cfg, writer, session.state,
                            session.save, stop)
        # The final checkpoint holds the evaluation's batch-norm statistics but the RNG state
        # of the end of training, so that evaluating it again repeats this evaluation exactly.
        rng_after_training = capture_rng_state()
        recompute_batchnorm_statistics(session.model, session.data.train_batches(cfg.train.batch_size))
        session.save(session.state, rng_after_training)
        stop.stage = "evaluation (training is complete and checkpointed; a rerun only evaluates)"
    if stop.signum is not None:  # came after the last step's check
        raise RunInterrupted(stop.signum, f"stopped by {_signal_name(stop.signum)} at the end of training; "
                             "the final checkpoint is written")


def _analysis_settings(cfg: DictConfig) -> AnalysisSettings:
    return AnalysisSettings(cfg.eval.test_subset, memory_budget_mb=cfg.eval.memory_budget_mb)


def _evaluate(session: _Session, writer: SummaryWriter) -> tuple[dict, ActiveUnits]:
    """The end-of-run numbers, also logged to TensorBoard, and the active units (computed once: the
    analysis reuses them)."""
    cfg, data, model, epochs = session.cfg, session.data, session.model, session.cfg.train.epochs
    results = evaluate_model(model, data, eval_settings(cfg))
    per_image = results.pop("per_image")
    write_per_image(session.run_dir, per_image)
    if data.bits_per_dim(0.0) is not None:  # dequantized (scale 256) or binary (scale 1) data
        for key in ("test_log_likelihood", "test_elbo", "train_bound"):
            results[key]["bits_per_dim"] = data.bits_per_dim(results[key]["mean"])
            results[key]["bits_per_dim_stderr"] = results[key]["stderr"] / (data.dim * math.log(2))
    for key in ("test_log_likelihood", "test_elbo", "train_bound"):
        writer.add_scalar(f"eval/{key}", results[key]["mean"], epochs)
    indices, images = data.test_sample(cfg.eval.test_subset)
    active = active_units(model, images, cfg.eval.memory_budget_mb, indices=indices, seed=cfg.seed)
    results["active_units"] = active.counts()
    with seeded_rng(cfg.seed, session.device):
        log_to_tensorboard(writer, model, images, active, epochs)
    writer.add_hparams(_hparams(cfg), {f"hparam/{key}": results[key]["mean"]
                                       for key in ("test_log_likelihood", "test_elbo", "train_bound")},
                       run_name=".")
    return results, active


def _write_metrics(session: _Session, results: dict, evaluate_seconds: float) -> dict:
    cfg, state = session.cfg, session.state
    metrics = {
        "status": Status.completed.value,
        **run_identity(cfg),
        "dequantized": session.data.dequantize,
        **{key: value for key, value in results.items() if key != "compiled"},
        # Epochs trained by a compiled step (each epoch's record also says it), and the evaluation.
        "compiled": {"train_epochs": sum(bool(record.get("compiled")) for record in state.history),
                     "evaluation": results["compiled"]},
        "wall_time_s": {"train": state.train_seconds, "evaluate": evaluate_seconds,
                        "total": state.train_seconds + evaluate_seconds},
        **session.origin,
        "history": state.history,
    }
    write_record(session.run_dir, metrics)
    return metrics


def _hparams(cfg: DictConfig) -> dict:
    """The choices a sweep varies, for TensorBoard's HParams view."""
    return {**run_identity(cfg), "lr": cfg.train.lr, "iw_samples": cfg.train.iw_samples}
