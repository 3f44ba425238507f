"""One run: train a model, then evaluate it, in a run directory that survives crashes.

The run directory is Hydra's output dir, or any folder given to `run`; lvae/run/record.py lists its files.

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
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from lvae.core.analysis import ActiveUnits, active_units, seeded_rng
from lvae.core.evaluate import evaluate_model, recompute_batchnorm_statistics, tf32_matmuls
from lvae.core.models import HierarchicalVAE, build_model, has_separate_head_maps
from lvae.data import load_dataset
from lvae.data.images import ImageData
from lvae.run.analysis import AnalysisSettings, RunToAnalyze, analyze, analyze_runs, run_name
from lvae.run.checkpoint import (CheckpointError, capture_rng_state, load_checkpoint, restore_rng_state,
                                 save_checkpoint, state_dict_mismatch)
from lvae.run.config import Config, ConfigError, config_to_dict, config_yaml, resolve_device, run_differences, validate
from lvae.run.evaluation_progress import EVALUATION_PROGRESS_FILE, SavedHalvesPass
from lvae.run.figures import log_to_tensorboard
from lvae.run.finetune import load_initial_weights
from lvae.run.folder import RunDirHold, hold_run_dir, naming_failures, remove_stale_temporaries, write_text
from lvae.run.logs import open_run_logs
from lvae.run.loop import TrainingState, new_optimizer, seed_everything, train_model
from lvae.run.outcomes import RunFailed, RunInterrupted, RunWriteFailed, StopRequest, describe_position, signal_name
from lvae.run.provenance import NUMERICS_VERSION, is_current_numerics, numerics_version_of, provenance
from lvae.run.record import (ANALYSIS_FILE, CHECKPOINT_FILE, CONFIG_FILE, TENSORBOARD_DIR, Status,
                             differences_from_stored, is_complete, is_complete_for, read_config, read_record,
                             run_identity, write_per_image, write_record)
from lvae.run.settings import eval_settings, model_spec
from lvae.run.summary import format_run

log = logging.getLogger(__name__)


def _restore(checkpoint: dict, cfg: Config, path: Path, model: nn.Module,
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
                              f"this one is {NUMERICS_VERSION}, lvae/run/provenance.py says what changed); resuming it "
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

    cfg: Config
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


def run(cfg: Config, run_dir: Path, record_files: Optional[dict[str, str]] = None) -> dict:
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
            # A write that fails without naming its file in here is TensorBoard's (every other names its own).
            with naming_failures(run_dir / TENSORBOARD_DIR), quiet_writer_thread(), \
                    SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=session.state.epoch + 1) as writer:
                _train(session, writer, stop)
                started = time.perf_counter()
                results, active = _evaluate(session, writer)
            metrics = _write_metrics(session, results, time.perf_counter() - started)
            (run_dir / EVALUATION_PROGRESS_FILE).unlink(missing_ok=True)  # metrics.json holds what it saved
        except RunInterrupted as error:
            unrecorded = _record_status(run_dir, Status.interrupted, reason=str(error), **session.position())
            raise RunInterrupted(error.signum, f"{error}{unrecorded}") from None
        except RunFailed as error:
            reason = f"{error}; {session.kept_checkpoint()}"
            unrecorded = _record_status(run_dir, Status.failed, reason=reason, failed_epoch=error.epoch,
                                        failed_step=error.step, **session.position())
            raise RunFailed(reason + unrecorded, error.epoch, error.step) from None
        except OSError as error:  # a full disk: every write names its file (lvae.run.folder.atomic_write)
            raise _write_failed(session, error) from None
        except Exception as error:
            reason = str(error) if isinstance(error, CheckpointError) else f"{type(error).__name__}: {error}"
            unrecorded = _record_status(run_dir, Status.failed, reason=reason, **session.position())
            if unrecorded:
                log.error("%s", unrecorded.strip(" ()"))
            raise
        if cfg.eval.analyze:
            stop.stage = "the analysis (metrics.json is complete; a rerun redoes the figures)"
            try:
                analyze([RunToAnalyze(run_name(run_dir, metrics), session.model, session.data, cfg.seed,
                                      session.state.history, active, run_dir)], run_dir, _analysis_settings(cfg))
            except OSError as error:  # the run did not end as it must: its record must not say "completed"
                raise _write_failed(session, error) from None
        log.info("run dir: %s\n%s", run_dir, format_run(metrics))
        return metrics


@contextlib.contextmanager
def quiet_writer_thread() -> Iterator[None]:
    """TensorBoard's writer thread re-raises a failed write (a full disk) in that thread, which prints a
    traceback; the same error reaches the run at its next write to TensorBoard (or when the writer closes) and
    ends it with one message, so the thread's own is not printed."""
    previous = threading.excepthook

    def hook(args) -> None:
        if not (type(args.thread).__name__ == "_AsyncWriterThread" and issubclass(args.exc_type, OSError)):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def _write_failed(session: _Session, error: OSError) -> RunWriteFailed:
    """A write into the run folder failed (a full disk): metrics.json says `failed` with the file (when it can
    still be written; else the message says so); a rerun resumes from the checkpoint on disk (after the final
    checkpoint, such as during the analysis: it evaluates again, with identical numbers)."""
    reason = f"could not write {error.filename}: {error.strerror}" if error.filename else str(error)
    unrecorded = _record_status(session.run_dir, Status.failed, reason=reason, **session.position())
    return RunWriteFailed(f"{reason}{unrecorded}; {session.kept_checkpoint()}")


