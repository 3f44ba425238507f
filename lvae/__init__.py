"""lvae: a reproduction of Ladder Variational Autoencoders (Sønderby et al., NIPS 2016).

The Python face, for notebooks and scripts (no Hydra needed):

    run = lvae.load_run("outputs/runs/model=lvae,layers=5")  # .model (eval mode), .config, .data, .metrics
    log_px = lvae.iw_log_likelihood(run.model, run.data.test[:100], k=5000)  # (100,) float64, nats
    stored = torch.load("outputs/runs/model=lvae,layers=5/per_image.pt")  # the run's values and test indices
    i = stored["test_indices"][:16]  # the run's value of these 16 images again:
    lvae.iw_log_likelihood(run.model, run.data.test[i], k=run.config.eval.iw_samples, indices=i, seed=run.config.seed)
    model = lvae.new_model("lvae", layers=3, batch_norm=False)  # untrained, the paper's sizes
"""

from importlib.metadata import version

import torch
from omegaconf import OmegaConf

from lvae.core import evaluate
from lvae.run.config import Config, ModelConfig
from lvae.core.models import BottomUpVAE, HierarchicalVAE, LadderVAE, build_model
from lvae.run.settings import model_spec
from lvae.run.stored import TrainedRun, load_run

__version__ = version("lvae")
__all__ = ["BottomUpVAE", "HierarchicalVAE", "LadderVAE", "TrainedRun", "iw_log_likelihood", "load_run",
           "new_model"]

# Keys of the run config that shape a model and sit at its top level; every other one is a model.* key.
TOP_LEVEL_MODEL_KEYS = ("layers", "batch_norm", "likelihood")


def iw_log_likelihood(model: HierarchicalVAE, x: torch.Tensor, k: int = 5000,
                      memory_budget_mb: float = evaluate.DEFAULT_MEMORY_BUDGET_MB, *,
                      indices: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """log p(x) of each image of x (N, D), estimated with k importance samples: (N,) float64, nats
    (docs/method.md, eq. 4). Work goes in chunks of about memory_budget_mb of activations; pass a
    model in eval mode (as load_run returns it), so that batch norm uses its stored statistics.

    Each image's noise is drawn from (seed, its index): indices (N,) are the images' indices in the whole
    test set (default 0..N-1, their rows in x). With a run's stored `test_indices` (per_image.pt), its seed
    (run.config.seed) and k = run.config.eval.iw_samples, this gives the run's stored per-image values."""
    return evaluate.iw_log_likelihood(model, x, k, memory_budget_mb, indices=indices, seed=seed)


def new_model(name: str = "lvae", data_dim: int = 784, **settings) -> HierarchicalVAE:
    """An untrained model from keyword arguments: `name` "lvae" or "vae", and any of layers, batch_norm,
    likelihood and the model.* keys of the run config (hidden_sizes, latent_sizes, mlp_depth, init, ...).
    What is not given has the run config's default (lvae/run/config.py), as `python train.py` would build it."""
    top_level = {key: settings.pop(key) for key in TOP_LEVEL_MODEL_KEYS if key in settings}
    cfg = OmegaConf.structured(Config(model=ModelConfig(name=name, **settings), **top_level))
    return build_model(model_spec(cfg), data_dim)
