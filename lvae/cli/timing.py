"""What the benchmarks time: training steps and K=5000 evaluation, eager and compiled, against the device's own
matmul rate; peak memory; concurrent training processes; where the time goes (torch.profiler).

The library of scripts/bench.py (`make bench`, which prints the figures) and scripts/gpu_check.py (`make
gpu-check`). FLOPs are counted from the layer shapes: every nn.Linear call costs 2 x rows x in x out (forward
hooks record the rows); a training step costs three times its forward matmuls (backward: gradients of inputs
and of weights). Element-wise work is not counted: the fractions say how close a step comes to matmul speed.
`python -m lvae.cli.timing BARRIER N STEPS SIZE DEVICE` is one process of `concurrent_training`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from lvae.cli.reproduce import MNIST_TEST_IMAGES, MNIST_TRAIN_IMAGES
from lvae.core.compiling import CPU_MIN_TRAIN_STEPS, use_compile
from lvae.core.evaluate import DEFAULT_MEMORY_BUDGET_MB, evaluation_copy, fold_batchnorm, iw_log_likelihood
from lvae.core.models import HierarchicalVAE, build_model
from lvae.core.objectives import log_importance_weights
from lvae.data.images import ImageData
from lvae.run.config import compose_config
from lvae.run.loop import new_optimizer, train_model
from lvae.run.settings import model_spec

BATCH = 256
PAPER_EPOCHS = 2000
IMAGE_DIM = 784
TEST_SET = MNIST_TEST_IMAGES
STEPS_PER_EPOCH = MNIST_TRAIN_IMAGES // BATCH  # the last partial batch is dropped


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 1) -> float:
    """Seconds of fn(): the best of `repeats` calls, since a shared machine only ever adds time."""
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


class MatmulShapes:
    """Records (rows, in, out) of every nn.Linear call while active."""

    def __init__(self, model: nn.Module):
        self.model, self.shapes, self.handles = model, Counter(), []

    def __enter__(self):
        for module in self.model.modules():
            if isinstance(module, nn.Linear):
                self.handles.append(module.register_forward_hook(self._record))
        return self

    def _record(self, module: nn.Linear, inputs, output) -> None:
        rows = inputs[0].numel() // module.in_features
        self.shapes[(rows, module.in_features, module.out_features)] += 1

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    @property
    def flops(self) -> float:
        return sum(2 * r * i * o * n for (r, i, o), n in self.shapes.items())


def matmul_rate(shapes: Counter, device: torch.device, repeats: int = 3) -> float:
    """FLOP/s of torch.mm on exactly these shapes, weighted as the model uses them."""
    total_flops, total_seconds = 0.0, 0.0
    for (rows, n_in, n_out), count in shapes.items():
        a = torch.randn(rows, n_in, device=device)
        b = torch.randn(n_in, n_out, device=device)
        torch.mm(a, b)  # warm-up
        seconds = timed(lambda: torch.mm(a, b), device, repeats)
        total_flops += 2 * rows * n_in * n_out * count
        total_seconds += seconds * count
    return total_flops / total_seconds


@dataclass(frozen=True)
class Size:
    """Which models to time: the paper's 5 layers by default; scripts/gpu_check.py --tiny passes small ones."""

    layers: int = 5
    overrides: tuple[str, ...] = ()  # e.g. ("model.hidden_sizes=[32,16]", "model.latent_sizes=[4,2]")


PAPER = Size()


def paper_model(name: str, layers: int, device: torch.device, size: Size = PAPER) -> HierarchicalVAE:
    cfg = compose_config(f"model={name}", f"layers={layers}", "batch_norm=true", *size.overrides)
    return build_model(model_spec(cfg), IMAGE_DIM).to(device)


def evaluation_model(name: str, layers: int, device: torch.device, compiled: bool = False,
                     size: Size = PAPER) -> HierarchicalVAE:
    """The model as lvae.core.evaluate.evaluate_model runs it: eval mode, batch norm folded, maybe compiled."""
    return evaluation_copy(paper_model(name, layers, device, size), compiled)


def random_binary_images(n: int, device: torch.device) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, IMAGE_DIM), 0.13, device=device))