def _refuse_to_replace_a_record(run_dir: Path, cfg: Config) -> None:
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
    differences = differences_from_stored(stored_cfg, cfg, completed)
    if differences:
        what = "completed run" if completed else "run"
        raise ConfigError(f"{run_dir} holds the record of another {what} (its config.yaml{', metrics.json' * completed}) "
                          f"but no {CHECKPOINT_FILE}; refusing to replace it with a run whose config differs in: "
                          f"{'; '.join(differences)}. Use another run directory (other overrides or "
                          "hydra.run.dir=...), or the original config.")


def _already_complete(cfg: Config, run_dir: Path, metrics: dict, stop: StopRequest) -> dict:
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


def _set_up(cfg: Config, run_dir: Path, checkpoint: Optional[dict]) -> _Session:
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
    launched, and its log file (lvae.run.logs.RunLogFile) receives what was held."""
    hold.accepted = True
    open_run_logs()
    remove_stale_temporaries(session.run_dir)  # the lock is ours: no other write is in progress
    write_text(session.run_dir / CONFIG_FILE, config_yaml(session.cfg))
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
        stop.stage = ("evaluation (training is complete and checkpointed; a rerun only evaluates, from the test "
                      "images the K-sample pass had not saved)")
    if stop.signum is not None:  # came after the last step's check
        raise RunInterrupted(stop.signum, f"stopped by {signal_name(stop.signum)} at the end of training; "
                             "the final checkpoint is written")


def _analysis_settings(cfg: Config) -> AnalysisSettings:
    return AnalysisSettings(cfg.eval.test_subset, memory_budget_mb=cfg.eval.memory_budget_mb)


def _evaluate(session: _Session, writer: SummaryWriter) -> tuple[dict, ActiveUnits]:
    """The end-of-run numbers, also logged to TensorBoard, and the active units (computed once: the
    analysis reuses them)."""
    cfg, data, model, epochs = session.cfg, session.data, session.model, session.cfg.train.epochs
    settings = eval_settings(cfg)
    results = evaluate_model(model, data, settings, SavedHalvesPass(session.run_dir, settings))
    per_image = results.pop("per_image")
    write_per_image(session.run_dir, per_image)
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


def _hparams(cfg: Config) -> dict:
    """The choices a sweep varies, for TensorBoard's HParams view."""
    return {**run_identity(cfg), "lr": cfg.train.lr, "iw_samples": cfg.train.iw_samples}
