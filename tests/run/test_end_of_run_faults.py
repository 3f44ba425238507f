"""The last steps of a run: a full disk during the analysis figures, a damaged record of a completed run, and
what per_image.pt holds."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

import lvae.run.analysis
from lvae.run.config import compose_config
from lvae.run.outcomes import RunWriteFailed
from lvae.run.record import RecordError
from lvae.run.train import run

from ..helpers.datasets import write_synthetic_mnist
from .test_reliability import TINY


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_synthetic_mnist(tmp_path_factory.mktemp("data"))


def _config(data_root: Path, *overrides: str):
    return compose_config(*TINY, f"data.root={data_root}", "train.epochs=1", *overrides)


def test_a_full_disk_during_the_analysis_names_the_figure_and_the_run_is_not_completed(data_root, tmp_path,
                                                                                       monkeypatch):
    def full_disk(*args, **kwargs):  # as matplotlib's savefig fails on a full disk: the OS error names no file
        raise OSError(errno.ENOSPC, "No space left on device")

    plot_pca = lvae.run.analysis.plot_pca
    monkeypatch.setattr(lvae.run.analysis, "plot_pca", full_disk)
    with pytest.raises(RunWriteFailed, match=f"could not write {tmp_path / 'pca.png'}: No space left on device"):
        run(_config(data_root, "eval.analyze=true"), tmp_path)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "failed" and "pca.png" in record["reason"], "never completed with a failed write"
    first = torch.load(tmp_path / "per_image.pt", weights_only=True)

    monkeypatch.setattr(lvae.run.analysis, "plot_pca", plot_pca)
    metrics = run(_config(data_root, "eval.analyze=true"), tmp_path)  # the disk has room again: a rerun repairs it
    assert metrics["status"] == "completed" and (tmp_path / "pca.png").is_file()
    again = torch.load(tmp_path / "per_image.pt", weights_only=True)
    assert all(torch.equal(first[key], again[key]) for key in first), "the same numbers"


def test_a_rerun_over_a_completed_run_with_a_truncated_record_is_refused_by_name(data_root, tmp_path):
    run(_config(data_root, "eval.analyze=false"), tmp_path)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(metrics.read_text()[:50])
    kept = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(RecordError, match=f"{metrics} cannot be read"):
        run(_config(data_root, "eval.analyze=false"), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == kept


def test_per_image_holds_the_indices_of_the_evaluated_images_only(data_root, tmp_path):
    run(_config(data_root, "eval.analyze=false", "eval.test_subset=5"), tmp_path)
    indices = torch.load(tmp_path / "per_image.pt", weights_only=True)["test_indices"]
    assert len(indices) == 5 and indices.untyped_storage().nbytes() == 5 * indices.element_size()


def test_a_full_disk_under_tensorboard_names_its_folder_without_a_thread_traceback(data_root, tmp_path, monkeypatch,
                                                                                 capfd):
    from tensorboard.summary.writer import record_writer

    def full_disk(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(record_writer.RecordWriter, "write", full_disk)
    with pytest.raises(RunWriteFailed, match=f"could not write {tmp_path / 'tensorboard'}: No space left on device"):
        run(_config(data_root, "eval.analyze=false"), tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception in thread" not in err, err
