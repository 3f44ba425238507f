"""Every preset under configs/experiment/ composes, resolves and validates, job by job, under every budget."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lvae.run.config import CONFIG_DIR, compose_config, config_value, finetune_schedule, validate
from lvae.run.sweep import sweep_jobs

PRESETS = sorted(path.stem for path in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
BUDGETS = sorted(path.stem for path in (Path(CONFIG_DIR) / "budget").glob("*.yaml"))


def _has_budget(preset: str) -> bool:
    preset_file = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "experiment" / f"{preset}.yaml"))
    return any(isinstance(entry, dict) and any(key.endswith("/budget") for key in entry)
               for entry in preset_file.get("defaults", []))


def _jobs(preset: str, budget: str | None):
    """The preset's jobs, under `budget` when given."""
    return sweep_jobs([f"experiment={preset}", *([f"budget={budget}"] if budget else [])])


# Every preset as it is, and every preset that takes a budget (not the demo) under every budget.
CASES = [(preset, None) for preset in PRESETS] + [(preset, budget) for preset in PRESETS if _has_budget(preset)
                                                   for budget in BUDGETS]


@pytest.mark.parametrize(("preset", "budget"), CASES)
def test_every_job_of_a_preset_resolves_and_validates(preset, budget):
    jobs = _jobs(preset, budget)
    assert jobs
    for job in jobs:
        validate(job.config)


@pytest.mark.parametrize("budget", BUDGETS)
def test_table1_fine_tunes_the_run_that_fig3_writes(budget):
    """table1's interpolated init_from names the folder of fig3's 5-layer LVAE+BN+WU under the same budget."""
    [base] = sweep_jobs(["experiment=fig3", f"budget={budget}", "variant=lvae_bn_wu", "layers=5"])
    jobs = _jobs("table1", budget)
    assert len(jobs) == 2
    assert {Path(job.config.init_from) for job in jobs} == {base.run_dir}
    assert {(job.config.train.mc_samples, job.config.train.iw_samples) for job in jobs} == {(10, 1), (10, 10)}
    keys = ("train.epochs", "train.lr", "train.lr_decay", "warmup_epochs")
    for job in jobs:  # the fine-tuning schedule that goes with the budget, not the budget's own length
        assert [config_value(job.config, key) for key in keys] == [finetune_schedule(budget, key) for key in keys]
    assert finetune_schedule(budget, "train.epochs") < base.config.train.epochs


GROUPS = {group: sorted(path.stem for path in (Path(CONFIG_DIR) / group).glob("*.yaml"))
          for group in ("budget", "variant")}


@pytest.mark.parametrize(("group", "option"), [(group, option) for group, options in GROUPS.items()
                                                 for option in options])
def test_a_plain_run_selects_a_budget_or_a_variant_by_name(group, option):
    """`python train.py variant=lvae_bn_wu budget=quick`: both groups sit in the primary defaults list."""
    cfg = compose_config(f"{group}={option}", "layers=2")
    validate(cfg)
    if group == "budget":
        assert cfg.budget_name == option
    else:
        preset = OmegaConf.load(Path(CONFIG_DIR) / group / f"{option}.yaml")
        assert cfg.model.name == option.split("_")[0] and cfg.batch_norm == preset.batch_norm


def test_a_variant_with_warm_up_takes_the_budgets_length_on_a_plain_run():
    quick = compose_config("variant=lvae_bn_wu", "budget=quick")
    assert (quick.train.epochs, quick.warmup_epochs) == (10, 1)  # 10 % of quick's epochs
    assert compose_config("variant=vae_bn", "budget=quick").warmup_epochs == 0
    assert compose_config("variant=lvae_bn_wu").budget_name is None


def test_table1_datasets_picks_each_datasets_likelihood():
    likelihoods = {job.config.data.name: job.config.likelihood for job in _jobs("table1_datasets", None)}
    assert likelihoods == {"mnist": "bernoulli", "omniglot": "bernoulli", "norb": "gaussian"}