def no_recompilation(compiled: bool):
    """While active, a recompilation raises instead of happening (torch.compiler.set_stance)."""
    return torch.compiler.set_stance("fail_on_recompile") if compiled else contextlib.nullcontext()


def training_setup(name: str, device: torch.device, steps: int, compiled: bool, size: Size = PAPER):
    """(model, run(n_steps)) for the real training loop, lvae.run.loop.train_model, at batch 256."""
    torch.manual_seed(0)
    model = paper_model(name, size.layers, device, size)
    cfg = compose_config(f"model={name}", f"layers={size.layers}", "train.epochs=1", "train.progress=false",
                         "warmup_epochs=0", f"train.compile={str(compiled).lower()}", *size.overrides)
    optimizer = new_optimizer(model, cfg.train)
    images = random_binary_images(BATCH * steps, device)
    writer = SummaryWriter(tempfile.mkdtemp())

    def run(n_steps: int) -> None:
        x = images[: BATCH * n_steps]
        train_model(model, optimizer, ImageData(x, torch.zeros(len(x)), x[:BATCH], torch.zeros(BATCH), True),
                    cfg, writer)

    return model, run


def bench_training(name: str, device: torch.device, steps: int, size: Size = PAPER,
                   repeats: int = 5) -> tuple[dict, dict]:
    """ms per step of the training loop, eager and compiled, and the matmul rate on the model's shapes: the
    best of `repeats` timings of each, taken in turn so that a shared machine's slow spells fall on all
    alike; the first call (compilation included) timed apart."""
    setups = [training_setup(name, device, steps, compiled, size) for compiled in (False, True)]
    first_calls = [timed(lambda: run(2), device) for _, run in setups]  # compiles forward and backward
    model = setups[0][0]
    with MatmulShapes(model) as shapes:
        model(random_binary_images(BATCH, device))
    best, rate = [math.inf] * len(setups), 0.0
    with no_recompilation(True):
        for _ in range(repeats):  # the matmul rate too, in turn with the steps, the best of its timings
            for i, (_, run) in enumerate(setups):
                best[i] = min(best[i], timed(lambda: run(steps), device))
            rate = max(rate, matmul_rate(shapes.shapes, device))
    flops_per_step = 3 * shapes.flops
    return tuple({"ms_per_step": 1000 * seconds / steps, "images_per_s": steps * BATCH / seconds,
                  "model_flops": flops_per_step * steps / seconds, "matmul_flops": rate, "first_call_s": first_call}
                 for seconds, first_call in zip(best, first_calls))


