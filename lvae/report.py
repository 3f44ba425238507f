"""Tables from run directories: `python -m lvae.report DIR [DIR ...]`.

Every folder below the given ones that holds a metrics.json or a config.yaml is a
run; a run without a finished metrics.json is listed as such, never dropped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _bound(entry: dict) -> str:
    return f"{entry['mean']:.2f} ± {entry['stderr']:.2f}"


def variant_name(metrics: dict) -> str:
    parts = [metrics["model"].upper()]
    if metrics["batch_norm"]:
        parts.append("BN")
    if metrics["warmup_epochs"]:
        parts.append(f"WU{metrics['warmup_epochs']}")
    return "+".join(parts)


def format_run(metrics: dict) -> str:
    """A few lines that summarise one finished run."""
    ll, test_elbo, train = metrics["test_log_likelihood"], metrics["test_elbo"], metrics["train_bound"]
    kl = ", ".join(f"{v:.2f}" for v in metrics["kl_per_layer"])
    return "\n".join([
        f"{variant_name(metrics)}, {metrics['layers']} layers, {metrics['epochs']} epochs, "
        f"{metrics['wall_time_s']['total']:.0f} s on {metrics['device']}",
        f"  test log p(x), IW K={ll['iw_samples']} over {ll['images']} images: {_bound(ll)} nats",
        f"  test ELBO, 1 sample over {test_elbo['images']} images:    {_bound(test_elbo)} nats",
        f"  train bound (K={train['iw_samples']}) over {train['images']} images:    {_bound(train)} nats",
        f"  KL per layer (test, z1..z{metrics['layers']}): {kl}",
    ])


def find_runs(roots: list[Path]) -> list[tuple[Path, dict | None]]:
    """(run dir, metrics or None when unfinished) for every run below `roots`."""
    dirs = set()
    for root in roots:
        for marker in ("metrics.json", "config.yaml"):
            dirs.update(p.parent for p in root.rglob(marker) if p.parent.name != ".hydra")
    runs = []
    for run_dir in sorted(dirs):
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
        runs.append((run_dir, metrics))
    return runs


def markdown_table(runs: list[tuple[Path, dict | None]]) -> str:
    header = ("| run | variant | layers | epochs | test log p(x) | K | test images | test ELBO "
              "| train bound | KL per layer | time (s) |")
    columns = header.count("|") - 1
    lines = [header, "|" + "---|" * columns]
    for run_dir, m in runs:
        if m is None or m.get("status") != "completed":
            status = "unfinished" if m is None else m.get("status", "unknown")
            lines.append(f"| {run_dir.name} | {status} |" + " |" * (columns - 2))
            continue
        ll = m["test_log_likelihood"]
        kl = " / ".join(f"{v:.1f}" for v in m["kl_per_layer"])
        lines.append(
            f"| {run_dir.name} | {variant_name(m)} | {m['layers']} | {m['epochs']} | {_bound(ll)} "
            f"| {ll['iw_samples']} | {ll['images']} | {_bound(m['test_elbo'])} | {_bound(m['train_bound'])} "
            f"| {kl} | {m['wall_time_s']['total']:.0f} |"
        )
    return "\n".join(lines)


# What two runs of the same config must agree on exactly (timings and provenance differ by nature).
REPRODUCED_METRICS = ("test_log_likelihood", "test_elbo", "train_bound", "kl_per_layer")


def differences_between_runs(a: Path, b: Path) -> list[str]:
    """What differs between two finished run directories: parameters (bitwise) and metrics."""
    from .checkpoint import load_checkpoint

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories")
    args = parser.parse_args(argv)
    missing = [d for d in args.dirs if not d.is_dir()]
    if missing:
        parser.error(f"not a directory: {', '.join(map(str, missing))}")
    runs = find_runs(args.dirs)
    if not runs:
        parser.error(f"no run directories (with metrics.json or config.yaml) below {', '.join(map(str, args.dirs))}")
    print(markdown_table(runs))
    print()
    print(budget_summary([m for _, m in runs if m and m.get("status") == "completed"]))


def budget_summary(finished: list[dict]) -> str:
    """One sentence on the budget, device and dates behind a table's numbers."""
    if not finished:
        return "No run has finished yet."
    def values(get):
        return ", ".join(sorted({str(get(m)) for m in finished}))
    epochs = {m["epochs"] for m in finished}
    scale = ("the paper's 2000 epochs" if epochs == {2000}
             else "a short budget, not the paper's 2000 epochs")
    return (f"Budget: {values(lambda m: m['epochs'])} epochs ({scale}); test log p(x) with "
            f"K={values(lambda m: m['test_log_likelihood']['iw_samples'])} importance samples on "
            f"{values(lambda m: m['test_log_likelihood']['images'])} test images. Measured on "
            f"{values(lambda m: m['device'])}, {values(lambda m: m['date'][:10])}.")


if __name__ == "__main__":
    main()
