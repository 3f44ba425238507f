"""Evaluation: batch-norm statistics, the importance-weighted log-likelihood and bounds.

The 5000-sample estimate of log p(x) (docs/method.md, eq. 9) is computed in chunks sized by
a memory budget: a chunk holds `images x samples` pairs, and when one image's
samples do not fit they are split over several chunks. The per-image work (`model.encode`)
runs once per image chunk and is reused for all of its samples.

No memory budget changes a number (issue 21): for a given model, seed and K the estimates are
bitwise the same on the CPU whatever eval.memory_budget_mb is, because
- the noise of image i is its own: eps for all its samples is drawn from a generator seeded from
  (the run's seed, the pass, i's index in the whole test or training set), never from the global
  RNG, so it does not depend on which images share its chunk (`image_noise`);
- an image's samples are summed in fixed blocks of SAMPLE_BLOCK: logsumexp within each block, then
  over the blocks, so the order of additions is the same however the samples are split;
- a chunk holds a multiple of IMAGE_GROUP images, the last one padded with copies of an image
  whose results are dropped: a matrix product of few rows takes another path in the BLAS (MKL
  computes rows differently below about 8 rows, measured), and a multiple of 16 also leaves no
  remainder that elementwise kernels would treat apart from their vectorised loop.
On CUDA the noise is drawn on the device (another generator than the CPU's), and the kernels that
cuBLAS chooses depend on the shapes: the numbers agree across budgets to rounding, not bitwise.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_linear_bn_eval
from tqdm.auto import tqdm

from lvae.core.compiling import CPU_MIN_EVAL_PAIRS, compile_mode, use_compile
from lvae.core.models import HierarchicalVAE, Trace
from lvae.core.objectives import elbo, kl_per_layer, log_importance_weights, training_bound
from lvae.data.images import ImageData

BYTES_PER_FLOAT = 4
# Activations of one evaluation chunk, in MB, unless a caller says otherwise (the run config's default,
# eval.memory_budget_mb, is the same number: tests/run/test_config.py checks it). No budget changes a number.
DEFAULT_MEMORY_BUDGET_MB = 1024
SAMPLE_BLOCK = 100  # importance samples summed together; a chunk splits an image's samples only between blocks
IMAGE_GROUP = 16  # a chunk holds a multiple of this many images (see the module's docstring)
# One independent noise stream per pass over an image, so that its test ELBO does not reuse its IW samples.
NOISE_STREAMS = {"test_log_likelihood": 0, "test_elbo": 1, "train_bound": 2, "analysis": 3}


@contextlib.contextmanager
def tf32_matmuls(allow_tf32: bool):
    """CUDA matmuls and convolutions in TF32 inside only when allow_tf32 (else full float32); the previous
    setting is restored after, so nothing outside (a notebook, the evaluation after training) inherits it."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow_tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


