"""The training loop: epochs of Adam steps on the training bound, warm-up, divergence checks, training-curve
points and checkpoints every train.checkpoint_every epochs (docs/method.md). lvae/run/train.py runs it."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from lvae.core.analysis import ACTIVITY_THRESHOLD
from lvae.core.compiling import CPU_MIN_TRAIN_STEPS, compiled, use_compile
from lvae.core.evaluate import curve_interval, curve_point
from lvae.core.models import HierarchicalVAE
from lvae.core.objectives import elbo, kl_per_layer, kl_warmup_weight, training_bound
from lvae.data.images import ImageData
from lvae.run.config import Config, TrainConfig
from lvae.run.finetune import set_learning_rate
from lvae.run.outcomes import (DIVERGED_NATS_PER_PIXEL, RunFailed, RunInterrupted, StopRequest, describe_position,
                               divergence_floor, signal_name)
from lvae.run.settings import curve_settings


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def new_optimizer(model: nn.Module, tc: TrainConfig) -> torch.optim.Adam:
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


def train_model(model: HierarchicalVAE, optimizer: torch.optim.Optimizer, data: ImageData, cfg: Config,
                writer: SummaryWriter, state: Optional[TrainingState] = None,
                save: Callable[[TrainingState], None] = lambda state: None,
                stop: Optional[StopRequest] = None) -> TrainingState:
    """Train from `state` (default: the start) to cfg.train.epochs, calling save(state) every
    checkpoint_every epochs and before stopping on `stop`. `state` is updated in place.

    Running sums and the non-finite check stay on the device and are read once
    per epoch, so no step waits for the host. The forward half of each step is compiled
    when train.compile says so (lvae/core/compiling.py); each epoch's record says whether it was.
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
            if tc.grad_clip_value is not None:  # the authors' code also clips each entry (docs/estimators.md, "Where we differ")
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
                raise RunInterrupted(stop.signum, f"stopped by {signal_name(stop.signum)} at "
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


def _raise_if_below(bound_mean: float, floor: float, cfg: Config, epoch: int, step: int) -> None:
    if bound_mean < floor:
        raise RunFailed(f"the run diverged in epoch {epoch + 1} (by step {step}): its mean training bound, "
                        f"{bound_mean:.4g} nats per image, is below {floor:.0f}, {DIVERGED_NATS_PER_PIXEL:g} nats "
                        "per pixel worse than a model that learned nothing (lvae/run/train.py, divergence_floor); "
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


