"""`python -m lvae.paper` on records it cannot trust, an --out it cannot write, a full disk, a signal, a second
lvae.paper on the same folder: one message each, and the folder is never left half written."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import pytest

import lvae.cli.paper
from lvae.cli.children import Stopped, run_child
from lvae.cli.paper import main as paper_main
from lvae.report.output import report_title
from lvae.report.runs import collect_runs
from lvae.run.config import compose_config
from lvae.run.folder import hold_run_dir
from lvae.run.train import run

from ..helpers.datasets import write_synthetic_mnist

TINY = ["layers=1", "model.hidden_sizes=[32]", "model.latent_sizes=[4]", "train.batch_size=16", "train.epochs=1",
        "eval.iw_samples=4", "eval.test_subset=16", "eval.train_subset=32", "eval.analyze=false", "device=cpu",
        "train.progress=false", "eval.curve_every=0"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    """A VAE+BN+WU and an LVAE+BN+WU of one layer, as Figure 3's preset names them."""
    root = tmp_path_factory.mktemp("paper")
    data = f"data.root={write_synthetic_mnist(root / 'data')}"
    for variant in ("vae_bn_wu", "lvae_bn_wu"):
        run(compose_config("experiment=fig3", "budget=quick", f"variant={variant}", *TINY, data),
            root / "fig3-quick" / f"layers=1,seed=0,variant={variant}")
    return root / "fig3-quick"


@pytest.fixture
def runs(two_runs, tmp_path) -> Path:
    """A copy of the two runs, to damage."""
    return Path(shutil.copytree(two_runs, tmp_path / "fig3-quick"))