def peak_memory_tracker(device: torch.device):
    """(reset, read) of peak memory in bytes: CUDA allocator, or the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return (lambda: torch.cuda.reset_peak_memory_stats(device), lambda: torch.cuda.max_memory_allocated(device))

    def reset() -> None:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)

    def read() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    return reset, read


def eval_flops(model: HierarchicalVAE, images: torch.Tensor, k: int) -> float:
    """FLOPs of an evaluation of `images` with k samples: per-image work once, per-sample work k times."""
    with torch.no_grad(), MatmulShapes(model) as per_image:
        context = model.encode(images[:1])
    with torch.no_grad(), MatmulShapes(model) as per_sample:
        model(images[:1], 1, context=context)
    return len(images) * (per_image.flops + k * per_sample.flops)


def timed_with_peak(fn, device: torch.device) -> tuple[float, int]:
    """Seconds of fn() and the peak memory it added, in bytes."""
    reset, read = peak_memory_tracker(device)
    baseline = read() if device.type == "cuda" else None
    reset()
    before = read()
    seconds = timed(fn, device)
    return seconds, read() - (baseline if baseline is not None else before)


def bench_evaluation(name: str, device: torch.device, n_images: int, budget_mb: int,
                     modes: tuple[bool, ...] = (False, True), size: Size = PAPER, repeats: int = 2) -> tuple[dict, ...]:
    """The K=5000 evaluation of n_images images in each mode (compiled or not), as in bench_training: the modes
    and the matmul rate on the model's chunk shapes timed in turn, the best of `repeats` each; the peak memory
    of the first timing; the first call (compilation included) timed apart."""
    torch.manual_seed(0)
    images = random_binary_images(n_images, device)
    runs = [functools.partial(iw_log_likelihood, evaluation_model(name, size.layers, device, compiled, size), images,
                              5000, budget_mb) for compiled in modes]
    first_calls = [timed(run, device) for run in runs]  # compiles when asked
    eager = evaluation_model(name, size.layers, device, size=size)
    with torch.no_grad(), MatmulShapes(eager) as shapes:
        eager(images[:4], 5000 // 4)  # representative chunk shapes
    best, peaks, rate = [math.inf] * len(runs), [0] * len(runs), 0.0
    with no_recompilation(any(modes)):
        for repeat in range(repeats):
            for i, run in enumerate(runs):
                seconds, peak = timed_with_peak(run, device)
                best[i], peaks[i] = min(best[i], seconds), peak if repeat == 0 else peaks[i]
            rate = max(rate, matmul_rate(shapes.shapes, device))
    flops = eval_flops(eager, images, 5000)
    return tuple({"pairs_per_s": n_images * 5000 / seconds, "seconds": seconds, "model_flops": flops / seconds,
                  "matmul_flops": rate, "peak_bytes": peak, "first_call_s": first_call,
                  "full_test_minutes": TEST_SET * 5000 / (n_images * 5000 / seconds) / 60}
                 for seconds, peak, first_call in zip(best, peaks, first_calls))


def best_matmul_rate(*measurements: dict) -> float:
    """The device's matmul rate on these shapes: the best of the measurements (a shared machine only
    ever slows one down), so that eager and compiled are held against the same rate."""
    return max(m["matmul_flops"] for m in measurements)


# The parts of a training step or an evaluation, as `time_parts` tells them from profiler events.
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
PARTS = {
    # On the CPU, addmm first fills its output with the broadcast bias, then adds the product to it.
    "addmm's bias copy": lambda e: e.name == "aten::copy_" and getattr(e.cpu_parent, "name", "") == "aten::addmm",
    "matmuls": lambda e: e.name in MATMULS,
    "optimiser (Adam's update)": lambda e: e.name.startswith("Optimizer."),
    "gradient norm and clipping": lambda e: e.name in {"aten::_foreach_norm", "aten::_foreach_mul_"},
    "random draws (eager: binarization, noise)": lambda e: e.name in {"aten::uniform_", "aten::bernoulli_",
                                                                        "aten::normal_"},
    "element-wise work (compiled graphs)": lambda e: e.name.startswith("## Call CompiledFxGraph"),
}
OTHER_PART = "the rest (eager element-wise ops, autograd, Python)"


def time_parts(events) -> dict[str, float]:
    """CPU microseconds per part of the profiled work. Each event's own time (without its callees') goes to
    the first part that it, else its nearest caller, matches: the parts add up to the whole profile."""
    parts = dict.fromkeys([*PARTS, OTHER_PART], 0.0)
    for event in events:
        part, caller = None, event
        while caller is not None and part is None:
            part = next((p for p, matches in PARTS.items() if matches(caller)), None)
            caller = caller.cpu_parent
        parts[part or OTHER_PART] += event.self_cpu_time_total
    return parts


def profiled(work, device: torch.device, per: int, unit: str, rows: int = 12) -> str:
    """torch.profiler's table of the operators that take the most time in work() and, on the CPU, where
    the time goes (`time_parts`), per `unit` (work() does `per` of them)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        work()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = profile.key_averages().table(sort_by=key, row_limit=rows)
    if device.type == "cuda":  # CPU times there are launches, not the work
        return table
    parts = time_parts(profile.events())
    total = sum(parts.values())
    lines = [f"  {part:52s} {us / per / 1000:7.2f} ms/{unit}  {us / total:4.0%}" for part, us in parts.items()
             if us > 0]
    return "\n".join([table, "Where the time goes (CPU time under the profiler, which adds some):", *lines])


def profile_training(name: str, device: torch.device, compiled: bool, steps: int = 20) -> str:
    """`profiled` over `steps` training steps, after a warm-up (and compilation) outside the profile."""
    _, run = training_setup(name, device, steps, compiled)
    run(2)
    return profiled(lambda: run(steps), device, steps, "step")


