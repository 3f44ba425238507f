"""The paired comparison of runs, on per-image estimates written by hand."""

import json
import math

import pytest
import torch

from lvae.cli.compare import main
from lvae.report.compare import pair_by_seed, paired, read_estimates
from lvae.run.config import compose_config, config_yaml
from tests.helpers import REPO


def _run(path, model: str, seed: int, values: torch.Tensor, **record):
    """A completed run whose record agrees with its per_image.pt (`record` adds or replaces keys)."""
    path.mkdir(parents=True)
    numbers = {"test_log_likelihood": {"mean": values.mean().item(), "stderr": 0.1, "iw_samples": 5000},
               "test_elbo": {"mean": values.mean().item() - 5, "stderr": 0.1}}
    (path / "metrics.json").write_text(json.dumps({"status": "completed", "model": model, "layers": 5, "seed": seed,
                                                   "batch_norm": True, "warmup_epochs": 2, "dataset": "mnist",
                                                   "likelihood": "bernoulli", "numerics_version": 2, **numbers,
                                                   **record}))
    torch.save({"test_log_likelihood": values, "test_elbo": values - 5}, path / "per_image.pt")
    return path


def test_paired_difference_and_its_standard_error(tmp_path):
    base = torch.randn(400, dtype=torch.float64) * 10 - 90  # images differ a lot from one another
    noise = torch.randn(400, dtype=torch.float64) * 0.5
    a = read_estimates(_run(tmp_path / "a", "vae", 0, base))
    b = read_estimates(_run(tmp_path / "b", "lvae", 0, torch.cat([base + 1.0 + noise, torch.zeros(100)])))
    result = paired(a, b, "test_log_likelihood")
    assert result.images == 400, "only the images both runs scored"
    assert result.difference == pytest.approx(1.0 + noise.mean().item())
    assert result.difference_stderr == pytest.approx(noise.std().item() / math.sqrt(400))
    assert result.difference_stderr < 0.05, "pairing removes the spread between images"
    assert paired(a, b, "test_log_likelihood", images=100).images == 100


def test_runs_are_paired_by_seed_and_the_table_prints(tmp_path, capsys):
    values = torch.linspace(-100, -80, 50, dtype=torch.float64)
    a = [_run(tmp_path / f"a{s}", "vae", s, values) for s in (0, 1, 2)]
    b = [_run(tmp_path / f"b{s}", "lvae", s, values + 0.5 * (s + 1)) for s in (2, 0)]
    pairs = pair_by_seed([read_estimates(p) for p in a], [read_estimates(p) for p in b])
    assert [(x.seed, y.seed) for x, y in pairs] == [(0, 0), (2, 2)]
    main(["--a", *map(str, a), "--b", *map(str, b)])
    out = capsys.readouterr().out
    assert "| 0 | -90.00 | -89.50 | +0.50 ± 0.00 |" in out
    assert "| mean ± std over 2 seeds | -90.00 ± 0.00 | -89.00 ± 0.71 | +1.00 ± 0.71 |" in out


def test_the_table_names_the_variants_and_tells_apart_runs_of_the_same_variant(tmp_path, capsys):
    values = torch.linspace(-100, -80, 50, dtype=torch.float64)
    main(["--a", str(_run(tmp_path / "vae", "vae", 0, values)), "--b", str(_run(tmp_path / "lvae", "lvae", 0, values))])
    out = capsys.readouterr().out
    assert "| seed | VAE+BN+WU L=5 | LVAE+BN+WU L=5 |" in out
    assert "over 1 seeds" not in out and "mean ± std" not in out, "one seed: its line is the result"
    main(["--a", str(_run(tmp_path / "scale=255", "lvae", 0, values)),
          "--b", str(_run(tmp_path / "scale=256", "lvae", 0, values))])
    assert "| seed | LVAE+BN+WU L=5 (scale=255) | LVAE+BN+WU L=5 (scale=256) |" in capsys.readouterr().out


def test_a_run_without_per_image_estimates_is_refused(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.json").write_text(json.dumps({"status": "completed", "model": "vae", "layers": 5,
                                                               "seed": 0}))
    with pytest.raises(SystemExit):
        main(["--a", str(tmp_path / "old"), "--b", str(tmp_path / "old")])


def _run_with_indices(path, model: str, seed: int, values: torch.Tensor, indices: torch.Tensor):
    _run(path, model, seed, values)
    torch.save({"test_log_likelihood": values, "test_elbo": values - 5, "test_indices": indices},
               path / "per_image.pt")
    return path


