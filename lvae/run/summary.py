"""A finished run in a few words: its variant's label and the summary a run logs at its end.

Used by the run itself (lvae.run.train) and by the commands that list runs (lvae.report, lvae.cli.analyze).
"""

from __future__ import annotations


def format_bound(entry: dict) -> str:
    return f"{entry['mean']:.2f} ± {entry['stderr']:.2f}"


def variant_label(model: str, batch_norm: bool, warmup_epochs: int) -> str:
    """The paper's label of a variant: "VAE", "VAE+BN", "VAE+BN+WU", "LVAE+BN+WU" (the warm-up's length
    is a number of its own: `warmup_epochs`)."""
    parts = [model.upper()]
    if batch_norm:
        parts.append("BN")
    if warmup_epochs:
        parts.append("WU")
    return "+".join(parts)


def variant_name(metrics: dict) -> str:
    return variant_label(metrics["model"], metrics["batch_norm"], metrics["warmup_epochs"])


def describe_test_images(entry: dict, noun: str = " test images") -> str:
    """Which test images a test bound was measured on: "300 of 10,000 test images (random sample)", "all
    10,000 test images", or, for a run evaluated before subsets were a random sample (it records no test-set
    size), "the first 300 test images (file order)". noun="" for a table's column of test images."""
    images, total = entry["images"], entry.get("test_set_images")
    if total is None:
        return f"the first {images:,}{noun} (file order)"
    return f"all {total:,}{noun}" if images == total else f"{images:,} of {total:,}{noun} (random sample)"


def format_run(metrics: dict) -> str:
    """A few lines that summarise one finished run."""
    ll, test_elbo, train = metrics["test_log_likelihood"], metrics["test_elbo"], metrics["train_bound"]
    kl = ", ".join(f"{v:.2f}" for v in metrics["kl_per_layer"])
    lines = [
        f"{variant_name(metrics)}, {metrics['layers']} layers, {metrics['epochs']} epochs "
        f"(warm-up {metrics['warmup_epochs']}), "
        f"{metrics['wall_time_s']['total']:.0f} s on {metrics['device']}",
        f"  test log p(x), IW K={ll['iw_samples']} over {describe_test_images(ll)}: {format_bound(ll)} nats"
        + (f" (gap left at K about {ll['remaining_gap']:.3f})" if ll.get("remaining_gap") is not None else ""),
        f"  test ELBO, 1 sample over {describe_test_images(test_elbo)}: {format_bound(test_elbo)} nats",
        f"  train bound (K={train['iw_samples']}) over {train['images']} images:    {format_bound(train)} nats",
        f"  KL per layer (test, z1..z{metrics['layers']}): {kl}",
    ]
    if "bits_per_dim" in ll:
        scaled = " (x = (pixel + u)/256)" if metrics.get("dequantized") else ""
        lines.insert(2, f"  test log p(x) in bits/dim{scaled}: {ll['bits_per_dim']:.4f} ± {ll['bits_per_dim_stderr']:.4f}")
    return "\n".join(lines)
