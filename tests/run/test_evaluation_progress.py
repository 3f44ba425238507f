"""The end-of-run K-sample pass saved block by block (lvae/run/evaluation_progress.py): the same numbers as one
pass, bit for bit, and a stopped pass resumes at its first unsaved block, never with another model's blocks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import lvae.run.evaluation_progress as progress
from lvae.core.evaluate import EvalSettings, chunk_layout, iw_log_likelihood_halves
from lvae.run.evaluation_progress import EVALUATION_PROGRESS_FILE, SavedHalvesPass

from ..core.test_models import D, small_model

IMAGES = 100  # not a multiple of the chunks: the last one is padded, in one pass as in blocks


@pytest.fixture
def model_and_images():
    torch.manual_seed(0)
    model = small_model("lvae", layers=3).eval()
    images = torch.bernoulli(torch.rand(IMAGES, D))
    indices = torch.randperm(10_000)[:IMAGES]  # indices in a larger test set, as a random sample has
    return model, images, indices


def _calls(monkeypatch, stop_at: int | None = None) -> dict:
    """Count the blocks the pass computes; with stop_at, raise KeyboardInterrupt instead of computing that one."""
    calls = {"n": 0}

    def counted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == stop_at:
            raise KeyboardInterrupt
        return iw_log_likelihood_halves(*args, **kwargs)

    monkeypatch.setattr(progress, "iw_log_likelihood_halves", counted)
    return calls


# A budget of whole-sample chunks, and one so small that an image's samples are split over chunks.
@pytest.mark.parametrize("budget, k", [(0.2, 40), (0.002, 250)], ids=["image-chunks", "sample-chunks"])
@pytest.mark.parametrize("block_images", [16, 48, 10_000])
def test_the_blocked_pass_gives_one_passs_numbers_bit_for_bit(model_and_images, tmp_path, monkeypatch, budget, k,
                                                               block_images):
    model, images, indices = model_and_images
    monkeypatch.setattr(progress, "BLOCK_IMAGES", block_images)
    settings = EvalSettings(iw_samples=k, memory_budget_mb=budget, seed=3)
    one_pass = iw_log_likelihood_halves(model, images, k, budget, indices=indices, seed=3)
    calls = _calls(monkeypatch)
    blocked = SavedHalvesPass(tmp_path, settings)(model, images, indices)
    assert torch.equal(blocked, one_pass)
    chunk_images, _ = chunk_layout(model, IMAGES, k, budget)
    assert chunk_images < IMAGES, "the test needs several chunks"
    assert calls["n"] == (1 if block_images >= IMAGES else -(-IMAGES // max(chunk_images, block_images)))


def test_a_stopped_pass_resumes_at_its_first_unsaved_block(model_and_images, tmp_path, monkeypatch):
    model, images, indices = model_and_images
    monkeypatch.setattr(progress, "BLOCK_IMAGES", 16)
    settings = EvalSettings(iw_samples=40, memory_budget_mb=0.2, seed=3)
    _calls(monkeypatch, stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        SavedHalvesPass(tmp_path, settings)(model, images, indices)
    saved = torch.load(tmp_path / EVALUATION_PROGRESS_FILE, weights_only=True)
    assert saved["done"].tolist()[:3] == [True, True, False], "two blocks were saved before the stop"
    calls = _calls(monkeypatch)
    resumed = SavedHalvesPass(tmp_path, settings)(model, images, indices)
    assert calls["n"] == len(saved["done"]) - 2, "only the blocks not saved"
    assert torch.equal(resumed, iw_log_likelihood_halves(model, images, 40, 0.2, indices=indices, seed=3))


@pytest.mark.parametrize("change", ["weights", "K", "seed", "images"])
def test_saved_blocks_of_another_evaluation_are_never_taken(model_and_images, tmp_path, monkeypatch, change):
    model, images, indices = model_and_images
    monkeypatch.setattr(progress, "BLOCK_IMAGES", 16)
    settings = EvalSettings(iw_samples=40, memory_budget_mb=0.2, seed=3)
    SavedHalvesPass(tmp_path, settings)(model, images, indices)  # all blocks saved (deleting the file is the run's)
    if change == "weights":
        with torch.no_grad():
            next(model.parameters()).add_(1e-6)
    elif change == "K":
        settings = dataclasses.replace(settings, iw_samples=48)
    elif change == "seed":
        settings = dataclasses.replace(settings, seed=4)
    else:
        indices = indices.flip(0)
    calls = _calls(monkeypatch)
    again = SavedHalvesPass(tmp_path, settings)(model, images, indices)
    assert calls["n"] > 1, "every block computed again"
    expected = iw_log_likelihood_halves(model, images, settings.iw_samples, 0.2, indices=indices, seed=settings.seed)
    assert torch.equal(again, expected)


@pytest.mark.parametrize("content", [b"", b"\x80\x02garbage", b"PK\x03\x04 truncated zip"])
def test_a_damaged_progress_file_is_evaluated_over(model_and_images, tmp_path, content):
    model, images, indices = model_and_images
    (tmp_path / EVALUATION_PROGRESS_FILE).write_bytes(content)
    settings = EvalSettings(iw_samples=40, memory_budget_mb=0.2, seed=3)
    halves = SavedHalvesPass(tmp_path, settings)(model, images, indices)
    assert torch.equal(halves, iw_log_likelihood_halves(model, images, 40, 0.2, indices=indices, seed=3))
