"""lvae: a reproduction of Ladder Variational Autoencoders (Sønderby et al., NIPS 2016).

The Python face, for notebooks and scripts (no Hydra to call; a run's .config is a plain dataclass):

    run = lvae.load_run("outputs/runs/model=lvae,layers=5")  # .model (eval mode), .config, .data, .metrics
    log_px = lvae.iw_log_likelihood(run.model, run.data.test[:100], k=5000)  # (100,) float64, nats
    stored = torch.load("outputs/runs/model=lvae,layers=5/per_image.pt")  # the run's values and test indices
    i = stored["test_indices"][:16]  # the run's value of these 16 images again:
    lvae.iw_log_likelihood(run.model, run.data.test[i], k=run.config.eval.iw_samples, indices=i, seed=run.config.seed)
    model = lvae.new_model("lvae", layers=3, batch_norm=False)  # untrained, the paper's sizes
"""

from dataclasses import replace
from importlib.metadata import version

import torch

from lvae.core import evaluate
from lvae.core.models import MODELS, BottomUpVAE, HierarchicalVAE, LadderVAE, ModelSpec, build_model
from lvae.run.stored import TrainedRun, load_run

__version__ = version("lvae")
__all__ = ["BottomUpVAE", "HierarchicalVAE", "LadderVAE", "TrainedRun", "iw_log_likelihood", "load_run",
           "new_model"]

def iw_log_likelihood(model: HierarchicalVAE, x: torch.Tensor, k: int = 5000,
                      memory_budget_mb: float = evaluate.DEFAULT_MEMORY_BUDGET_MB, *,
                      indices: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """log p(x) of each image of x (N, D), estimated with k importance samples: (N,) float64, nats
    (docs/method.md, eq. 4). Work goes in chunks of about memory_budget_mb of activations; pass a
    model in eval mode (as load_run returns it), so that batch norm uses its stored statistics.

    Each image's noise is drawn from (seed, its index): indices (N,) are the images' indices in the whole
    test set (default 0..N-1, their rows in x). With a run's stored `test_indices` (per_image.pt), its seed
    (run.config.seed) and k = run.config.eval.iw_samples, this gives the run's stored per-image values, to float32
    rounding (up to a few 1e-3 nats an image, about 1e-4 in a mean of many: the run evaluated with batch norm
    folded into its linear maps, compiled, and the thread count changes the order of the sums)."""
    return evaluate.iw_log_likelihood(model, x, k, memory_budget_mb, indices=indices, seed=seed)


def new_model(name: str = "lvae", data_dim: int = 784, layers: int | None = None, **fields) -> HierarchicalVAE:
    """An untrained model: `name` "lvae" or "vae", and any field of ModelSpec (batch_norm, likelihood,
    hidden_sizes, latent_sizes, mlp_depth, init, ...; lvae/core/models.py). What is not given is the paper's
    (the run config's defaults too). `layers` keeps the first that many of the sizes, as a run's `layers` does."""
    if name not in MODELS:
        raise ValueError(f"name={name!r} is not a model: one of {', '.join(MODELS)}")
    spec = ModelSpec(name, **{key: tuple(value) if isinstance(value, list) else value for key, value in fields.items()})
    if layers is not None:
        spec = replace(spec, latent_sizes=spec.latent_sizes[:layers], hidden_sizes=spec.hidden_sizes[:layers])
    return build_model(spec, data_dim)
