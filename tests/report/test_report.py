"""The run table: finished runs with their numbers, unfinished and failed ones marked."""

import json
from pathlib import Path

from lvae.cli.report import main
from lvae.report.grid import build_grid
from lvae.report.markdown import budget_summary, markdown_table
from lvae.report.paper_numbers import paper_cell
from lvae.report.runs import OTHER_CODE_NOTE, RunRecord, collect_runs, find_run_dirs
from lvae.run.provenance import NUMERICS_VERSION


def _metrics(model: str, ll: float) -> dict:
    bound = {"mean": ll, "stderr": 0.5, "images": 300}
    return {
        "status": "completed", "model": model, "layers": 5, "batch_norm": True, "warmup_epochs": 1, "epochs": 5,
        "seed": 0, "test_log_likelihood": {**bound, "iw_samples": 5000}, "test_elbo": {**bound, "mean": ll - 5},
        "train_bound": {**bound, "iw_samples": 1, "mc_samples": 1}, "kl_per_layer": [20.0, 3.0, 0.1, 0.0, 0.0],
        "wall_time_s": {"total": 100.0}, "device": "cpu (x86_64, 2 threads)", "date": "2026-11-24T03:00:00+00:00",
        "numerics_version": NUMERICS_VERSION,
    }


def test_table_lists_finished_failed_and_unfinished_runs(tmp_path, capsys):
    for name, content in [("vae", _metrics("vae", -101.234)), ("lvae", _metrics("lvae", -99.5)),
                          ("nan", {"status": "failed", "reason": "non-finite loss at epoch 2, step 8"})]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(content))
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "config.yaml").write_text("layers: 5\n")

    runs = collect_runs([tmp_path])
    assert [r.run_dir.name for r in runs] == ["lvae", "nan", "started", "vae"]
    table = markdown_table(runs).splitlines()
    assert len(table) == 2 + 4
    assert "| vae | VAE+BN+WU | 5 | 5 | 1 | -101.23 ± 0.50 | 5000 |  | the first 300 (file order) |" in table[-1]
    assert "| nan | failed |" in table[3] and "| started | unfinished |" in table[4]

    main([str(tmp_path)])
    printed = capsys.readouterr().out
    assert "Budget: 5 epochs (a short budget, not the paper's 2000 epochs); test log p(x) with K=5000" in printed
    assert "cpu (x86_64, 2 threads), 2026-11-24" in printed


def test_budget_summary_without_finished_runs():
    assert budget_summary([]) == "No run has finished yet."
    assert budget_summary([RunRecord(Path("x"), "failed", {"status": "failed"}, None)]) == "No run has finished yet."


def test_budget_summary_counts_fine_tuning_apart(tmp_path):
    trained = RunRecord(tmp_path / "lvae", "completed", _metrics("lvae", -99.5), {"model.name": "lvae"})
    tuned = RunRecord(tmp_path / "mc10", "completed", {**_metrics("lvae", -98.0), "epochs": 1},
                      {"model.name": "lvae", "init_from": str(tmp_path / "lvae")})
    assert budget_summary([trained, tuned]).startswith(
        "Budget: 5 epochs (a short budget, not the paper's 2000 epochs); fine-tuning: 1 epoch more from a trained "
        "run; test log p(x) with K=5000")
    assert budget_summary([tuned]).startswith("Budget: 1 epoch (a short budget")


def test_runs_scored_by_other_code_are_marked(tmp_path):
    """A finished run whose estimators differ from the installed ones (or are unknown) is never shown
    as this code's result."""
    current = _metrics("lvae", -99.5)
    current["test_log_likelihood"]["remaining_gap"] = 0.123
    runs = [RunRecord(tmp_path / name, "completed", metrics, None) for name, metrics in [
        ("new", current), ("old", {**_metrics("vae", -90.0), "numerics_version": 1}),
        ("unknown", {k: v for k, v in _metrics("vae", -90.0).items() if k != "numerics_version"})]]
    table = markdown_table(runs).splitlines()
    assert table[2].startswith("| new | ") and "| 0.123 |" in table[2]
    assert table[3].startswith("| old † |") and table[4].startswith("| unknown † |")
    assert table[-1] == OTHER_CODE_NOTE
    assert OTHER_CODE_NOTE not in markdown_table(runs[:1])


def test_publish_copies_the_records_and_reports_them_again(tmp_path):
    runs, published = tmp_path / "outputs" / "sweep", tmp_path / "results" / "sweep"
    for name, ll in (("vae", -101.0), ("lvae", -99.0)):
        (runs / name).mkdir(parents=True)
        (runs / name / "metrics.json").write_text(json.dumps(_metrics(name, ll)))
        (runs / name / "checkpoint.pt").write_bytes(b"large")
    main([str(runs), "--publish", str(published)])
    assert sorted(p.name for p in published.iterdir()) == ["fig3.png", "lvae", "results.csv", "results.md", "vae"]
    assert not (published / "vae" / "checkpoint.pt").exists(), "checkpoints stay with the runs"
    assert [d.name for d in find_run_dirs([published])] == ["lvae", "vae"]


def test_no_run_output_is_tracked_by_git():
    """outputs/ is where runs go: a fresh clone must have none there, or `make reproduce` would
    show stored numbers instead of training. Published results live in results/."""
    import subprocess

    repo = Path(__file__).resolve().parent.parent.parent
    tracked = subprocess.run(["git", "ls-files", "outputs"], cwd=repo, capture_output=True, text=True)
    if tracked.returncode != 0:
        import pytest
        pytest.skip("not a git checkout")
    assert tracked.stdout == ""


def test_rows_of_other_datasets_carry_the_dataset_and_the_papers_number():
    def record(name: str, dataset: str) -> RunRecord:
        setting = {"model.name": "lvae", "batch_norm": True, "warmup_epochs": 200, "layers": 5, "seed": 0,
                   "data.name": dataset, "likelihood": "gaussian" if dataset == "norb" else "bernoulli"}
        return RunRecord(Path(name), "completed", _metrics("lvae", -90.0), setting)

    grid = build_grid([record(d, d) for d in ("mnist", "omniglot", "norb")])
    assert grid.rows == ["LVAE+BN+WU", "LVAE+BN+WU, norb", "LVAE+BN+WU, omniglot"]
    cells = {row: paper_cell("test_log_likelihood", row, grid.layers) for row in grid.rows}
    assert cells == {"LVAE+BN+WU": "-82.1 (L=5)", "LVAE+BN+WU, omniglot": "-102.1 (L=5)", "LVAE+BN+WU, norb": ""}
