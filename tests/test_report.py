"""The run table: finished runs with their numbers, unfinished and failed ones marked."""

import json

from lvae.provenance import code_fingerprint
from lvae.report import OTHER_CODE_NOTE, budget_summary, find_runs, main, markdown_table


def _metrics(model: str, ll: float) -> dict:
    bound = {"mean": ll, "stderr": 0.5, "images": 300}
    return {
        "status": "completed", "model": model, "layers": 5, "batch_norm": True, "warmup_epochs": 1, "epochs": 5,
        "test_log_likelihood": {**bound, "iw_samples": 5000}, "test_elbo": {**bound, "mean": ll - 5},
        "train_bound": {**bound, "iw_samples": 1, "mc_samples": 1}, "kl_per_layer": [20.0, 3.0, 0.1, 0.0, 0.0],
        "wall_time_s": {"total": 100.0}, "device": "cpu (x86_64, 2 threads)", "date": "2026-11-24T03:00:00+00:00",
        "code_fingerprint": code_fingerprint(),
    }


def test_table_lists_finished_failed_and_unfinished_runs(tmp_path, capsys):
    for name, content in [("vae", _metrics("vae", -101.234)), ("lvae", _metrics("lvae", -99.5)),
                          ("nan", {"status": "failed", "reason": "non-finite loss at epoch 2, step 8"})]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(content))
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "config.yaml").write_text("layers: 5\n")

    runs = find_runs([tmp_path])
    assert [d.name for d, _ in runs] == ["lvae", "nan", "started", "vae"]
    table = markdown_table(runs).splitlines()
    assert len(table) == 2 + 4
    assert "| vae | VAE+BN+WU1 | 5 | 5 | -101.23 ± 0.50 | 5000 |  | 300 |" in table[-1]
    assert "| nan | failed |" in table[3] and "| started | unfinished |" in table[4]

    main([str(tmp_path)])
    printed = capsys.readouterr().out
    assert "Budget: 5 epochs (a short budget, not the paper's 2000 epochs); test log p(x) with K=5000" in printed
    assert "cpu (x86_64, 2 threads), 2026-11-24" in printed


def test_budget_summary_without_finished_runs():
    assert budget_summary([]) == "No run has finished yet."


def test_runs_scored_by_other_code_are_marked(tmp_path):
    """A finished run whose estimators differ from the installed ones (or are unknown) is never shown
    as this code's result."""
    current = _metrics("lvae", -99.5)
    current["test_log_likelihood"]["remaining_gap"] = 0.123
    runs = [(tmp_path / "new", current), (tmp_path / "old", {**_metrics("vae", -90.0), "code_fingerprint": "0" * 16}),
            (tmp_path / "unknown", {**_metrics("vae", -90.0), "code_fingerprint": None})]
    table = markdown_table(runs).splitlines()
    assert table[2].startswith("| new | ") and "| 0.123 |" in table[2]
    assert table[3].startswith("| old † |") and table[4].startswith("| unknown † |")
    assert table[-1] == OTHER_CODE_NOTE
    assert OTHER_CODE_NOTE not in markdown_table(runs[:1])
