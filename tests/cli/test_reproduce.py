"""Reproducing the paper: the presets, the budgets, the report of a sweep, the launchers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lvae.cli.report import main as report_main
from lvae.cli.reproduce import (IW_SAMPLES_PER_SECOND, SECONDS_PER_EPOCH, describe_other_code, estimate_jobs,
                                estimate_run)
from lvae.cli.reproduce import main as reproduce_main
from lvae.report.paper_numbers import BUDGET_KEYS
from lvae.report.runs import collect_runs
from lvae.run.config import CONFIG_DIR, compose_config, config_to_dict, config_value, config_yaml
from lvae.run.provenance import NUMERICS_VERSION
from lvae.run.sweep import expand_overrides, sweep_jobs

from ..helpers import REPO
from ..helpers.datasets import write_synthetic_mnist

# (model, batch norm, warm-up on) of Figure 3's variants
FIG3_VARIANTS = {"vae": ("vae", False, False), "vae_bn": ("vae", True, False),
                 "vae_bn_wu": ("vae", True, True), "lvae_bn_wu": ("lvae", True, True)}
# A model small enough that a run on the synthetic set takes a fraction of a second.
TINY = ["model.hidden_sizes=[32,16,8,8,8]", "model.latent_sizes=[4,2,2,2,2]", "train.batch_size=16",
        "train.epochs=1", "eval.iw_samples=8", "eval.test_subset=16", "eval.train_subset=32", "eval.analyze=false",
        "device=cpu", "train.progress=false"]


def _variant(cfg) -> tuple:
    return cfg.model.name, cfg.batch_norm, cfg.warmup_epochs > 0


def test_fig3_preset_is_the_four_variants_times_five_depths():
    jobs = sweep_jobs(["experiment=fig3"])
    assert len(jobs) == 20
    assert len({job.run_dir for job in jobs}) == 20
    assert {job.sweep_dir for job in jobs} == {Path("outputs/fig3-paper")}
    grid = {(job.overrides[0].removeprefix("variant="), job.config.layers): job.config for job in jobs}
    assert set(grid) == {(variant, layers) for variant in FIG3_VARIANTS for layers in range(1, 6)}
    for (variant, _), cfg in grid.items():
        assert _variant(cfg) == FIG3_VARIANTS[variant]
        assert (cfg.train.epochs, cfg.warmup_epochs, cfg.seed) == (2000, 200 if cfg.warmup_epochs else 0, 0)
    assert jobs[0].run_dir == Path("outputs/fig3-paper/layers=1,seed=0,variant=vae")


def test_seeds_on_the_command_line_replace_the_presets_seed():
    jobs = sweep_jobs(["experiment=fig3", "budget=quick", "seed=0,1,2", "layers=5", "variant=lvae_bn_wu"])
    assert [job.run_dir.name for job in jobs] == [f"layers=5,seed={seed},variant=lvae_bn_wu" for seed in range(3)]
    assert {job.sweep_dir for job in jobs} == {Path("outputs/fig3-quick")}


def _flat_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys |= _flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return keys


BUDGETS = sorted(p.stem for p in (Path(CONFIG_DIR) / "budget").glob("*.yaml"))


@pytest.mark.parametrize("budget", BUDGETS)
def test_budgets_set_only_training_length_and_evaluation(budget):
    budget_file = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "budget" / f"{budget}.yaml"))
    assert set(budget_file.pop("defaults", [])) <= {*BUDGETS, "_self_"}, "a budget extends only another budget"
    assert _flat_keys(budget_file) <= {*BUDGET_KEYS, "budget_name"}


def test_budgets_keep_the_model_and_the_papers_warmup_ratio():
    model_keys = ("model", "layers", "batch_norm", "likelihood", "data.binarize", "train.lr", "train.batch_size")
    for variant in FIG3_VARIANTS:
        configs = {budget: compose_config("experiment=fig3", f"budget={budget}", f"variant={variant}")
                   for budget in ("paper", "quick")}
        models = [{key: config_value(config_to_dict(cfg), key) for key in model_keys} for cfg in configs.values()]
        assert models[0] == models[1]
        for cfg in configs.values():
            assert _variant(cfg) == FIG3_VARIANTS[variant]
            assert cfg.warmup_epochs in (0, cfg.train.epochs // 10)


def test_the_estimate_counts_what_a_run_does(tmp_path):
    """Epochs at the eager or the compiled rate, as `auto` decides; each training-curve point; what is left
    of an interrupted run."""
    def run_estimate(*overrides: str, epochs_done: int = 0):
        return estimate_run(compose_config("experiment=fig3", "budget=quick", "layers=5", *overrides), epochs_done)

    no_curves = run_estimate("eval.curve_every=0")
    assert no_curves.train == pytest.approx(10 * SECONDS_PER_EPOCH[False]), "quick: 10 eager epochs of 5 layers"
    curve = 1000 * (100 + 2) / IW_SAMPLES_PER_SECOND[False]  # K=100 on 1,000 test images, two 1-sample passes
    assert run_estimate().evaluate - no_curves.evaluate == pytest.approx(10 * curve), "a point after every epoch"
    assert run_estimate("eval.curve_every=5").evaluate - no_curves.evaluate == pytest.approx(2 * curve)
    assert run_estimate(epochs_done=6).evaluate - no_curves.evaluate == pytest.approx(4 * curve)
    assert run_estimate("train.compile=true").train == pytest.approx(10 * SECONDS_PER_EPOCH[True])
    long = run_estimate("train.epochs=200", "eval.curve_every=0")  # 46,800 steps: `auto` compiles on the CPU
    assert long.train == pytest.approx(200 * SECONDS_PER_EPOCH[True])
    jobs = sweep_jobs(["experiment=fig3", "budget=quick", f"hydra.sweep.dir={tmp_path}"])
    estimate, complete, other_code = estimate_jobs(jobs)
    assert complete == 0 and other_code == []
    assert estimate.train < 20 * 10 * SECONDS_PER_EPOCH[False], "shallower models cost their share"


def test_complete_runs_of_another_numerics_version_are_counted_and_named(tmp_path):
    """A stored result of another numerics version is never taken silently: reproduce names it."""
    jobs = sweep_jobs(["experiment=fig3", "budget=quick", "variant=vae", "layers=1,2", f"hydra.sweep.dir={tmp_path}"])
    for job, numerics_version in zip(jobs, [NUMERICS_VERSION, 1]):
        job.run_dir.mkdir(parents=True)
        (job.run_dir / "config.yaml").write_text(config_yaml(job.config))
        (job.run_dir / "metrics.json").write_text(json.dumps(
            {"status": "completed", "epochs": job.config.train.epochs, "numerics_version": numerics_version}))
    _, complete, other_code = estimate_jobs(jobs)
    assert complete == 2 and other_code == [jobs[1].run_dir]
    assert str(jobs[1].run_dir) in describe_other_code(other_code)


def test_slurm_preset_is_submitit_with_overridable_resources():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                           "hydra.launcher.timeout_min=60"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.gpus_per_node) == ("gpu", 60, 1)
    assert launcher.max_num_timeout > 0  # a job that hits its time limit is resubmitted and resumes


# --- The report of a sweep --------------------------------------------------------------------

def _completed(cfg, ll: float, active_kl: list[int]) -> dict:
    bound = {"mean": ll, "stderr": 1.0, "images": 300}
    return {
        "status": "completed", "model": cfg.model.name, "layers": cfg.layers, "batch_norm": cfg.batch_norm,
        "warmup_epochs": cfg.warmup_epochs, "epochs": cfg.train.epochs, "seed": cfg.seed,
        "test_log_likelihood": {**bound, "iw_samples": 5000}, "test_elbo": {**bound, "mean": ll - 4},
        "train_bound": {**bound, "mean": ll - 2, "iw_samples": 1, "mc_samples": 1},
        "kl_per_layer": [10.0] * cfg.layers, "wall_time_s": {"total": 60.0},
        "active_units": {"layer_sizes": [64, 32][: cfg.layers], "kl": active_kl, "cov": [n - 1 for n in active_kl]},
        "device": "cpu (x86_64, 2 threads)", "date": "2026-11-24T05:00:00+00:00",
        "command": "train.py -m experiment=fig3 budget=quick", "numerics_version": NUMERICS_VERSION,
    }


def _write_run(job, metrics: dict | None) -> None:
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "config.yaml").write_text(config_yaml(job.config))
    if metrics is not None:
        (job.run_dir / "metrics.json").write_text(json.dumps(metrics))


def test_report_of_a_sweep_with_seeds_a_failed_a_running_and_missing_runs(tmp_path, capsys):
    sweep = tmp_path / "fig3-quick"
    task = ["experiment=fig3", "budget=quick", "variant=vae,lvae_bn_wu", "layers=1,2", "seed=0,1"]
    sweep.mkdir()
    OmegaConf.save({"hydra": {"overrides": {"hydra": ["hydra.mode=MULTIRUN"], "task": task}}},
                   sweep / "multirun.yaml")
    jobs = {(job.config.model.name, job.config.layers, job.config.seed): job
            for job in sweep_jobs(task, sweep_dir=sweep)}
    vae_1 = jobs["vae", 1, 0].config
    _write_run(jobs["vae", 1, 0], _completed(vae_1, -100.0, [20]))
    _write_run(jobs["vae", 1, 1], _completed(jobs["vae", 1, 1].config, -102.0, [22]))
    _write_run(jobs["vae", 2, 0], _completed(jobs["vae", 2, 0].config, -98.0, [20, 3]))
    _write_run(jobs["vae", 2, 1], {"status": "failed", "reason": "non-finite loss at epoch 2, step 8"})
    _write_run(jobs["lvae", 1, 0], _completed(jobs["lvae", 1, 0].config, -97.5, [25]))
    _write_run(jobs["lvae", 1, 1], {"status": "running", "epoch": 3, "step": 700})
    # lvae with 2 layers: no folder for either seed

    report_main([str(sweep)])
    printed = capsys.readouterr().out
    assert "wrote" in printed and "| failed |" in printed

    results = (sweep / "results.md").read_text()
    assert "a short budget, not the paper's" in results and "train.epochs=10 (paper: 2000)" in results
    assert "eval.test_subset=300 (paper: all)" in results
    assert "- Hardware: cpu (x86_64, 2 threads)" in results
    assert "- Runs: 8 (4 completed, 1 failed, 2 missing, 1 running)" in results
    test_ll = results.split("## c) Test log-likelihood, K=5000 (nats)")[1].split("##")[0]
    assert "| variant | 1 layer | 2 layers | paper |" in test_ll
    assert "| VAE | -101.00 ± 1.41 (n=2) | -98.00; 1 failed | -85.33 (L=2) |" in test_ll
    assert "| LVAE+BN+WU | -97.50; 1 running | 2 missing |  |" in test_ll
    assert "| VAE | -103.00 ± 1.41 (n=2) | -100.00; 1 failed |  |" in results  # a) the train bound
    assert "| VAE | 21.0 ± 1.4 / 20.0 ± 1.4 (n=2) | 23 / 21; 1 failed |" in results  # active units
    assert "non-finite loss at epoch 2, step 8" in results
    assert f"`{jobs['lvae', 2, 1].run_dir}`" in results  # listed as missing

    with (sweep / "results.csv").open() as file:
        rows = {(r["variant"], r["layers"], r["quantity"]): r for r in csv.DictReader(file)}
    cell = rows["VAE", "1", "test_log_likelihood"]
    assert (float(cell["mean"]), round(float(cell["std"]), 3), cell["completed_runs"]) == (-101.0, 1.414, "2")
    assert rows["VAE", "2", "test_log_likelihood"]["paper"] == "-85.33"
    assert rows["LVAE+BN+WU", "2", "test_elbo"]["runs_without_result"].count("missing") == 2
    assert (sweep / "fig3.png").stat().st_size > 10_000


def test_runs_that_differ_in_more_than_the_seed_are_never_averaged(tmp_path):
    task = ["experiment=fig3", "budget=quick", "variant=vae", "layers=1", "train.lr=0.002,0.001"]
    jobs = sweep_jobs(task, sweep_dir=tmp_path)
    for job, ll in zip(jobs, (-100.0, -110.0)):
        _write_run(job, _completed(job.config, ll, [20]))
    report_main([str(tmp_path)])
    results = (tmp_path / "results.md").read_text()
    assert "| VAE [train.lr=0.001] | -110.00 |" in results and "| VAE [train.lr=0.002] | -100.00 |" in results


# --- Launchers and the one-command reproduction, on a tiny synthetic sweep --------------------

def _sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    data = write_synthetic_mnist(tmp_path / "data")
    command = [sys.executable, "train.py", "-m", "layers=1,2", *TINY, f"data.root={data}",
               f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _launched_by_joblib(result: subprocess.CompletedProcess, sweep: Path) -> bool:
    return "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr


def _launched_by_submitit(result: subprocess.CompletedProcess, sweep: Path) -> bool:
    return any((sweep / ".submitit").glob("*/*_result.pkl"))


@pytest.mark.slow  # starts sweeps of processes
@pytest.mark.parametrize("launcher, launched", [
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], _launched_by_joblib),
    (["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"], _launched_by_submitit),
], ids=["joblib", "submitit_local"])
def test_launcher_runs_a_tiny_sweep(tmp_path, launcher, launched):
    result = _sweep(tmp_path, *launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    assert launched(result, tmp_path / "sweep")
    records = collect_runs([tmp_path / "sweep"])
    assert len(records) == 2
    assert [r.status for r in records] == ["completed", "completed"]  # none missing: the folder names match


def test_reproduce_estimates_runs_and_reports(tmp_path, monkeypatch, capsys):
    data = write_synthetic_mnist(tmp_path / "data")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    reproduce_main(["--budget", "quick", "--seeds", "2", "variant=vae", "layers=1", *TINY, f"data.root={data}",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    printed = capsys.readouterr().out
    assert printed.startswith("ESTIMATE (not a measurement) for experiment=fig3 budget=quick: 2 runs")
    results = (tmp_path / "sweep" / "results.md").read_text()
    assert "| VAE |" in results and "(n=2)" in results
    run_dirs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert len(run_dirs) == 2 and "seed=0" in run_dirs[0] and "seed=1" in run_dirs[1]


def test_sweep_expansion_keeps_the_basic_sweepers_job_order():
    """One choice list per key in the order the keys first appear (a command-line key takes its param's
    place), the last key varying fastest: the order in which `python train.py -m` launches the jobs."""
    jobs = expand_overrides(["seed=0,1", "train.lr=0.1"], {"variant": "vae,lvae_bn_wu", "layers": "1,2", "seed": "0"})
    assert jobs == [[f"variant={variant}", f"layers={layers}", f"seed={seed}", "train.lr=0.1"]
                    for variant in ("vae", "lvae_bn_wu") for layers in (1, 2) for seed in (0, 1)]
    assert expand_overrides(["+x=range(0,3)", "~y"]) == [[f"+x={x}", "~y=null"] for x in range(3)]