def test_runs_that_scored_other_test_images_are_not_paired(tmp_path, capsys):
    """Same count, other images (another random sample, or an old first-N file beside a random sample):
    refused with a message that says why; a smaller sample of the same order pairs on its images."""
    values = torch.linspace(-100, -80, 50, dtype=torch.float64)
    order = torch.randperm(1000)[:50]
    a = _run_with_indices(tmp_path / "a", "vae", 0, values, order)
    b = _run_with_indices(tmp_path / "b", "lvae", 0, values + 1, order.flip(0))
    old = _run(tmp_path / "old", "lvae", 0, values + 1)  # no test_indices: the first 50 test images
    with pytest.raises(ValueError, match="did not score the same test images"):
        paired(read_estimates(a), read_estimates(b), "test_log_likelihood")
    with pytest.raises(SystemExit):
        main(["--a", str(a), "--b", str(old)])
    assert "no test-image indices" in capsys.readouterr().err
    smaller = _run_with_indices(tmp_path / "c", "lvae", 0, values[:20] + 1, order[:20])
    assert paired(read_estimates(a), read_estimates(smaller), "test_log_likelihood").images == 20


def test_old_estimates_without_indices_are_taken_as_the_first_images_and_say_so(tmp_path, capsys):
    values = torch.linspace(-100, -80, 50, dtype=torch.float64)
    a, b = _run(tmp_path / "a", "vae", 0, values), _run(tmp_path / "b", "lvae", 0, values + 1)
    assert torch.equal(read_estimates(a).indices, torch.arange(50)) and read_estimates(a).indices_assumed
    main(["--a", str(a), "--b", str(b)])
    assert "without test-image indices: taken as the first test images" in capsys.readouterr().out


def _with_curves(path, offset: float, epochs=(10, 20), k: int = 100):
    metrics = json.loads((path / "metrics.json").read_text())
    metrics["history"] = [{"epoch": e, "curve": {"test_bound": -90.0 + e / 10 + offset, "test_elbo": -95.0 + offset,
                                                 "train_elbo": -94.0 + 2 * offset, "iw_samples": k, "images": 1000}}
                          for e in epochs] + [{"epoch": 15}]  # an epoch without a curve point
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_the_difference_along_training_from_the_curves(tmp_path, capsys):
    values = torch.linspace(-100, -80, 50, dtype=torch.float64)
    a = [_with_curves(_run(tmp_path / f"a{s}", "vae", s, values), 0.0) for s in (0, 1)]
    b = [_with_curves(_run(tmp_path / f"b{s}", "lvae", s, values), 0.5 * (s + 1)) for s in (0, 1)]
    main(["--a", *map(str, a), "--b", *map(str, b)])
    out = capsys.readouterr().out
    assert "along training" in out and "K=100" in out and "2 seeds" in out
    # seed 0: +0.5, seed 1: +1.0 -> mean +0.75 (test bound, test ELBO), train ELBO twice that
    assert "| 10 | -89.00 | -88.25 | +0.75 | +0.75 | +1.50 |" in out
    assert "| 20 | -88.00 | -87.25 | +0.75 | +0.75 | +1.50 |" in out
    assert "| 15 |" not in out


def test_curves_measured_differently_or_absent_give_no_table(tmp_path, capsys):
    values = torch.linspace(-100, -80, 50, dtype=torch.float64)
    a = _with_curves(_run(tmp_path / "a", "vae", 0, values), 0.0, k=100)
    b = _with_curves(_run(tmp_path / "b", "lvae", 0, values), 0.5, k=1000)
    c = _run(tmp_path / "c", "lvae", 0, values)
    for other in (b, c):
        main(["--a", str(a), "--b", str(other)])
        assert "along training" not in capsys.readouterr().out


