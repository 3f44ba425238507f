"""How a run ends besides completing, and the signals that end it: RunFailed (diverged), RunWriteFailed
(a full disk), RunInterrupted (SIGTERM/SIGINT), and StopRequest, which defers a signal to the next step."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
from typing import Optional

log = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """Training produced a non-finite loss or gradient, or diverged (see DIVERGED_NATS_PER_PIXEL), in
    epoch `epoch` (counted from 1) at step `step` (counted from 1, from the start of training)."""

    def __init__(self, message: str, epoch: int, step: int):
        super().__init__(message)
        self.epoch, self.step = epoch, step

    def __reduce__(self):  # a sweep's launcher (joblib, submitit) pickles a job's error back to the parent
        return type(self), (str(self), self.epoch, self.step)


class RunWriteFailed(OSError):
    """A write into the run directory failed (a full disk); the message names the file."""


class RunInterrupted(RuntimeError):
    """A signal stopped the run (during training: after a checkpoint was written)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    def __reduce__(self):  # as RunFailed's
        return type(self), (self.signum, str(self))


def signal_name(signum: int) -> str:
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
            raise RunInterrupted(signum, f"stopped by {signal_name(signum)} during {self.stage}")
        if first:  # said at once: the step may take long (the first one compiles when torch.compile is on)
            log.warning("%s received: stopping after the current training step, with a checkpoint (a step "
                        "that torch.compile is compiling finishes compiling first, which can take a minute)",
                        signal_name(signum))


