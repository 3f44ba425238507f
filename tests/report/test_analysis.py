"""Looking inside the hierarchy: active units, PCA, and the analysis command on a tiny run."""

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from lvae.cli.analyze import main
from lvae.core.analysis import active_units, pca_2d, posterior_samples
from lvae.core.models import build_model
from lvae.data.images import ImageData
from lvae.run.analysis import AnalysisSettings, RunToAnalyze, analyze
from lvae.run.config import compose_config, config_yaml
from lvae.run.figures import log_to_tensorboard
from lvae.run.settings import model_spec
from lvae.run.train import run

from ..helpers.linear_gaussian import set_head

D = 20
LATENT_SIZES = [4, 3]
INACTIVE = [{1, 3}, {0}]  # per layer, the units whose posterior is their prior
INFORMATIVE_VARIANCE = 0.05
NO_INFORMATION_VARIANCE = 1e6  # an LVAE upward term this wide leaves q(z_1|.) = p(z_1|z_2) in effect


def set_units(head, inactive: set[int], inactive_variance: float, generator: torch.Generator) -> None:
    """Inactive units: mean 0, the given constant variance; the others: a strong random mean, small variance."""
    active = torch.tensor([u not in inactive for u in range(head.out_features)])
    weight = 10.0 * torch.randn(head.out_features, head.linear.in_features, generator=generator) * active[:, None]
    variance = torch.where(active, INFORMATIVE_VARIANCE, inactive_variance)
    set_head(head, weight, torch.zeros(len(active)), variance)


def model_with_inactive_units(name: str):
    """A 2-layer model in which exactly the units of INACTIVE have q = p (up to 1e-6 for the LVAE's z_1)."""
    cfg = compose_config(f"model={name}", "layers=2", "batch_norm=false", "model.hidden_sizes=[16,12]",
                         f"model.latent_sizes=[{LATENT_SIZES[0]},{LATENT_SIZES[1]}]")
    model = build_model(model_spec(cfg), D).eval()
    generator = torch.Generator().manual_seed(0)
    # p(z_1|z_2) is N(0, 1) for the inactive units of z_1; p(z_2) is N(0, I).
    set_units(model.generative.priors[0].head, INACTIVE[0], 1.0, generator)
    if name == "vae":  # q(z_1|x), q(z_2|z_1): equal to the prior for the inactive units
        heads, inactive_variances = [encoder.head for encoder in model.encoders], [1.0, 1.0]
    else:  # z_1: precision-weighted with a flat upward term; z_2: the upward term is q
        heads, inactive_variances = model.upward_heads, [NO_INFORMATION_VARIANCE, 1.0]
    for head, inactive, variance in zip(heads, INACTIVE, inactive_variances):
        set_units(head, inactive, variance, generator)
    return model


@pytest.mark.parametrize("name", ["vae", "lvae"])
def test_active_units_are_exactly_the_informative_ones(name):
    torch.manual_seed(0)
    model = model_with_inactive_units(name)
    images = torch.bernoulli(torch.full((256, D), 0.5))
    result = active_units(model, images, memory_budget_mb=0.01)  # several chunks

    expected = [set(range(size)) - inactive for size, inactive in zip(LATENT_SIZES, INACTIVE)]
    assert result.layer_sizes == LATENT_SIZES
    for masks in (result.active_by_kl(), result.active_by_cov()):
        assert [set(mask.nonzero().flatten().tolist()) for mask in masks] == expected
    assert result.counts() == {"layer_sizes": LATENT_SIZES, "kl": [2, 2], "cov": [2, 2]}
    for values in (result.kl, result.posterior_mean_variance):
        inactive_values = torch.cat([layer[sorted(units)] for layer, units in zip(values, INACTIVE)])
        assert inactive_values.abs().max() < 1e-5  # far below the threshold, not just under it


