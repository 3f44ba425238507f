"""The numbers of one seeded tiny run, pinned to the numerics version that computes them.

A change to what a run computes (a density, a model, a bound, the evaluation, the data
pipeline, the optimiser, a default) changes these numbers. That is allowed on purpose
only: bump NUMERICS_VERSION in lvae/run/provenance.py with the reason and add the new
numbers here under the new version. Stored results of another version are then marked
in reports and by `train.py` instead of being taken for this code's.
"""

import pytest
import torch

from lvae.run.config import compose_config
from lvae.run.provenance import NUMERICS_VERSION
from lvae.run.train import run

# The run: a 3-layer LVAE with batch norm and warm-up, 2 epochs on 96 synthetic images, K=16 on 32.
OVERRIDES = ("model=lvae", "layers=3", "model.hidden_sizes=[64,32,16]", "model.latent_sizes=[8,4,2]",
             "train.epochs=2", "warmup_epochs=1", "train.batch_size=32", "eval.iw_samples=16",
             "eval.test_subset=null", "eval.train_subset=64", "seed=3", "train.compile=false", "eval.compile=false",
             "eval.analyze=false", "device=cpu", "train.progress=false")

# NUMERICS_VERSION -> what the run above computes on the CPU.
GOLDEN = {
    2: {"test_log_likelihood": -465.388212297035, "test_elbo": -483.46788215637207,
        "train_bound": -483.7039394378662,
        "kl_per_layer": [1.2172694839537144, 0.46836874075233936, 0.3075989745557308]},
}


def pinned_numbers(metrics: dict) -> dict:
    return {"test_log_likelihood": metrics["test_log_likelihood"]["mean"], "test_elbo": metrics["test_elbo"]["mean"],
            "train_bound": metrics["train_bound"]["mean"], "kl_per_layer": metrics["kl_per_layer"]}


@pytest.fixture
def one_thread():
    """Sums over threads add in another order: the pinned numbers are those of one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_numbers_are_those_of_the_numerics_version(synthetic_mnist, tmp_path, one_thread):
    assert NUMERICS_VERSION in GOLDEN, ("NUMERICS_VERSION has no pinned numbers: add this test's numbers "
                                        "(printed when it fails) under the new version")
    numbers = pinned_numbers(run(compose_config(f"data.root={synthetic_mnist}", *OVERRIDES), tmp_path / "run"))
    expected = GOLDEN[NUMERICS_VERSION]
    # Six significant digits: another CPU's vector units may round the last ones differently; any change
    # to what a run computes moves these numbers far more.
    assert numbers == {key: pytest.approx(value, rel=1e-5) for key, value in expected.items()}, (
        f"the numbers changed: {numbers}. If on purpose, bump NUMERICS_VERSION (lvae/run/provenance.py) with the "
        "reason, and pin these numbers under it.")
