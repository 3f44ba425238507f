"""What a run records about where it came from: versions, git commit, device, command,
and the version of the numerics that computed its numbers."""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]  # lvae/run/provenance.py -> the checkout

# What a run computes, as a version that a change to the numbers bumps on purpose: the densities,
# the models, the bounds, the evaluation, the data pipeline (scaling, binarization, subsets), the
# optimiser and the config defaults. tests/core/test_golden.py pins a seeded tiny run's numbers to
# this version and fails when they change and the version did not. The git commit and dirty flag,
# recorded beside it, say everything else about the code.
#   1: every run before the version was recorded (those carry a `code_fingerprint` instead).
#   2: evaluation noise drawn per (image, block of samples), so no chunking changes it; test and
#      train-bound subsets a fixed random sample; one matmul per Gaussian head (its initial weights
#      are drawn in another order).
NUMERICS_VERSION = 2


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def numerics_version_of(metrics: dict) -> int:
    """The numerics version a run's metrics.json records (1 for runs older than the field)."""
    return metrics.get("numerics_version", 1)


def is_current_numerics(metrics: dict) -> bool:
    """Whether a stored run's numbers were computed by the numerics installed now."""
    return numerics_version_of(metrics) == NUMERICS_VERSION


CPUINFO = Path("/proc/cpuinfo")  # Linux's description of the CPU


def cpu_model() -> str:
    """The CPU's model name where the system says it (Linux: CPUINFO), else its architecture: two CPUs of
    one architecture can round float32 sums differently (their kernels pick other instructions)."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.partition(':')[2].strip()}, {platform.machine()}"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({cpu_model()}, {threads} thread{'' if threads == 1 else 's'})"


def command_line() -> str:
    """The command that runs, its script relative to the repository when inside it: where a clone or
    worktree lies says nothing about the run (`python -m lvae.cli` shows as lvae/cli/train_command.py)."""
    script = Path(sys.argv[0])
    if script.is_absolute() and script.is_relative_to(REPO_ROOT):
        script = script.relative_to(REPO_ROOT)
    return " ".join([str(script), *sys.argv[1:]])


def provenance(device: torch.device) -> dict:
    import torchvision

    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "device": describe_device(device),
        "hostname": platform.node(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "numerics_version": NUMERICS_VERSION,
        "versions": {
            "lvae": version("lvae"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "hydra": version("hydra-core"),
        },
    }
