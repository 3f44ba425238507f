"""The overrides of a run small enough for a test: seconds on a CPU, on the synthetic MNIST of
tests/helpers/datasets.py.

Later overrides win (`tiny_run("train.epochs=2")`), so a test names only what it is about.
"""

from __future__ import annotations

TINY_MODEL = ("model=lvae", "layers=2", "model.hidden_sizes=[32,16]", "model.latent_sizes=[4,2]")
# For presets that fix layers=5 (fig3's deepest cells, table1, vae_vs_lvae).
TINY_FIVE_LAYERS = ("model.hidden_sizes=[32,16,8,8,8]", "model.latent_sizes=[4,2,2,2,2]")
TINY_RUN = (*TINY_MODEL, "train.batch_size=16", "train.epochs=1", "eval.iw_samples=8", "eval.train_subset=32",
            "eval.analyze=false", "device=cpu", "train.progress=false")


def tiny_run(*overrides: str) -> tuple[str, ...]:
    """TINY_RUN with `overrides` applied after it."""
    return (*TINY_RUN, *overrides)