def test_posterior_samples_have_one_row_per_image_and_layer_sizes_as_columns():
    model = model_with_inactive_units("lvae")
    samples = posterior_samples(model, torch.bernoulli(torch.full((50, D), 0.5)), memory_budget_mb=0.01)
    assert [s.shape for s in samples] == [(50, 4), (50, 3)]


def test_pca_recovers_the_dominant_direction():
    generator = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(6, generator=generator), dim=0)
    strength = 3.0 * torch.randn(500, generator=generator)
    x = strength[:, None] * direction + 0.1 * torch.randn(500, 6, generator=generator) + 5.0

    scores, ratios = pca_2d(x)
    assert scores.shape == (500, 2) and ratios.shape == (2,)
    assert torch.corrcoef(torch.stack([scores[:, 0], strength]))[0, 1].abs() > 0.999
    assert ratios[0] > 0.95 and ratios[1] < 0.02 and ratios.sum() <= 1 + 1e-6
    assert scores.mean(0).abs().max() < 1e-4, "scores of centred data"


def test_pca_of_a_single_unit_has_a_zero_second_component():
    scores, ratios = pca_2d(torch.randn(40, 1))
    assert scores.shape == (40, 2) and (scores[:, 1] == 0).all()
    torch.testing.assert_close(ratios, torch.tensor([1.0, 0.0]))


def test_tensorboard_gets_sample_images_and_active_unit_scalars(tmp_path):
    images = torch.bernoulli(torch.full((32, 25), 0.5))  # 5 x 5 pixels: the grids need square images
    model = build_model(model_spec(compose_config("model=vae", "layers=2", "model.hidden_sizes=[16,12]",
                                       "model.latent_sizes=[4,3]")), images.shape[1])
    with SummaryWriter(str(tmp_path)) as writer:
        result = active_units(model, images, memory_budget_mb=1)
        log_to_tensorboard(writer, model, images, result, step=3, n_images=16)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert {"samples", "reconstructions"} <= set(events.Tags()["images"])
    assert {"active_units_kl/z1", "active_units_kl/z2", "active_units_cov/z2"} <= set(events.Tags()["scalars"])
    assert events.Scalars("active_units_kl/z1")[0].value == result.counts()["kl"][0]


def test_analysis_command_writes_every_figure_and_the_active_units(synthetic_mnist, tmp_path, capsys):
    run_dirs = []
    for name, layers in (("vae", 2), ("lvae", 3)):
        cfg = compose_config(f"data.root={synthetic_mnist}", f"model={name}", f"layers={layers}",
                             "model.hidden_sizes=[32,16,8]", "model.latent_sizes=[8,4,2]", "train.epochs=2",
                             "train.batch_size=32", "warmup_epochs=1", "eval.iw_samples=4", "eval.train_subset=16",
                             "eval.memory_budget_mb=1", "device=cpu", "train.progress=false")
        run(cfg, tmp_path / name)
        run_dirs.append(tmp_path / name)

    main([str(d) for d in run_dirs] + ["--test-subset", "20", "--device", "cpu"])

    out = tmp_path / "analysis"  # beside the first run, for several runs
    names = {"VAE+BN+WU L2": "VAE+BN+WU_L2", "LVAE+BN+WU L3": "LVAE+BN+WU_L3"}
    figures = ["active_units.png", "pca.png", "kl_per_layer.png"]
    figures += [f"{kind}_{stem}.png" for stem in names.values() for kind in ("samples", "reconstructions")]
    for figure in figures:
        assert (out / figure).stat().st_size > 1000, figure
    summary = json.loads((out / "analysis.json").read_text())
    assert summary["test_images"] == 20 and set(summary["runs"]) == set(names)
    for run_name, layers in zip(names, (2, 3)):
        result = summary["runs"][run_name]
        assert result["layer_sizes"] == [8, 4, 2][:layers]
        assert len(result["kl"]) == len(result["cov"]) == layers
        assert all(0 <= count <= size for count, size in zip(result["kl"], result["layer_sizes"]))
        assert [len(units) for units in result["kl_per_unit"]] == result["layer_sizes"]
    table = capsys.readouterr().out
    assert "| run | z1 | z2 | z3 |" in table and "| VAE+BN+WU L2 |" in table

    main([str(run_dirs[0]), "--test-subset", "8", "--device", "cpu"])  # one run: into its own folder
    assert (run_dirs[0] / "pca.png").exists() and (run_dirs[0] / "analysis.json").exists()