def profile_evaluation(name: str, device: torch.device, compiled: bool, n_images: int = 16) -> str:
    """`profiled` over the K=5000 evaluation of n_images images, after a warm-up outside the profile."""
    model = evaluation_model(name, 5, device, compiled)
    images = random_binary_images(n_images, device)
    iw_log_likelihood(model, images, 5000, DEFAULT_MEMORY_BUDGET_MB)
    return profiled(lambda: iw_log_likelihood(model, images, 5000, DEFAULT_MEMORY_BUDGET_MB), device, n_images,
                    "image")


@torch.no_grad()
def naive_iw_log_likelihood(model: HierarchicalVAE, images: torch.Tensor, k: int, batch: int = 100) -> torch.Tensor:
    """The common way: one image at a time, its samples in mini-batches through the whole model."""
    estimates = []
    for x in images:
        log_w = torch.cat([log_importance_weights(model(x.expand(min(batch, k - s), -1), 1))[0]
                           for s in range(0, k, batch)])
        estimates.append(log_w.double().logsumexp(0) - math.log(k))
    return torch.stack(estimates)


def bench_naive(device: torch.device, n_images: int, budget_mb: int) -> dict:
    torch.manual_seed(0)
    model = paper_model("lvae", 5, device).eval()
    images = random_binary_images(n_images, device)
    naive, ours = [], []
    torch.manual_seed(1)
    naive_seconds = timed(lambda: naive.append(naive_iw_log_likelihood(model, images, 5000)), device)
    torch.manual_seed(1)
    our_seconds = timed(lambda: ours.append(iw_log_likelihood(fold_batchnorm(model), images, 5000, budget_mb)),
                        device)
    with torch.no_grad():
        log_w = log_importance_weights(model(images, 5000)).double()
    # Monte Carlo standard error of each estimate (delta method on the mean weight).
    weights = (log_w - log_w.logsumexp(0)).exp() * 5000
    stderr = (weights.std(0) / math.sqrt(5000)).mean().item()
    return {"naive_seconds": naive_seconds, "our_seconds": our_seconds, "speedup": naive_seconds / our_seconds,
            "naive": naive[0].mean().item(), "ours": ours[0].mean().item(), "stderr": stderr}


def concurrent_training(device: torch.device, size: Size, processes: list[int], steps: int) -> list[dict]:
    """n processes training the 5-layer LVAE at once, as a paper run does (compiled), each with its share of
    the CPU cores as threads, after its own warm-up, started together through a barrier."""
    results = []
    for n in processes:
        with tempfile.TemporaryDirectory() as barrier:
            workers = [subprocess.Popen([sys.executable, "-m", "lvae.cli.timing", barrier, str(n), str(steps),
                                         json.dumps(dataclasses.asdict(size)), device.type],
                                        stdout=subprocess.PIPE, text=True) for _ in range(n)]
            ms = [json.loads(w.communicate()[0].strip().splitlines()[-1])["ms_per_step"] for w in workers]
        if any(w.returncode for w in workers):
            raise RuntimeError(f"a worker of the {n}-process measurement failed")
        results.append({"processes": n, "ms_per_step_each": ms,
                        "total_steps_per_s": sum(1000 / m for m in ms)})
    return results


def worker(barrier: str, n: int, steps: int, device: torch.device, size: Size) -> None:
    """One of n concurrent training processes: warm up (compile), wait for all, time `steps` steps.
    Each takes its share of the CPU cores: more threads than cores would measure the contention."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // n))
    compiled = use_compile(None, device, PAPER_EPOCHS * STEPS_PER_EPOCH, CPU_MIN_TRAIN_STEPS)
    _, run = training_setup("lvae", device, steps, compiled, size)
    run(2)
    Path(barrier, str(os.getpid())).touch()
    while len(list(Path(barrier).iterdir())) < n:
        time.sleep(0.05)
    seconds = timed(lambda: run(steps), device)
    print(json.dumps({"ms_per_step": 1000 * seconds / steps}))


if __name__ == "__main__":  # one process of concurrent_training
    barrier, n, steps, size, device = sys.argv[1:6]
    fields = json.loads(size)
    worker(barrier, int(n), int(steps), torch.device(device), Size(fields["layers"], tuple(fields["overrides"])))
