"""torch.compile for the training step and the evaluation chunks (`train.compile`, `eval.compile`).

A step of these models is hundreds of small kernels; compiling fuses the element-wise work
between the matmuls (batch norm, activations, the Gaussian terms). On CUDA the mode
`reduce-overhead` also captures CUDA graphs, so that a whole step is one graph launch
instead of hundreds of launches from Python; on the CPU, inductor's C++ backend.

Shapes stay static: training runs full batches (a last partial batch is dropped) and
evaluation chunks have fixed shapes, so a run compiles each function a few times at
the start and never again (scripts/bench.py times its steps under
torch.compiler.set_stance("fail_on_recompile"), which turns a recompilation into an error).
"""

from __future__ import annotations

from typing import Callable, Optional, TypeVar

import torch

F = TypeVar("F", bound=Callable)

# Below these sizes `auto` stays eager on the CPU: compiling costs about a minute, which a short run does not
# earn back (scripts/bench.py measures both sides; docs/performance.md has the figures). The thresholds
# leave a margin, for slower compilers.
CPU_MIN_TRAIN_STEPS = 10_000  # about 43 epochs of MNIST at batch 256 (the quick budget's 10 stay eager)
CPU_MIN_EVAL_PAIRS = 25_000_000  # (test image x importance sample) pairs: 5,000 test images at K=5000


def compile_mode(device: torch.device) -> str:
    """CUDA graphs on CUDA (`reduce-overhead`: a step is one launch), inductor's default elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else "default"


def use_compile(setting: Optional[bool], device: torch.device, work: int, cpu_minimum: int) -> bool:
    """Whether to compile: true/false as set; null (auto) compiles on CUDA, where an eager step is
    bound by kernel launches, and elsewhere when `work` reaches `cpu_minimum`."""
    if setting is not None:
        return setting
    return device.type == "cuda" or work >= cpu_minimum


def compiled(fn: F, device: torch.device) -> F:
    """fn compiled for `device` with static shapes."""
    return torch.compile(fn, mode=compile_mode(device), dynamic=False)  # type: ignore[return-value]
