"""The end-of-run K-sample pass over the test images, saved as it goes, so that a stopped evaluation resumes.

At K=5000 on all 10,000 test images the pass takes half an hour on one CPU thread; a stop during it (a signal
ends the process at once there, see lvae.run.outcomes.StopRequest) would cost all of it. Here the pass runs in
blocks of whole evaluation chunks, and after each block the estimates so far are written to EVALUATION_PROGRESS_FILE
in the run folder (atomically: a kill leaves the previous version). A rerun takes the saved blocks and computes
the others; the file is deleted once metrics.json holds the results.

Exact: a block is a run of consecutive chunks of the one pass (`lvae.core.evaluate.chunk_layout` for the whole
test set), each with the images, samples and noise it has in that pass, so the blocked pass computes what one
pass computes, chunk for chunk. Saved blocks are taken only by an evaluation of the same model (a hash of the
evaluated weights and batch-norm statistics), settings, numerics version and test images; else they are
computed again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lvae.core.evaluate import EvalSettings, chunk_layout, iw_log_likelihood_halves
from lvae.core.models import HierarchicalVAE
from lvae.run.folder import atomic_write
from lvae.run.provenance import NUMERICS_VERSION

log = logging.getLogger(__name__)

EVALUATION_PROGRESS_FILE = "evaluation_progress.pt"
BLOCK_IMAGES = 512  # about this many test images between two saves: ~1.5 minutes at K=5000 on one CPU thread


def evaluation_identity(model: HierarchicalVAE, settings: EvalSettings, indices: torch.Tensor) -> str:
    """A hash of what the pass's numbers depend on: the evaluated model's state, the settings (but the progress
    bar), the numerics version, the device type and the test images."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    measured = {key: value for key, value in dataclasses.asdict(settings).items() if key != "progress"}
    device = next(model.parameters()).device.type
    digest.update(f"{sorted(measured.items())}/numerics {NUMERICS_VERSION}/{device}".encode())
    digest.update(indices.cpu().numpy().tobytes())
    return digest.hexdigest()


class SavedHalvesPass:
    """`lvae.core.evaluate.HalvesPass` that saves its progress in run_dir (see the module's docstring)."""

    def __init__(self, run_dir: Path, settings: EvalSettings):
        self.path = run_dir / EVALUATION_PROGRESS_FILE
        self.settings = settings

    def __call__(self, model: HierarchicalVAE, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        s = self.settings
        chunk_images, _ = chunk_layout(model, len(images), s.iw_samples, s.memory_budget_mb)
        block = max(1, round(BLOCK_IMAGES / chunk_images)) * chunk_images  # whole chunks of the one pass
        identity = evaluation_identity(model, s, indices)
        halves, done = self._saved(identity, block, math.ceil(len(images) / block), len(images))
        saved_images = sum(min(block, len(images) - b * block) for b in range(len(done)) if done[b])
        if saved_images:
            log.info("evaluation: the K=%d pass had saved %d of its %d test images (%s); computing the others",
                     s.iw_samples, saved_images, len(images), self.path)
        bar = tqdm(total=len(images), initial=saved_images,
                   desc=f"log p(x), K={s.iw_samples}", unit="img", disable=not s.progress, leave=False)
        for b in range(len(done)):
            if done[b]:
                continue
            rows = slice(b * block, (b + 1) * block)
            halves[:, rows] = iw_log_likelihood_halves(model, images[rows], s.iw_samples, s.memory_budget_mb,
                                                       indices=indices[rows], seed=s.seed)
            done[b] = True
            saved = {"identity": identity, "block": block, "halves": halves.cpu(), "done": done}
            atomic_write(self.path, lambda f: torch.save(saved, f))
            bar.update(min(block, len(images) - b * block))
        bar.close()
        return halves.to(images.device)

    def _saved(self, identity: str, block: int, n_blocks: int, n_images: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(halves, done per block): the saved ones when they belong to this evaluation, else empty."""
        empty = (torch.full((2, n_images), math.nan, dtype=torch.float64), torch.zeros(n_blocks, dtype=torch.bool))
        if not self.path.is_file():
            return empty
        try:
            saved = torch.load(self.path, weights_only=True)
            mine = saved["identity"] == identity and saved["block"] == block and saved["done"].shape == (n_blocks,)
        except Exception as error:  # damaged or foreign: the blocks are computed again, and it is overwritten
            log.warning("evaluation: %s cannot be read (%s); evaluating every test image", self.path,
                        type(error).__name__)
            return empty
        if not mine:
            log.info("evaluation: %s belongs to another model or settings; evaluating every test image", self.path)
            return empty
        return saved["halves"].to(torch.float64), saved["done"].clone()
