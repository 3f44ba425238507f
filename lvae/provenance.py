"""What a run records about where it came from: versions, git commit, device, command,
and a fingerprint of the code that defines its numbers."""

from __future__ import annotations

import ast
import datetime
import hashlib
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = Path(__file__).resolve().parent
# The modules that define what a run's numbers mean: the densities, the models, the bounds and
# the evaluation. Two runs whose fingerprints differ were scored by different estimators, so a
# stored result is not taken silently for a rerun's (the git commit records everything else).
NUMERICS_MODULES = ("distributions.py", "models.py", "objectives.py", "evaluate.py")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _code_only(source: str) -> str:
    """The syntax tree of a module without its docstrings: comments and documentation may change
    without changing what the code computes."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def _fingerprint(sources: list[str]) -> str:
    digest = hashlib.sha256()
    for source in sources:
        digest.update(hashlib.sha256(_code_only(source).encode()).digest())
    return digest.hexdigest()[:16]


def code_fingerprint() -> str:
    """A hash of the code (not the documentation) of NUMERICS_MODULES as they are installed now."""
    return _fingerprint([(PACKAGE_DIR / name).read_text() for name in NUMERICS_MODULES])


def fingerprint_of(metrics: dict) -> str | None:
    """The code fingerprint a run's metrics.json records; for runs older than the field, the
    fingerprint of NUMERICS_MODULES at its recorded git commit (when git can tell); else None."""
    if metrics.get("code_fingerprint"):
        return metrics["code_fingerprint"]
    commit = metrics.get("git_commit")
    if not commit or metrics.get("git_dirty"):
        return None
    sources = [_git("show", f"{commit}:lvae/{name}") for name in NUMERICS_MODULES]
    if any(source is None for source in sources):
        return None
    return _fingerprint(sources)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(device: torch.device) -> dict:
    import hydra
    import torchvision

    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "device": describe_device(device),
        "hostname": platform.node(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "code_fingerprint": code_fingerprint(),
        "versions": {
            "lvae": version("lvae"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "hydra": hydra.__version__,
        },
    }