@torch.no_grad()
def recompute_batchnorm_statistics(model: HierarchicalVAE, batches: Iterable[torch.Tensor],
                                   allow_tf32: bool = False) -> None:
    """Replace running batch-norm statistics by their average over `batches` (full float32 on CUDA
    unless allow_tf32: the statistics are part of the measurement).

    The authors compute test-time statistics over the whole training set rather
    than keeping the exponential moving average of training (docs/method.md, section 5).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None = cumulative average over all batches seen
    model.train()
    with tf32_matmuls(allow_tf32):
        for x in batches:
            model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def fold_batchnorm(model: HierarchicalVAE) -> HierarchicalVAE:
    """An evaluation copy of `model` with every Linear -> BatchNorm pair folded into one Linear.

    In eval mode batch norm is a fixed affine map, so the fold computes the same
    function with one pass over each activation instead of two.
    """
    folded = copy.deepcopy(model).eval()
    for sequence in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:  # MLPs and `dense` maps
        for i in reversed(range(1, len(sequence))):
            if isinstance(sequence[i], nn.BatchNorm1d):
                sequence[i - 1] = fuse_linear_bn_eval(sequence[i - 1], sequence[i])
                del sequence[i]
    return folded


def chunk_shape(model: HierarchicalVAE, n_images: int, n_samples: int, memory_budget_mb: float) -> tuple[int, int]:
    """(images, samples) per chunk so that one chunk's activations fit the budget."""
    pairs = max(1, int(memory_budget_mb * 2**20) // (BYTES_PER_FLOAT * model.floats_per_sample()))
    images = max(1, min(n_images, pairs // n_samples))
    samples = max(1, min(n_samples, pairs // images))
    return images, samples


def chunk_layout(model: HierarchicalVAE, n_images: int, n_samples: int, memory_budget_mb: float,
                 sample_block: int = SAMPLE_BLOCK) -> tuple[int, int]:
    """(images, samples) per chunk as `chunk_shape` sizes them, made of whole IMAGE_GROUPs of images and
    whole sample blocks: all of an image's samples, or a multiple of `sample_block` of them. At least one
    group of one block, even when that is over the budget."""
    padded = math.ceil(n_images / IMAGE_GROUP) * IMAGE_GROUP
    images, samples = chunk_shape(model, padded, n_samples, memory_budget_mb)
    if samples >= n_samples and images >= IMAGE_GROUP:
        return images // IMAGE_GROUP * IMAGE_GROUP, n_samples
    blocks = max(1, images * samples // (IMAGE_GROUP * sample_block))
    return IMAGE_GROUP, min(n_samples, blocks * sample_block)


def noise_seed(seed: int, stream: str, index: int, block: int) -> int:
    """The seed of one block of one image's noise: a hash of (the run's seed, the pass (NOISE_STREAMS), the
    image's index in its whole set, the block of samples). The CPU generator uses its low 32 bits, CUDA's all 63."""
    digest = hashlib.blake2b(f"{seed}/{NOISE_STREAMS[stream]}/{index}/{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def image_noise(model: HierarchicalVAE, indices: torch.Tensor, n_samples: int, samples: range, padded: int,
                seed: int, stream: str, device: torch.device, sample_block: int = SAMPLE_BLOCK) -> torch.Tensor:
    """eps of `samples` (a range of the n_samples that starts at a block) for the images `indices`:
    (len(samples), padded, noise_size).

    Block b of image j (samples b * sample_block onwards, at most sample_block of them) is one
    standard-normal draw from a generator seeded with noise_seed(seed, stream, indices[j], b): the same
    whatever chunk the image is in, and only the blocks a chunk needs are drawn. Columns beyond
    len(indices) (padding) are zeros.

    The draws fill an image-major buffer in place (each block is contiguous there, so normal_ draws
    what torch.randn would, without a copy); the result is a transposed view of it.
    """
    noise = torch.empty(padded, len(samples), model.noise_size, device=device)
    noise[len(indices):] = 0
    generator = torch.Generator(device=device)
    for column, index in enumerate(indices.tolist()):
        for start in range(samples.start, samples.stop, sample_block):
            size = min(sample_block, n_samples - start)
            generator.manual_seed(noise_seed(seed, stream, index, start // sample_block))
            noise[column, start - samples.start:start - samples.start + size].normal_(generator=generator)
    return noise.transpose(0, 1)


def _padded(x: torch.Tensor) -> torch.Tensor:
    """x with copies of its first image appended up to a multiple of IMAGE_GROUP rows."""
    extra = -len(x) % IMAGE_GROUP
    return torch.cat([x, x[:1].expand(extra, -1)]) if extra else x


def _indices_or_all(indices: torch.Tensor | None, n: int) -> torch.Tensor:
    return torch.arange(n) if indices is None else indices.cpu()


@torch.no_grad()
def iw_log_likelihood_halves(model: HierarchicalVAE, images: torch.Tensor, iw_samples: int,
                             memory_budget_mb: float, progress: bool = False, *,
                             indices: torch.Tensor | None = None, seed: int = 0,
                             sample_block: int = SAMPLE_BLOCK) -> torch.Tensor:
    """log sum_k w_k over the first floor(K/2) samples and over the other samples, per image: (2, N) float64.

    w_k = p(x, z_k) / q(z_k|x), z_k ~ q(z|x). Both halves come from the one pass that
    the K-sample estimate needs; `iw_estimates` combines them. indices: each image's index in its
    whole set, which with `seed` chooses its noise (default: 0..N-1). Each half is summed per block of
    `sample_block` samples, then over the blocks (see the module's docstring).
    """
    model.eval()
    indices = _indices_or_all(indices, len(images))
    n_images, n_samples = chunk_layout(model, len(images), iw_samples, memory_budget_mb, sample_block)
    half = iw_samples // 2
    n_blocks = math.ceil(iw_samples / sample_block)
    per_block = torch.full((2, len(images), n_blocks), -math.inf, dtype=torch.float64, device=images.device)
    bar = tqdm(total=len(images), desc=f"log p(x), K={iw_samples}", unit="img", disable=not progress, leave=False)
    for first in range(0, len(images), n_images):
        x = images[first:first + n_images]
        padded = _padded(x)
        context = model.encode(padded)
        for start in range(0, iw_samples, n_samples):
            samples = range(start, min(start + n_samples, iw_samples))
            noise = image_noise(model, indices[first:first + n_images], iw_samples, samples, len(padded), seed,
                                "test_log_likelihood", images.device, sample_block)
            trace = model(padded, len(samples), context=context, noise=noise)
            log_w = log_importance_weights(trace).double()[:, :len(x)].T.contiguous()  # (images, samples)
            in_first_half = torch.arange(start, samples.stop, device=log_w.device) < half
            for h, in_half in enumerate((in_first_half, ~in_first_half)):
                masked = log_w.masked_fill(~in_half, -math.inf)  # the other half's samples count as weight 0
                for block_start in range(start, samples.stop, sample_block):
                    block = masked[:, block_start - start:block_start - start + sample_block].contiguous()
                    per_block[h, first:first + len(x), block_start // sample_block] = block.logsumexp(-1)
        bar.update(len(x))
    bar.close()
    return per_block.logsumexp(-1)


def iw_log_likelihood(model: HierarchicalVAE, images: torch.Tensor, iw_samples: int,
                      memory_budget_mb: float, progress: bool = False, **noise) -> torch.Tensor:
    """log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x), for each image: (N,) float64 (docs/method.md, eq. 9).
    `noise`: indices and seed, as for `iw_log_likelihood_halves`."""
    halves = iw_log_likelihood_halves(model, images, iw_samples, memory_budget_mb, progress, **noise)
    return iw_estimates(halves, iw_samples)[0]


def iw_estimates(halves: torch.Tensor, iw_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From `iw_log_likelihood_halves`: the K-sample estimate and how far it still is from converged, per image.

    The bound's gap to log p(x) shrinks about as c/K for large K, so the K-sample
    estimate minus the mean of the two K/2-sample estimates, about c/K, estimates the
    gap that remains at K. NaN when K = 1 (no halves).
    """
    estimate = halves.logsumexp(0) - math.log(iw_samples)
    half = iw_samples // 2
    if half == 0:
        return estimate, torch.full_like(estimate, math.nan)
    half_estimates = halves - torch.tensor([math.log(half), math.log(iw_samples - half)],
                                           dtype=halves.dtype, device=halves.device)[:, None]
    return estimate, estimate - half_estimates.mean(0)


@torch.no_grad()
def per_image(model: HierarchicalVAE, images: torch.Tensor, n_samples: int, memory_budget_mb: float,
              statistic: Callable, *, indices: torch.Tensor | None = None, seed: int = 0,
              stream: str = "analysis") -> torch.Tensor:
    """statistic(trace) for chunks of images with n_samples each, concatenated on the last axis.

    An image's samples are never split; its noise comes from (seed, stream, its index in `indices`,
    default 0..N-1), as in `iw_log_likelihood_halves`, so no budget changes a value.
    """
    model.eval()
    indices = _indices_or_all(indices, len(images))
    n_images, _ = chunk_layout(model, len(images), n_samples, memory_budget_mb)
    values = []
    for first in range(0, len(images), n_images):
        x = images[first:first + n_images]
        padded = _padded(x)
        noise = image_noise(model, indices[first:first + n_images], n_samples, range(n_samples), len(padded), seed,
                            stream, images.device)
        values.append(statistic(model(padded, n_samples, noise=noise))[..., :len(x)])
    return torch.cat(values, dim=-1)


def mean_and_stderr(values: torch.Tensor) -> dict:
    """Mean over images and its standard error (sample std / sqrt(n))."""
    values = values.double()
    stderr = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": values.mean().item(), "stderr": stderr, "images": len(values)}


@dataclass(frozen=True)
class EvalSettings:
    """What `evaluate_model` measures and how: a run's eval.* and the training objective it reports
    (lvae.run.settings.eval_settings builds them from a run config)."""

    iw_samples: int = 5000  # K of the test log-likelihood
    test_subset: Optional[int] = None  # the first N of the test set's fixed random order (None: all)
    train_subset: int = 10_000  # training images of the training-set bound (the same fixed order)
    train_iw_samples: int = 1  # the training objective's K ...
    train_mc_samples: int = 1  # ... and its Monte Carlo samples, for the training-set bound
    binarization_seed: int = 0  # the training subset is binarized once, with this seed
    seed: int = 0  # chooses every image's noise (noise_seed)
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB
    allow_tf32: bool = False  # TF32 matmuls on CUDA; a measurement is full float32 by default
    compile: Optional[bool] = None  # torch.compile the chunks' forward pass; None: auto (lvae/core/compiling.py)
    progress: bool = False  # a progress bar for the K-sample estimate


# (evaluated model, test images, their indices in the test set) -> iw_log_likelihood_halves of those images
HalvesPass = Callable[[HierarchicalVAE, torch.Tensor, torch.Tensor], torch.Tensor]


def evaluate_model(model: HierarchicalVAE, data: ImageData, settings: EvalSettings,
                   halves_pass: Optional[HalvesPass] = None) -> dict:
    """Every end-of-run number: test log p(x) (K = settings.iw_samples) and how converged it is,
    test ELBO, train bound (each also in bits per dimension where the data allow it), KL per layer. A measurement:
    full float32 on CUDA unless allow_tf32. Plain values, except `per_image`: the test estimates of every image as
    (N,) float64 tensors.

    halves_pass: how the K-sample pass over the test images is made, the longest part by far (default: one call of
    `iw_log_likelihood_halves` with the settings' K, budget and seed); a run passes one that saves its progress
    (lvae/run/evaluation_progress.py). Call `recompute_batchnorm_statistics` first when the model uses batch norm.
    """
    device = next(model.parameters()).device
    test_images = len(data.test_subset(settings.test_subset))
    compile_chunks = use_compile(settings.compile, device, test_images * settings.iw_samples, CPU_MIN_EVAL_PAIRS)
    with tf32_matmuls(settings.allow_tf32):
        results = {**_evaluate(evaluation_copy(model, compile_chunks), data, settings, halves_pass),
                   "compiled": compile_chunks}
    if data.bits_per_dim(0.0) is not None:  # dequantized (scale 256) or binary (scale 1) data
        for key in ("test_log_likelihood", "test_elbo", "train_bound"):
            results[key]["bits_per_dim"] = data.bits_per_dim(results[key]["mean"])
            results[key]["bits_per_dim_stderr"] = results[key]["stderr"] / (data.dim * math.log(2))
    return results


def evaluation_copy(model: HierarchicalVAE, compile_forward: bool = False) -> HierarchicalVAE:
    """The model as evaluation runs it: batch norm folded (a copy), its forward pass, which every
    chunk runs, compiled when asked (lvae/core/compiling.py)."""
    folded = fold_batchnorm(model)
    if compile_forward:
        device = next(folded.parameters()).device
        folded.compile(mode=compile_mode(device), dynamic=False)
    return folded


def _elbo_and_kl_per_layer(trace: Trace) -> torch.Tensor:
    """The 1-sample ELBO (row 0) and each layer's KL term (rows 1..L) of every image: (1 + L, B)."""
    kl = kl_per_layer(trace)
    return torch.cat([elbo(trace, kl=kl), kl[:, 0]])


CURVE_POINTS = 20  # eval.curve_every=null: about this many points per run ...
CURVE_MIN_EPOCHS = 10  # ... for runs of at least this many epochs (none for shorter ones, such as the tests')


def curve_interval(curve_every: Optional[int], epochs: int) -> int:
    """Epochs between two points of the training curves (0: none): eval.curve_every, or when it is None,
    about CURVE_POINTS points for runs of CURVE_MIN_EPOCHS epochs or more."""
    if curve_every is not None:
        return curve_every
    return math.ceil(epochs / CURVE_POINTS) if epochs >= CURVE_MIN_EPOCHS else 0


@dataclass(frozen=True)
class CurveSettings:
    """One point of the training curves: what `curve_point` measures (eval.curve_*)."""

    iw_samples: int = 100  # K of the test bound
    images: int = 1000  # test images (the first of the fixed random order) and as many training images
    binarization_seed: int = 0  # the training images are binarized once, with this seed
    seed: int = 0  # chooses every image's noise (noise_seed)
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB


def _elbo_and_kl_per_unit(trace: Trace) -> torch.Tensor:
    """The 1-sample ELBO (row 0) and every unit's KL term (rows 1.., z_1's units first) of every image: (1 + sum d_i, B).
    Each unit's term is computed once: the ELBO takes their sums per layer (as `kl_per_layer` forms them)."""
    units = [layer.kl_term_per_unit() for layer in trace.layers]  # (S, B, d_i) each
    kl = torch.stack([unit.sum(-1) for unit in units])
    return torch.cat([elbo(trace, kl=kl), *(unit[0].T for unit in units)])


def curve_point(model: HierarchicalVAE, data: ImageData, settings: CurveSettings) -> dict:
    """The bounds and KL terms of `model` as it stands during training, for the curves against epochs.

    Measured on an evaluation copy (eval mode, with the running batch-norm averages of training, not
    statistics recomputed over the training set as at the end of a run), with each image's own noise:
    `model`, its mode and torch's global RNG are left as they were, so curves change nothing in training.
    `images` test images (the first of the fixed random order) and as many training images (the same
    order, binarized once): the K-sample test bound, the test and training ELBO (1 sample), and each
    unit's KL term averaged over the test images (one list per layer, z_1 first).
    """
    evaluated = fold_batchnorm(model)
    test_indices, test = data.test_sample(min(settings.images, len(data.test)))
    train_indices = data.train_subset_indices(settings.images)
    train = data.fixed_train_subset(train_indices, seed=settings.binarization_seed)
    budget, k, seed = settings.memory_budget_mb, settings.iw_samples, settings.seed
    test_bound = iw_log_likelihood(evaluated, test, k, budget, indices=test_indices, seed=seed)
    test_elbo, *kl_per_unit = per_image(evaluated, test, 1, budget, _elbo_and_kl_per_unit,
                                        indices=test_indices, seed=seed, stream="test_elbo").double()
    train_elbo = per_image(evaluated, train, 1, budget, elbo, indices=train_indices, seed=seed, stream="train_bound")
    kl = torch.stack(kl_per_unit).mean(1).split(model.latent_sizes)
    return {"test_bound": test_bound.mean().item(), "test_elbo": test_elbo.mean().item(),
            "train_elbo": train_elbo.double().mean().item(), "iw_samples": k, "images": len(test_indices),
            "kl_per_unit": [layer.tolist() for layer in kl]}


def _evaluate(model: HierarchicalVAE, data: ImageData, settings: EvalSettings,
              halves_pass: Optional[HalvesPass] = None) -> dict:
    budget, progress, k, seed = settings.memory_budget_mb, settings.progress, settings.iw_samples, settings.seed
    # A fixed random sample of the test set, the same for every run (lvae/data/, fixed_permutation).
    test_indices, test = data.test_sample(settings.test_subset)
    train_indices = data.train_subset_indices(settings.train_subset)
    train = data.fixed_train_subset(train_indices, seed=settings.binarization_seed)
    iw, mc = settings.train_iw_samples, settings.train_mc_samples

    halves = (halves_pass(model, test, test_indices) if halves_pass else
              iw_log_likelihood_halves(model, test, k, budget, progress, indices=test_indices, seed=seed))
    log_likelihood, remaining_gap = iw_estimates(halves, k)
    # One 1-sample pass gives both the test ELBO (row 0) and the KL term of every layer (rows 1..L).
    test_elbo, *test_kl = per_image(model, test, 1, budget, _elbo_and_kl_per_layer,
                                    indices=test_indices, seed=seed, stream="test_elbo")
    train_bound = per_image(model, train, mc * iw, budget, lambda t: training_bound(t, iw),
                            indices=train_indices, seed=seed, stream="train_bound")
    gap = mean_and_stderr(remaining_gap) if k > 1 else {"mean": None, "stderr": None}
    test_set = {"test_set_images": len(data.test)}  # of which `images` were scored (a random sample when fewer)
    return {
        "test_log_likelihood": {**mean_and_stderr(log_likelihood), **test_set, "iw_samples": k,
                                # K-sample estimate minus the mean of its two K/2 halves: the gap left at K
                                "remaining_gap": gap["mean"], "remaining_gap_stderr": gap["stderr"]},
        "test_elbo": {**mean_and_stderr(test_elbo), **test_set, "samples": 1},
        "train_bound": {**mean_and_stderr(train_bound), "iw_samples": iw, "mc_samples": mc},
        "kl_per_layer": [mean_and_stderr(kl)["mean"] for kl in test_kl],
        "kl_per_layer_stderr": [mean_and_stderr(kl)["stderr"] for kl in test_kl],
        # Per test image, for paired comparisons between runs (all runs see the same test images), with
        # each image's index in the whole test set.
        "per_image": {"test_log_likelihood": log_likelihood.cpu(), "test_elbo": test_elbo.double().cpu(),
                      "test_indices": test_indices.cpu()},
    }
