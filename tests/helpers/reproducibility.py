"""What two run directories of the same config disagree on (the reliability tests and scripts/soak.py)."""

from __future__ import annotations

import json
from pathlib import Path

from lvae.run.checkpoint import load_checkpoint

# What two runs of the same config must agree on exactly (timings and provenance differ by nature).
REPRODUCED_METRICS = ("test_log_likelihood", "test_elbo", "train_bound", "kl_per_layer")


def differences_between_runs(a: Path, b: Path) -> list[str]:
    """What differs between two finished run directories: parameters (bitwise) and metrics."""
    state_a, state_b = (load_checkpoint(d / "checkpoint.pt")["model"] for d in (a, b))
    found = [f"parameter {key}" for key in sorted(state_a.keys() | state_b.keys())
             if key not in state_a or key not in state_b or not state_a[key].equal(state_b[key])]
    metrics_a, metrics_b = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    found += [f"metric {key}" for key in REPRODUCED_METRICS if metrics_a.get(key) != metrics_b.get(key)]
    histories = [[{k: v for k, v in h.items() if k != "seconds"} for h in m.get("history", [])]
                 for m in (metrics_a, metrics_b)]
    if histories[0] != histories[1]:
        found.append("training history")
    return found
