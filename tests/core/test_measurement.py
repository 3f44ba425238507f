"""Measured like the paper (issue 21): evaluation that no memory budget can change, test subsets that
are a fixed random sample, per-image estimates that say which images they are, the pixel scale."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lvae.core.evaluate import chunk_layout, evaluate_model, iw_log_likelihood, per_image
from lvae.core.models import build_model
from lvae.data import load_dataset
from lvae.data.errors import SubsetError
from lvae.data.images import ImageData, fixed_permutation
from lvae.run.config import ConfigError, compose_config, validate
from lvae.run.settings import eval_settings, model_spec
from lvae.run.summary import describe_test_images

D = 20
QUANTITIES = ("test_log_likelihood", "test_elbo", "train_bound")


def _data(n_train: int = 40, n_test: int = 50) -> ImageData:
    generator = torch.Generator().manual_seed(1)
    train, test = torch.rand(n_train, D, generator=generator), torch.rand(n_test, D, generator=generator)
    data = ImageData(train, torch.zeros(n_train, dtype=torch.long), test, torch.zeros(n_test, dtype=torch.long),
                     binarize=True)
    data.test = data.draw(data.test, torch.Generator().manual_seed(0))
    return data


def _cfg(name: str, *overrides: str):
    return compose_config(f"model={name}", "layers=3", "model.hidden_sizes=[64,48,32]", "model.latent_sizes=[8,6,4]",
                          "eval.iw_samples=600", "eval.test_subset=40", "eval.train_subset=30", "train.iw_samples=3",
                          "train.mc_samples=2", "train.progress=false", "eval.compile=false", *overrides)


def _with_budget(cfg, memory_budget_mb: float):
    """cfg with any budget, also a fraction of a megabyte (the schema takes whole ones), to force small chunks."""
    return replace(cfg, eval=replace(cfg.eval, memory_budget_mb=memory_budget_mb))


@pytest.mark.parametrize("name", ["vae", "lvae"])
def test_evaluation_is_the_same_at_every_memory_budget(name):
    """One model, one seed, one K: a tiny budget (chunks of 16 images in every pass, each image's 600
    samples split over 6 chunks), a middle one (300 samples a chunk, the 1-sample pass in one chunk) and
    one that holds everything give bitwise the same numbers (on the CPU)."""
    torch.manual_seed(0)
    data = _data()
    model = build_model(model_spec(_cfg(name)), D).eval()
    budgets = (0.01, 40, 512)
    layouts = [chunk_layout(model, 40, 600, b) for b in budgets] + [chunk_layout(model, 40, 1, b) for b in budgets]
    (tiny, middle, large), (tiny_1, middle_1, _) = layouts[:3], layouts[3:]
    assert tiny == (16, 100) and tiny_1 == (16, 1), "the tiny budget: the smallest chunks"
    assert 100 < middle[1] < 600 and middle_1 == (48, 1), "the middle one: other splits"
    assert large == (48, 600), "the large one: everything at once"
    results = []
    for budget in budgets:
        torch.manual_seed(123 + len(results))  # the global RNG state differs too: evaluation must not use it
        results.append(evaluate_model(model, data, eval_settings(_with_budget(_cfg(name), budget))))
    first = results[0]
    for other in results[1:]:
        for quantity in QUANTITIES:
            assert other[quantity]["mean"] == first[quantity]["mean"], quantity
            assert other[quantity]["stderr"] == first[quantity]["stderr"], quantity
        assert other["kl_per_layer"] == first["kl_per_layer"]
        for quantity, values in first["per_image"].items():
            assert torch.equal(other["per_image"][quantity], values), quantity


def test_an_images_estimate_does_not_depend_on_the_images_beside_it():
    """Image 7 scored alone, after 20 others, or among another set (same index): bitwise the same."""
    torch.manual_seed(0)
    data = _data()
    model = build_model(model_spec(_cfg("lvae")), D).eval()
    images, indices = data.test[:21], torch.arange(21)
    together = iw_log_likelihood(model, images, 50, 512, indices=indices, seed=3)
    alone = iw_log_likelihood(model, images[7:8], 50, 512, indices=indices[7:8], seed=3)
    assert torch.equal(alone, together[7:8])
    other_seed = iw_log_likelihood(model, images[7:8], 50, 512, indices=indices[7:8], seed=4)
    assert not torch.equal(other_seed, alone), "the seed chooses the noise"
    elbo_alone = per_image(model, images[7:8], 1, 512, lambda t: t.log_px, indices=indices[7:8], seed=3)
    elbo_together = per_image(model, images, 1, 512, lambda t: t.log_px, indices=indices, seed=3)
    assert torch.equal(elbo_alone, elbo_together[:, 7:8])


def test_subsets_are_the_first_n_of_one_fixed_random_order():
    """The same images for every call (no seed of a run enters), a larger subset holds a smaller one, and
    the sample is spread over the whole set (MNIST's first images are the cleaner ones)."""
    order = fixed_permutation(10_000)
    assert torch.equal(order, fixed_permutation(10_000))
    assert sorted(order.tolist()) == list(range(10_000))
    data = _data(n_test=10_000)
    small, large = data.test_subset(300), data.test_subset(1000)
    assert torch.equal(large[:300], small) and torch.equal(small, order[:300])
    assert not torch.equal(small.sort().values, torch.arange(300)), "not the first 300"
    # a uniform sample of 300 of 0..9999: mean 4999.5, standard error 2887 / sqrt(300) = 167
    assert abs(small.double().mean().item() - 4999.5) < 4 * 167
    assert (small >= 5000).sum().item() > 100, "both halves of the test set"
    assert torch.equal(data.test_subset(None), order)
    assert torch.equal(data.train_subset_indices(10), fixed_permutation(40)[:10])
    assert len(data.train_subset_indices(10_000)) == 40, "the training-set bound takes all when asked for more"


@pytest.mark.parametrize("n", [0, -3, 51])
def test_a_test_subset_the_test_set_cannot_give_is_refused(n):
    with pytest.raises(SubsetError, match=rf"eval.test_subset={n} .* the test set has 50 images"):
        _data().test_subset(n)


def test_per_image_estimates_name_their_images_and_a_larger_subset_extends_a_smaller_one():
    """per_image.pt's test_indices are the sample's images; scoring 20 images gives the 8 images of an
    8-image evaluation the very same values (noise chosen by the image, not by its position)."""
    torch.manual_seed(0)
    data = _data()
    model = build_model(model_spec(_cfg("lvae")), D).eval()
    few, more = (evaluate_model(model, data, eval_settings(_cfg("lvae", f"eval.test_subset={n}",
                                                                "eval.iw_samples=20"))) for n in (8, 20))
    assert torch.equal(few["per_image"]["test_indices"], data.test_subset(8))
    assert torch.equal(more["per_image"]["test_indices"][:8], few["per_image"]["test_indices"])
    for quantity in ("test_log_likelihood", "test_elbo"):
        assert torch.equal(more["per_image"][quantity][:8], few["per_image"][quantity])
    assert few["test_log_likelihood"]["test_set_images"] == 50
    assert describe_test_images(few["test_log_likelihood"]) == "8 of 50 test images (random sample)"
    assert describe_test_images({"images": 10_000, "test_set_images": 10_000}) == "all 10,000 test images"
    assert describe_test_images({"images": 300}) == "the first 300 test images (file order)"


def test_intensity_scale_divides_the_grey_levels(synthetic_mnist):
    """pixel / 255 by default, pixel / 256 with data.intensity_scale=256 (the authors' data), for the
    training images and the probabilities the test set is binarized with."""
    def load(*overrides):
        cfg = compose_config(f"data.root={synthetic_mnist}", "data.binarize=false", "likelihood=gaussian",
                             *overrides)
        validate(cfg)
        return load_dataset(cfg.data, torch.device("cpu"))

    default, authors = load(), load("data.intensity_scale=256")
    assert default.train.max() > 0.99
    torch.testing.assert_close(authors.train * 256, default.train * 255)
    torch.testing.assert_close(authors.test * 256, default.test * 255)


@pytest.mark.parametrize("overrides, message", [
    (["data.intensity_scale=300"], "data.intensity_scale must be 255 or 256"),
    (["data=norb", "likelihood=gaussian", "data.intensity_scale=256"], "data.intensity_scale=256 changes nothing"),
])
def test_an_intensity_scale_that_does_not_apply_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(*overrides))