def _paper(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        paper_main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return exit_.value.code, out, err


def _edit_metrics(run_dir: Path, edit) -> None:
    path = run_dir / "metrics.json"
    path.write_text(edit(path.read_text()))


LVAE = "layers=1,seed=0,variant=lvae_bn_wu"
DAMAGES = {
    "truncated metrics.json": lambda d: _edit_metrics(d, lambda text: text[:100]),
    "a list": lambda d: _edit_metrics(d, lambda text: "[1, 2]"),
    "missing keys": lambda d: _edit_metrics(d, lambda text: json.dumps({"status": "completed"})),
    "unknown status": lambda d: _edit_metrics(d, lambda text: json.dumps({**json.loads(text), "status": "done"})),
    "a string mean": lambda d: _edit_metrics(d, lambda text: json.dumps(
        {**json.loads(text), "test_log_likelihood": {**json.loads(text)["test_log_likelihood"], "mean": "-90"}})),
    "an edited mean": lambda d: _edit_metrics(d, lambda text: json.dumps(
        {**json.loads(text), "test_log_likelihood": {**json.loads(text)["test_log_likelihood"], "mean": -80.0}})),
    # a pickle header (protocol 2, as torch.load expects: 4 adds a warning of its own) before garbage
    "corrupt per_image.pt": lambda d: (d / "per_image.pt").write_bytes(b"\x80\x02garbage"),
    "truncated per_image.pt": lambda d: (d / "per_image.pt").write_bytes((d / "per_image.pt").read_bytes()[:200]),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_a_record_that_cannot_be_trusted_is_left_out_with_one_line(runs, tmp_path, capsys, damage):
    DAMAGES[damage](runs / LVAE)
    code, out, err = _paper(capsys, "--from", str(runs), "--out", str(tmp_path / "paper"))
    assert code == 0, err
    said = [line for line in err.splitlines() if str(runs / LVAE) in line]
    assert len(said) == 1 and said[0].startswith("left out: "), err
    index = (tmp_path / "paper" / "index.md").read_text()
    assert "**Runs left out**" in index and str(runs / LVAE) in index


def test_a_run_of_another_numerics_version_is_left_out_and_said(runs, tmp_path, capsys):
    _edit_metrics(runs / LVAE, lambda text: json.dumps({**json.loads(text), "numerics_version": 1}))
    code, _, err = _paper(capsys, "--from", str(runs), "--out", str(tmp_path / "paper"))
    assert code == 0 and "left out: " in err and "numerics version 1" in err
    index = (tmp_path / "paper" / "index.md").read_text()
    assert "numerics version 1" in index.split("## ")[0], "said before the items"


@pytest.mark.parametrize("argv, said", [
    (["--seeds", "0"], "not a positive integer"), (["--budget", "nonexistent"], "not a budget of configs/budget/"),
    (["--out", "{file}"], "exists and is not a folder"), (["--out", "{file}/paper"], "exists and is not a folder"),
])
def test_bad_arguments_are_refused_before_anything_runs(tmp_path, monkeypatch, capsys, argv, said):
    monkeypatch.setattr(lvae.cli.paper, "run_child", lambda command: pytest.fail("a command ran"))
    (tmp_path / "file").write_text("")
    code, _, err = _paper(capsys, *(arg.format(file=tmp_path / "file") for arg in argv))
    assert code == 2 and said in err and err.count("usage:") <= 1 and err.count(said) == 1, err


def _previous_paper(runs: Path, out: Path, capsys) -> dict[str, bytes]:
    """out written by lvae.paper once: what a failed or stopped second write must leave."""
    assert _paper(capsys, "--from", str(runs), "--out", str(out))[0] == 0
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _unchanged(out: Path, before: dict[str, bytes]) -> bool:
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return not leftovers and before == {str(p.relative_to(out)): p.read_bytes()
                                        for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_full_disk_while_writing_names_the_file_and_leaves_the_folder_as_it_was(runs, tmp_path, monkeypatch,
                                                                                  capsys):
    out = tmp_path / "paper"
    before = _previous_paper(runs, out, capsys)
    write_paper = lvae.cli.paper.write_paper

    def fills_up(records, folder, **kwargs):
        write_paper(records, folder, **kwargs)  # a whole new folder, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "index.md"))

    monkeypatch.setattr(lvae.cli.paper, "write_paper", fills_up)
    code, _, err = _paper(capsys, "--from", str(runs), "--out", str(out))
    assert code == 2 and "No space left on device" in err and "index.md" in err and "left as it was" in err
    assert _unchanged(out, before)


def test_a_signal_while_writing_leaves_the_folder_as_it_was(runs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "paper"
    before = _previous_paper(runs, out, capsys)
    write_paper = lvae.cli.paper.write_paper

    def interrupted(records, folder, **kwargs):
        write_paper(records, folder, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(lvae.cli.paper, "write_paper", interrupted)
    code, _, err = _paper(capsys, "--from", str(runs), "--out", str(out))
    assert code == 130 and "stopped by SIGINT" in err and "left as it was" in err
    assert _unchanged(out, before)


def test_a_second_paper_on_the_same_folder_is_refused(runs, tmp_path, capsys):
    out = tmp_path / "paper"
    with hold_run_dir(tmp_path / ".paper.lock"):  # what a running lvae.paper holds
        code, _, err = _paper(capsys, "--from", str(runs), "--out", str(out))
    assert code == 75 and "another lvae.paper is writing" in err and not out.exists()


def test_a_signal_reaches_the_child_and_the_parent_waits_for_it(tmp_path):
    """SIGTERM to lvae.paper (here: this process) is passed on to the command it runs, which stops first."""
    stopped = tmp_path / "child stopped"
    child = (f"import signal, sys, time, pathlib\n"
             f"def stop(signum, frame):\n    time.sleep(0.5); pathlib.Path({str(stopped)!r}).write_text('yes'); "
             f"sys.exit(143)\n"
             f"signal.signal(signal.SIGTERM, stop)\npathlib.Path({str(tmp_path / 'started')!r}).write_text('')\n"
             f"time.sleep(60)\n")

    def signal_once_started():
        while not (tmp_path / "started").exists():
            threading.Event().wait(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=signal_once_started, daemon=True).start()
    with pytest.raises(Stopped) as error:
        run_child([sys.executable, "-c", child])
    assert error.value.signum == signal.SIGTERM and stopped.read_text() == "yes", "the child stopped before the parent"


def test_a_folder_of_a_config_yaml_alone_is_not_labelled_the_papers_budget(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.yaml").write_text("seed: 0\n")
    assert "the paper's budget" not in report_title(collect_runs([tmp_path]), tmp_path)


def test_overrides_refused_by_the_first_step_are_refused_once(tmp_path, monkeypatch, capsys):
    commands = []
    monkeypatch.setattr(lvae.cli.paper, "run_child", lambda command: commands.append(command) or 2)
    code, _, _ = _paper(capsys, "--budget", "quick", "--out", str(tmp_path / "paper"), "layers=abc")
    assert code == 2 and len(commands) == 1 and not (tmp_path / "paper").exists()


@pytest.mark.parametrize("argv, said", [(["--budget", "nope"], "not a budget of configs/budget/"),
                                        (["layers=abc"], "layers=abc"), (["lyers=5"], "lyers")])
def test_reproduce_refuses_a_bad_budget_or_override_in_one_message(capsys, argv, said):
    from lvae.cli.reproduce import main as reproduce_main

    with pytest.raises(SystemExit) as exit_:
        reproduce_main(["--dry-run", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and said in err and "Traceback" not in err, err


def test_a_folder_written_again_from_the_records_it_holds_keeps_them_and_its_analysis(tmp_path, capsys):
    """results/paper-quick is written from its own runs/ (records without weights): written again in whole, it
    keeps runs/ and the analysis/ that the runs' checkpoints once gave it."""
    out = tmp_path / "paper-quick"
    shutil.copytree(Path(__file__).resolve().parents[2] / "results" / "paper-quick", out)
    records_before = sorted(path.relative_to(out) for path in (out / "runs").rglob("*") if path.is_file())
    code, said, _ = _paper(capsys, "--from", str(out / "runs"), "--out", str(out))
    assert code == 0, said
    assert sorted(path.relative_to(out) for path in (out / "runs").rglob("*") if path.is_file()) == records_before
    assert (out / "analysis" / "pca.png").is_file() and (out / "index.md").is_file()
