"""LVAE - VAE by training budget (`python -m lvae.compare --by-budget`), on run records written by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lvae.cli.compare import main
from lvae.report.budgets import budget_lines
from lvae.report.runs import collect_runs
from lvae.run.config import compose_config, config_yaml

IMAGES = 200
BASE = -90 + 10 * torch.randn(2 * IMAGES, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _run(folder, model: str, seed: int, shift: float, epochs: int = 10, numerics: int = 2,
         overrides: tuple[str, ...] = (), images: int = IMAGES):
    """A completed 5-layer run of `epochs` whose per-image log p(x) on the first `images` test images of the
    random order is BASE + shift + noise (its ELBO: 5 below)."""
    folder.mkdir(parents=True)
    noise = 0.5 * torch.randn(2 * IMAGES, generator=torch.Generator().manual_seed(seed + 100 * (model == "lvae")),
                              dtype=torch.float64)
    values = (BASE + shift + noise)[:images]
    config = compose_config(f"model={model}", "layers=5", f"seed={seed}", f"train.epochs={epochs}", "warmup_epochs=2",
                            *overrides)
    (folder / "config.yaml").write_text(config_yaml(config))
    entry = {"images": images, "test_set_images": 10000, "stderr": 0.7}
    (folder / "metrics.json").write_text(json.dumps({
        "status": "completed", "model": model, "layers": 5, "seed": seed, "batch_norm": True, "warmup_epochs": 2,
        "epochs": epochs, "dataset": "mnist", "likelihood": "bernoulli", "numerics_version": numerics,
        "test_log_likelihood": {**entry, "mean": values.mean().item(), "iw_samples": 5000},
        "test_elbo": {**entry, "mean": values.mean().item() - 5}}))
    torch.save({"test_log_likelihood": values, "test_elbo": values - 5, "test_indices": torch.arange(images)},
               folder / "per_image.pt")
    return folder


def test_lines_by_budget_with_the_rule_over_images_for_one_seed_and_over_seeds_for_several(tmp_path, capsys):
    _run(tmp_path / "short/vae", "vae", 0, 0.0)
    _run(tmp_path / "short/lvae", "lvae", 0, 1.0)  # one seed: +1 nats, far beyond its s.e. over 200 images
    for seed, shift in ((0, 0.3), (1, -0.2), (2, 0.1)):  # three seeds that disagree: within t = 4.30 s.e.
        _run(tmp_path / f"long/vae{seed}", "vae", seed, 0.0, 50)
        _run(tmp_path / f"long/lvae{seed}", "lvae", seed, shift, 50)
    lines = budget_lines(collect_runs([tmp_path]))
    assert [line.setting["train.epochs"] for line in lines] == [10, 50], "fewest epochs first"
    short, long = lines
    assert short.seeds == [0] and long.seeds == [0, 1, 2]
    d = short.differences["test_log_likelihood"]
    assert d.degrees_of_freedom == IMAGES - 1 and d.value == pytest.approx(1.0, abs=0.15) and d.stderr < 0.1
    per_seed = long.per_seed("test_log_likelihood")
    assert per_seed == pytest.approx([0.3, -0.2, 0.1], abs=0.15)
    d = long.differences["test_log_likelihood"]
    assert d.degrees_of_freedom == 2 and d.value == pytest.approx(sum(per_seed) / 3)
    assert d.stderr == pytest.approx(torch.tensor(per_seed).std().item() / math.sqrt(3))

    figure = tmp_path / "figures" / "by_budget.png"  # a folder that does not exist yet is made
    main(["--by-budget", str(tmp_path), "--figure", str(figure)])
    out = capsys.readouterr().out
    assert figure.read_bytes().startswith(b"\x89PNG"), "the figure, drawn from the same lines"
    assert "LVAE+BN+WU - VAE+BN+WU, by training budget" in out
    assert "| 10 epochs, warm-up 2, L=5 | 0 | 200 of 10,000 (random sample) | 5000 | 2 |" in out
    rows = [row for row in out.splitlines() if row.startswith("| 10 epochs") or row.startswith("| 50 epochs")]
    assert rows[0].split(" | ")[7] == "supported" and rows[1].split(" | ")[7] == "not supported"


def test_fine_tuned_runs_other_numerics_and_twice_published_runs(tmp_path):
    _run(tmp_path / "one/vae", "vae", 0, 0.0)
    _run(tmp_path / "one/lvae", "lvae", 0, 0.5)
    (tmp_path / "two").mkdir()
    for name in ("vae", "lvae"):  # the same runs published again elsewhere: counted once, not as two seeds 0
        (tmp_path / "two" / name).mkdir()
        for file in ("config.yaml", "metrics.json", "per_image.pt"):
            (tmp_path / "two" / name / file).write_bytes((tmp_path / "one" / name / file).read_bytes())
    _run(tmp_path / "tuned", "lvae", 0, 3.0, overrides=(f"init_from={tmp_path / 'one/lvae'}",))
    _run(tmp_path / "old/vae", "vae", 0, 0.0, numerics=1)
    _run(tmp_path / "old/lvae", "lvae", 0, -0.5, numerics=1)
    _run(tmp_path / "lonely", "lvae", 3, 0.0, 10)  # no VAE of seed 3: no pair, no line of its own
    lines = budget_lines(collect_runs([tmp_path]))
    assert sorted(line.numerics for line in lines) == [1, 2], "another numerics version is a line of its own"
    for line in lines:
        assert line.seeds == [0]
        expected = 0.5 if line.numerics == 2 else -0.5  # not the fine-tuned run's +3
        assert line.differences["test_log_likelihood"].value == pytest.approx(expected, abs=0.15)


def test_the_command_refuses_mixed_or_empty_requests_in_one_message(tmp_path, capsys):
    """--by-budget or --a/--b, never both or neither; no pair at the asked depth, or no folder: one line, exit 2."""
    _run(tmp_path / "vae", "vae", 0, 0.0)
    for argv in (["--by-budget", str(tmp_path), "--a", str(tmp_path / "vae")], []):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and "either --a RUN" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--a", str(tmp_path / "vae"), "--b", str(tmp_path / "vae"), "--figure", "f.png"])
    assert exit_.value.code == 2 and "--layers and --figure go with --by-budget" in capsys.readouterr().err
    _run(tmp_path / "lvae", "lvae", 0, 0.0)
    for argv, said in ((["--by-budget", str(tmp_path), "--layers", "3"], "no VAE and LVAE runs with 3 layers"),
                       (["--by-budget", str(tmp_path / "nowhere")], "not a directory")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and said in err and "Traceback" not in err


def test_of_two_evaluations_of_one_seed_the_one_on_more_images_counts(tmp_path):
    _run(tmp_path / "vae", "vae", 0, 0.0)
    _run(tmp_path / "lvae", "lvae", 0, 1.0)
    _run(tmp_path / "lvae_all", "lvae", 0, 1.0, images=2 * IMAGES)  # evaluated again on more test images
    _run(tmp_path / "vae_all", "vae", 0, 0.0, images=2 * IMAGES)
    line, = budget_lines(collect_runs([tmp_path]))
    assert line.images == 2 * IMAGES and {run.path.name for pair in line.pairs for run in pair} == {"vae_all",
                                                                                                    "lvae_all"}