@pytest.mark.parametrize("checkpoint", [None, b"not a checkpoint"], ids=["missing", "unreadable"])
def test_a_run_dir_without_a_usable_checkpoint_stops_with_one_line_naming_it(checkpoint, tmp_path, capsys):
    (tmp_path / "config.yaml").write_text(config_yaml(compose_config("layers=1")))
    if checkpoint is not None:
        (tmp_path / "checkpoint.pt").write_bytes(checkpoint)
    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path), "--device", "cpu"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "checkpoint.pt" in error and "\n" not in error
    assert checkpoint is not None or "config.yaml" not in error, "names only what is missing"


def test_a_run_computes_its_active_units_once_and_its_record_agrees_with_itself(synthetic_mnist, tmp_path):
    """metrics.json, the run's own analysis.json and a later `lvae.cli.analyze` of the run give the same counts:
    the analysis reuses the evaluation's active units, and re-analysing uses the run's seed."""
    cfg = compose_config(f"data.root={synthetic_mnist}", "model=vae", "layers=2", "model.hidden_sizes=[32,16]",
                         "model.latent_sizes=[8,4]", "train.epochs=1", "train.batch_size=32", "warmup_epochs=0",
                         "eval.iw_samples=4", "eval.train_subset=16", "eval.test_subset=24", "seed=7",
                         "device=cpu", "train.progress=false")
    metrics = run(cfg, tmp_path / "run")
    own = json.loads((tmp_path / "run" / "analysis.json").read_text())
    main([str(tmp_path / "run"), "--test-subset", "24", "--device", "cpu", "--out", str(tmp_path / "again")])
    again = json.loads((tmp_path / "again" / "analysis.json").read_text())
    counts = {key: metrics["active_units"][key] for key in ("kl", "cov")}
    for summary in (own, again):
        (result,) = summary["runs"].values()
        assert {key: result[key] for key in ("kl", "cov")} == counts and result["seed"] == 7


def test_the_analysis_leaves_the_callers_random_state_as_it_was(tmp_path):
    images = torch.bernoulli(torch.full((20, 25), 0.5))  # 5 x 5 pixels: the grids need square images
    model = build_model(model_spec(compose_config("model=lvae", "layers=2", "model.hidden_sizes=[16,12]",
                                       "model.latent_sizes=[4,3]")), images.shape[1])
    data = ImageData(images, torch.zeros(20), images, torch.zeros(20), binarize=True)
    before = torch.get_rng_state()
    analyze([RunToAnalyze("lvae", model.eval(), data, seed=3)], tmp_path, AnalysisSettings())
    assert torch.equal(torch.get_rng_state(), before)


def test_nearest_class_mean_accuracy_is_one_for_separated_classes_and_chance_for_none():
    from lvae.core.analysis import nearest_centroid_accuracy

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(2000) % 4
    separated = torch.nn.functional.one_hot(labels, 4).double() * 10 + torch.randn(2000, 4, generator=generator)
    assert nearest_centroid_accuracy(separated, labels) == 1.0
    noise = torch.randn(2000, 4, generator=generator)
    assert abs(nearest_centroid_accuracy(noise, labels) - 0.25) < 0.05, "no information: chance, 1 / 4"


def test_pca_is_drawn_for_digits_for_many_classes_and_for_a_dataset_without_classes(tmp_path):
    from lvae.run.figures import plot_pca

    samples = {"run": [torch.randn(60, 4), torch.randn(60, 2)]}
    for name, labels in (("digits", torch.arange(60) % 10), ("many", torch.arange(60) % 50),
                         ("none", torch.full((60,), -1))):
        plot_pca(samples, labels, tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
