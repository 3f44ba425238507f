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
    devices = sorted({m["device"] for _, m in runs if m and "device" in m})
    dates = sorted({m["date"][:10] for _, m in runs if m and "date" in m})
    if devices:
        print(f"\nMeasured on {'; '.join(devices)} ({', '.join(dates)}).")


if __name__ == "__main__":
    main()
