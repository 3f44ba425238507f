"""One run: train a model, then evaluate it and write the run directory.

Run directory (Hydra's output dir, or any folder given to `run`):
    config.yaml      the fully resolved config
    checkpoint.pt    model + optimiser state dicts (torch.load(..., weights_only=True))
    metrics.json     end-of-run numbers, per-epoch history, provenance
    tensorboard/     scalars per epoch
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from .checkpoint import save_checkpoint, write_json
from .config import ConfigError, validate
from .data import ImageData, load_dataset
from .evaluate import evaluate_model, recompute_batchnorm_statistics
from .models import HierarchicalVAE, build_model
from .objectives import elbo, kl_per_layer, kl_warmup_weight, training_bound
from .provenance import provenance
from .report import format_run

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but torch sees no CUDA device: use device=auto or device=cpu.")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    return max(1, n_images // batch_size)  # matches ImageData.train_batches


def train_model(model: HierarchicalVAE, optimizer: torch.optim.Optimizer, data: ImageData,
                cfg: DictConfig, writer: SummaryWriter) -> list[dict]:
    """The training loop; returns one record per epoch.

    Running sums stay on the device and are read once per epoch, so no step
    waits for the host.
    """
    tc = cfg.train
    n_steps = steps_per_epoch(len(data.train), tc.batch_size)
    step, history = 0, []
    epochs = tqdm(range(tc.epochs), desc=f"train {cfg.model.name} L={cfg.layers}", unit="epoch",
                  disable=not tc.progress)
    for epoch in epochs:
        model.train()
        start = time.perf_counter()
        sums = torch.zeros(2 + model.num_layers, device=data.train.device)  # bound, ELBO, KL per layer
        seen = 0
        for x in data.train_batches(tc.batch_size):
            kl_weight = kl_warmup_weight(step, n_steps, cfg.warmup_epochs)
            trace = model(x, tc.mc_samples * tc.iw_samples)
            bound = training_bound(trace, tc.iw_samples, kl_weight)
            optimizer.zero_grad(set_to_none=True)
            (-bound.mean()).backward()
            nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip_norm)
            optimizer.step()
            with torch.no_grad():
                sums += torch.cat([bound.sum().view(1), elbo(trace).mean(0).sum().view(1),
                                   kl_per_layer(trace).mean(1).sum(-1)])
            seen += len(x)
            step += 1
        bound_mean, elbo_mean, *kl = (sums / seen).tolist()  # the one host sync of the epoch
        record = {"epoch": epoch + 1, "train_objective": bound_mean, "train_elbo": elbo_mean,
                  "kl_weight": kl_weight, "kl_per_layer": kl, "seconds": time.perf_counter() - start}
        history.append(record)
        writer.add_scalar("train/loss", -bound_mean, epoch + 1)
        writer.add_scalar("train/objective", bound_mean, epoch + 1)
        writer.add_scalar("train/elbo", elbo_mean, epoch + 1)
        writer.add_scalar("train/kl_weight", kl_weight, epoch + 1)
        for i, value in enumerate(kl, start=1):
            writer.add_scalar(f"kl_per_layer/z{i}", value, epoch + 1)
        epochs.set_postfix(bound=f"{bound_mean:.2f}", kl_weight=f"{kl_weight:.2f}")
    return history


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train and evaluate the run that `cfg` describes, writing everything into run_dir."""
    validate(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if 0 < cfg.train.epochs < cfg.warmup_epochs:
        log.warning("warmup_epochs=%d > train.epochs=%d: the KL weight ends at %.2f, so the bounds "
                    "are not those of the model's real objective.", cfg.warmup_epochs, cfg.train.epochs,
                    cfg.train.epochs / cfg.warmup_epochs)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    started = time.perf_counter()
    data = load_dataset(cfg.data, device)
    model = build_model(cfg, data.dim).to(device)
    tc = cfg.train
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=tuple(tc.adam_betas), eps=tc.adam_eps)

    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        history = train_model(model, optimizer, data, cfg, writer)
        train_seconds = time.perf_counter() - started
        recompute_batchnorm_statistics(model, data.train_batches(tc.batch_size))
        save_checkpoint(run_dir / "checkpoint.pt", model=model.state_dict(), optimizer=optimizer.state_dict(),
                        epoch=tc.epochs, config=OmegaConf.to_container(cfg, resolve=True))
        results = evaluate_model(model, data, cfg)
        for key in ("test_log_likelihood", "test_elbo", "train_bound"):
            writer.add_scalar(f"eval/{key}", results[key]["mean"], tc.epochs)

    metrics = {
        "status": "completed",
        "model": cfg.model.name,
        "layers": cfg.layers,
        "batch_norm": cfg.batch_norm,
        "warmup_epochs": cfg.warmup_epochs,
        "likelihood": cfg.likelihood,
        "dataset": cfg.data.name,
        "epochs": tc.epochs,
        "seed": cfg.seed,
        **results,
        "wall_time_s": {"train": train_seconds, "total": time.perf_counter() - started},
        **provenance(device),
        "history": history,
    }
    write_json(run_dir / "metrics.json", metrics)
    log.info("run dir: %s\n%s", run_dir, format_run(metrics))
    return metrics