def _refusal(capsys, *argv: str) -> str:
    """compare's one message for argv, which it must refuse with exit 2."""
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("differ, key", [
    ({"likelihood": "gaussian"}, "likelihood"),
    ({"dataset": "fashion_mnist"}, "dataset"),
    ({"test_log_likelihood": {"mean": -90.0, "stderr": 0.1, "iw_samples": 100}}, "eval.iw_samples (K)"),
    ({"numerics_version": 1}, "numerics version"),
])
def test_runs_that_scored_other_quantities_are_refused_naming_the_difference(tmp_path, capsys, differ, key):
    values = torch.linspace(-100, -80, 50, dtype=torch.float64)
    a = _run(tmp_path / "a", "vae", 0, values)
    b = _run(tmp_path / "b", "lvae", 0, values + 1, **differ)
    if "test_log_likelihood" in differ:  # keep the record consistent with its per_image.pt
        torch.save({"test_log_likelihood": torch.full((50,), -90.0, dtype=torch.float64),
                    "test_elbo": values - 5}, b / "per_image.pt")
    assert "scored different things" in _refusal(capsys, "--a", str(a), "--b", str(b))
    assert key in _refusal(capsys, "--a", str(a), "--b", str(b))


@pytest.mark.parametrize("setting", ["binarization_seed: 1", "intensity_scale: 256", "binarize: false"])
def test_runs_of_other_pixels_are_refused_by_their_config(tmp_path, capsys, setting):
    """The same test images binarized with another seed (or scaled otherwise) are other data."""
    values = torch.linspace(-100, -80, 50, dtype=torch.float64)
    a = _run(tmp_path / "a", "vae", 0, values)
    b = _run(tmp_path / "b", "lvae", 0, values + 1)
    (a / "config.yaml").write_text(config_yaml(compose_config()))  # the defaults: seed 0, scale 255, binarized
    (b / "config.yaml").write_text(config_yaml(compose_config(f"data.{setting.replace(': ', '=')}")))
    assert f"data.{setting.split(':')[0]}" in _refusal(capsys, "--a", str(a), "--b", str(b))


def test_bad_image_counts_duplicate_seeds_and_a_run_against_itself_are_refused(tmp_path, capsys):
    values = torch.linspace(-100, -80, 50, dtype=torch.float64)
    a, a_again = _run(tmp_path / "a", "vae", 0, values), _run(tmp_path / "a2", "vae", 0, values)
    b = _run(tmp_path / "b", "lvae", 0, values + 1)
    for images in ("-5", "0", "many"):
        assert "not a positive integer" in _refusal(capsys, "--a", str(a), "--b", str(b), "--images", images)
    assert "two runs of seed 0" in _refusal(capsys, "--a", str(a), str(a_again), "--b", str(b))
    assert "two runs of seed 0" in _refusal(capsys, "--a", str(b), "--b", str(a), str(a_again))
    assert "compared with itself" in _refusal(capsys, "--a", str(a), "--b", str(a))
    main(["--a", str(a), "--b", str(b), "--images", "1"])
    out = capsys.readouterr().out
    assert "nan" not in out and "one image: no s.e." in out


@pytest.mark.parametrize("damage, said", [
    (lambda run: (run / "per_image.pt").write_bytes(b"not a torch file"), "cannot be read"),
    (lambda run: (run / "per_image.pt").write_bytes((run / "per_image.pt").read_bytes()[:300]), "cannot be read"),
    (lambda run: (run / "metrics.json").write_text('{"status": "compl'), "cannot be read"),
    (lambda run: (run / "metrics.json").write_text(json.dumps({**json.loads((run / "metrics.json").read_text()),
                                                               "test_log_likelihood": {"mean": -50.0, "stderr": 0.1}})),
     "was edited"),
    (lambda run: __import__("shutil").rmtree(run), "does not exist"),
])
def test_damaged_or_absent_runs_get_one_message(tmp_path, capsys, damage, said):
    values = torch.linspace(-100, -80, 50, dtype=torch.float64)
    a, b = _run(tmp_path / "a", "vae", 0, values), _run(tmp_path / "b", "lvae", 0, values + 1)
    damage(b)
    err = _refusal(capsys, "--a", str(a), "--b", str(b))
    assert said in err and str(b) in err and "weights_only=False" not in err and len(err.strip().splitlines()) == 1


def test_a_fine_tuned_run_is_labelled_as_its_base_run_plus_fine_tuning():
    """The published table1 pair: the fine-tuned run trained without warm-up, but it is its base's LVAE+BN+WU."""
    folder = REPO / "results" / "table1-quick_full_test"
    assert read_estimates(folder / "finetune=mc10,seed=0").label == "LVAE+BN+WU + fine-tuning (MC=10) L=5"
    assert read_estimates(folder / "layers=5,seed=0,variant=lvae_bn_wu").label == "LVAE+BN+WU L=5"
