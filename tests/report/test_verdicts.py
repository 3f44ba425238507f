"""The verdicts of the paper folder under its one rule (lvae/report/rule.py): every word, from numbers made to
give it, and an index.md written from a 3-seed fixture of records (no training: the records are written here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from lvae.report.claims import curve_points_part
from lvae.report.rule import (CONTRADICTED, DESCRIPTIVE, NOT_RUN, NOT_SUPPORTED, NOT_TESTABLE, RULE, SUPPORTED,
                              Difference, Verdict, all_of, better_verdict, format_count, over_seeds, t_critical)
from lvae.report.runs import collect_runs
from lvae.report.verdicts import write_paper
from lvae.run.record import write_per_image

IMAGES = 40
SIZES = [4, 2, 2, 2, 2]
# Per seed, LVAE+BN+WU - VAE+BN+WU: log p(x) as the 200-epoch runs measured it (+0.09 ± 0.14 over the seeds: not
# supported at t = 4.30), test ELBO and train bound clearly better, KL above z1 clearly lower (contradicted).
LOG_PX = {0: -0.16, 1: 0.31, 2: 0.11}
ELBO = {0: 0.9, 1: 1.0, 2: 1.1}
TRAIN_BOUND = {0: 1.2, 1: 1.9, 2: 1.7}
ACTIVE_KL = {"VAE+BN+WU": {0: 60, 1: 57, 2: 61}, "LVAE+BN+WU": {0: 50, 1: 53, 2: 51}}  # totals per seed
KL_UPPER = {"VAE+BN+WU": 17.0, "LVAE+BN+WU": 14.5}  # nats above z1, plus a little per seed


def test_the_rule_uses_the_t_value_of_the_seeds():
    assert t_critical(2) == pytest.approx(4.303, abs=1e-3) and t_critical(1) == pytest.approx(12.706, abs=1e-3)
    assert t_critical(10_000) == pytest.approx(1.960, abs=1e-3)
    d = over_seeds([0.2, 0.25, 0.3])
    assert d.degrees_of_freedom == 2 and d.stderr == pytest.approx(0.05 / 3 ** 0.5)
    assert better_verdict(d, "b better").word == SUPPORTED  # 0.25 > 4.30 x 0.029
    assert better_verdict(over_seeds([-0.16, 0.31, 0.11]), "b better").word == NOT_SUPPORTED
    # Twice the standard error would call this supported; the t value for 2 degrees of freedom does not.
    lenient = over_seeds([0.1, 0.5, 0.9])
    assert lenient.value > 2 * lenient.stderr and better_verdict(lenient, "b better").word == NOT_SUPPORTED
    assert over_seeds([0.5]) is None, "one seed has no standard error over seeds"


def test_each_measured_word_follows_the_difference_and_its_threshold():
    one_seed = 299  # degrees of freedom: 300 test images, paired
    assert better_verdict(Difference(0.5, 0.2, one_seed, "paired"), "b better").word == SUPPORTED
    within = better_verdict(Difference(0.3, 0.2, one_seed, "paired"), "b better")
    assert within.word == NOT_SUPPORTED and "within t standard errors" in within.because
    opposite = better_verdict(Difference(-0.5, 0.2, one_seed, "paired"), "b better")
    assert opposite.word == CONTRADICTED and "the opposite" in opposite.because
    assert better_verdict(None, "b better").word == NOT_RUN


def test_a_claim_of_parts_is_never_more_favourable_than_its_least_favourable_measured_part():
    supported, negative = Verdict(SUPPORTED, "a"), Verdict(NOT_SUPPORTED, "b")
    contradicted, missing, budget = Verdict(CONTRADICTED, "c"), Verdict(NOT_RUN, "d"), Verdict(NOT_TESTABLE, "e")
    described = Verdict(DESCRIPTIVE, "f")
    assert all_of([supported, supported]).word == SUPPORTED
    assert all_of([missing, negative, missing]).word == NOT_SUPPORTED, "a missing part never hides a measured one"
    assert all_of([negative, contradicted, supported]).word == CONTRADICTED
    assert all_of([supported, missing]).word == NOT_RUN, "what never ran is not shown"
    assert all_of([supported, budget]).word == NOT_TESTABLE
    assert all_of([missing, budget]).word == NOT_RUN
    assert all_of([described, described]).word == DESCRIPTIVE
    assert all_of([described, supported]).word == SUPPORTED, "a descriptive part gives no word"
    assert all_of([missing, described, missing]).word == DESCRIPTIVE, "a missing part never hides a described one"
    assert all_of([supported, described, missing]).word == NOT_RUN
    combined = all_of([missing, negative, missing])
    assert combined.summary() == "not supported (1 not supported, 2 not run)"
    assert "- not supported: b" in combined.markdown() and "- not run: d" in combined.markdown()


def test_counts_print_as_integers_or_with_one_decimal():
    assert [format_count(v) for v in (64, 64.0, 35 + 1 / 3, 107 + 1 / 3, 0)] == ["64", "64", "35.3", "107.3", "0"]


def test_training_curves_without_points_are_not_testable_at_this_budget():
    assert curve_points_part([]).word == NOT_TESTABLE


def _history(lvae: bool, seed: int) -> list[dict]:
    """Three epochs of training, a curve point after each (warm-up 1): the LVAE ahead at one of the two after it."""
    return [{"epoch": epoch, "train_elbo": -90.0 + epoch, "kl_per_layer": [1.0] * 5,
             "curve": {"test_bound": -90.0 + epoch + (0.1 if lvae and epoch == 2 else 0.0), "test_elbo": -95.0,
                       "train_elbo": -94.0, "iw_samples": 10, "images": IMAGES,
                       "kl_per_unit": [[0.5 if lvae or i < 1 else 0.0] * n for i, n in enumerate(SIZES)]}}
            for epoch in (1, 2, 3)]


def _write_run(root: Path, variant: str, seed: int) -> None:
    """A completed 5-layer run's metrics.json and per_image.pt, numbers chosen per the module's constants."""
    lvae = variant.startswith("LVAE")
    generator = torch.Generator().manual_seed(seed)
    base = -85.0 + torch.randn(IMAGES, generator=generator, dtype=torch.float64)
    noise = 0.01 * torch.randn(IMAGES, generator=generator, dtype=torch.float64)
    log_px = base + (LOG_PX[seed] if lvae else 0.0) + noise
    elbo = base - 5.0 + (ELBO[seed] if lvae else 0.0)
    upper = KL_UPPER[variant] + 0.1 * seed
    kl_active = ACTIVE_KL[variant][seed]
    test = {"images": IMAGES, "test_set_images": 10_000}
    metrics = {
        "status": "completed", "model": "lvae" if lvae else "vae", "layers": 5, "batch_norm": True,
        "warmup_epochs": 1, "epochs": 3, "seed": seed, "likelihood": "bernoulli", "dataset": "mnist",
        "test_log_likelihood": {"mean": log_px.mean().item(), "stderr": 0.2, **test, "iw_samples": 10,
                                "remaining_gap": 0.1, "remaining_gap_stderr": 0.01},
        "test_elbo": {"mean": elbo.mean().item(), "stderr": 0.2, **test, "samples": 1},
        "train_bound": {"mean": -86.6 + (TRAIN_BOUND[seed] if lvae else 0.0), "stderr": 0.2, "images": 100,
                        "iw_samples": 1, "mc_samples": 1},
        "kl_per_layer": [10.0, upper / 2, upper / 4, upper / 8, upper / 8],
        "kl_per_layer_stderr": [0.05] * 5,
        "active_units": {"layer_sizes": SIZES, "kl": [kl_active - 4, 1, 1, 1, 1], "cov": [4, 2, 2, 2, 2]},
        "wall_time_s": {"train": 1.0, "evaluate": 1.0, "total": 2.0}, "date": "2026-12-06T00:00:00+00:00",
        "device": "cpu (x86_64, 1 threads)", "numerics_version": 2, "history": _history(lvae, seed),
    }
    run_dir = root / f"layers=5,seed={seed},variant={'lvae_bn_wu' if lvae else 'vae_bn_wu'}"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    write_per_image(run_dir, {"test_log_likelihood": log_px, "test_elbo": elbo,
                              "test_indices": torch.arange(100, 100 + IMAGES)})


@pytest.fixture(scope="module")
def three_seed_index(tmp_path_factory) -> str:
    """index.md written from the VAE+BN+WU and LVAE+BN+WU at 5 layers, seeds 0-2 (no other variant ran)."""
    root = tmp_path_factory.mktemp("three-seeds")
    for variant in ("VAE+BN+WU", "LVAE+BN+WU"):
        for seed in range(3):
            _write_run(root / "runs", variant, seed)
    return write_paper(collect_runs([root / "runs"]), root / "paper", analyze=False).read_text()


def _section(index: str, number: int) -> str:
    return re.split(r"\n## ", index)[number]


def _headline(index: str, number: int) -> str:
    return re.search(r"\*\*Verdict: (.+?)\*\*", _section(index, number)).group(1)


def test_a_missing_variant_is_not_run_while_the_measured_negative_part_stays_visible(three_seed_index):
    fig3 = _section(three_seed_index, 2)
    assert _headline(three_seed_index, 2) == "not supported (1 not supported, 4 not run)"
    assert "- not supported: LVAE+BN+WU - VAE+BN+WU, test log p(x), L=5: +0.09 ± 0.14 nats" in fig3
    assert "- not run: LVAE+BN+WU - VAE, L=5: no completed run of VAE L=5; `python train.py -m experiment=fig3" in fig3
    assert "variant=vae seed=0,1,2` makes them" in fig3
    assert NOT_TESTABLE not in fig3, "runs that never started are not a limit of the budget"


def test_item_1_is_judged_on_the_log_likelihood_with_elbo_train_bound_and_curves_as_parts(three_seed_index):
    curves = _section(three_seed_index, 1)
    assert _headline(three_seed_index, 1) == "not supported (2 supported, 1 not supported, 1 descriptive)"
    assert "- not supported: end-of-training test log p(x) (K=10)" in curves
    assert "- supported: end-of-training test ELBO" in curves and "- supported: end-of-training train bound" in curves
    assert "- descriptive: the curve points after warm-up at which the LVAE's test bound is the higher: " \
           "1 of 2 (seed 0), 1 of 2 (seed 1), 1 of 2 (seed 2)" in curves
    assert "t = 4.30 for 2 degrees of freedom" in curves


def test_counts_are_judged_over_the_seeds_and_printed_as_integers(three_seed_index):
    active = _section(three_seed_index, 3)
    assert "| VAE+BN+WU | 55.3 / 4 | 1 / 2 | 1 / 2 | 1 / 2 | 1 / 2 | 59.3 / 12 |" in active
    assert "VAE+BN+WU 60 (seed 0), 57 (seed 1), 61 (seed 2)" in active
    assert "- not supported: active units (KL criterion, all layers, L=5), VAE+BN+WU -> LVAE+BN+WU " \
           "(seed 0: 60 -> 50; seed 1: 57 -> 53; seed 2: 61 -> 51): -8.00 ± 2.00 units" in active
    assert not re.search(r"\d\.\d{3}", active), "no count with more than one decimal"
    assert _headline(three_seed_index, 4) == CONTRADICTED, "KL above z1: lower in the LVAE in every seed"
    assert _headline(three_seed_index, 5) == SUPPORTED, "units active above z1: 0 -> 8 in every seed"


def test_the_index_states_the_rule_and_the_right_plus_minus_sentence(three_seed_index):
    assert RULE in three_seed_index
    assert "3 seeds: a ± of a difference between variants is the standard error over the seeds" in three_seed_index
    assert "One seed" not in three_seed_index and "1 threads" not in three_seed_index
    table = _section(three_seed_index, 7)
    assert "| model (5 layers) | test log p(x), mean over the seeds ± its standard error over the seeds |" in table
    assert _headline(three_seed_index, 7) == "not run (4 not run)", "the fine-tunings and the other datasets"
    assert "no completed run of VAE+BN+WU, omniglot L=5, LVAE+BN+WU, omniglot L=5" in table
    assert _headline(three_seed_index, 6) == NOT_RUN, "no weights to look inside"
    assert "every seed of the 3: the mean, each seed faint" in _section(three_seed_index, 1)


def test_a_run_found_twice_counts_once_and_a_kept_analysis_is_shown(tmp_path):
    """A run published twice (a fine-tuning's base beside Figure 3's runs) is one seed; runs published without
    weights keep the analysis.json that their checkpoints once gave the folder, and item 6 is judged on it."""
    runs = tmp_path / "runs"
    for variant in ("VAE+BN+WU", "LVAE+BN+WU"):
        _write_run(runs / "fig3", variant, 0)
    _write_run(runs / "table1", "LVAE+BN+WU", 0)  # the same metrics.json again
    analysis = tmp_path / "paper" / "analysis"
    analysis.mkdir(parents=True)
    (analysis / "pca.png").write_bytes(b"kept")
    accuracy = {"VAE+BN+WU L5": 0.10, "LVAE+BN+WU L5": 0.30}
    (analysis / "analysis.json").write_text(json.dumps({"test_images": 1000, "runs": {
        name: {"seed": 0, "nearest_centroid_accuracy": [0.8, value]} for name, value in accuracy.items()}}))
    (runs / "table1" / "layers=5,seed=0,variant=lvae_bn_wu").rename(runs / "table1" / "base")
    index = write_paper(collect_runs([runs]), tmp_path / "paper")  # no weights: nothing is analysed again
    assert index.read_text().count("One seed: a ± is the paired standard error") == 1
    assert "paired over 40 test images, 1 seed" in _section(index.read_text(), 1), "one pair, not two"
    assert re.search(r"\| LVAE\+BN\+WU \| -\d+\.\d\d ± 0\.20 \| 1 \| -82\.1 \|", _section(index.read_text(), 7))
    assert "- Runs: 2 (2 completed)" in (tmp_path / "paper" / "fig3" / "results.md").read_text()
    assert (analysis / "pca.png").read_bytes() == b"kept"
    assert "written when their checkpoints were there" in _section(index.read_text(), 6)
    assert _headline(index.read_text(), 6) == SUPPORTED, "+20 points, binomial standard error of 500 images"


def test_a_folder_written_elsewhere_takes_the_analysis_of_the_folder_it_replaces(tmp_path):
    """write_paper into a fresh folder (as a command that writes beside its --out and then swaps them does)
    copies the kept analysis/ of the folder it replaces."""
    runs = tmp_path / "runs"
    for variant in ("VAE+BN+WU", "LVAE+BN+WU"):
        _write_run(runs, variant, 0)
    old = tmp_path / "paper" / "analysis"
    old.mkdir(parents=True)
    (old / "pca.png").write_bytes(b"kept")
    (old / "analysis.json").write_text(json.dumps({"test_images": 1000, "runs": {
        name: {"seed": 0, "nearest_centroid_accuracy": [0.8, 0.2]} for name in ("VAE+BN+WU L5", "LVAE+BN+WU L5")}}))
    index = write_paper(collect_runs([runs]), tmp_path / "writing", previous=tmp_path / "paper")
    assert (tmp_path / "writing" / "analysis" / "pca.png").read_bytes() == b"kept"
    assert _headline(index.read_text(), 6) == NOT_SUPPORTED, "20 % against 20 %"
