"""Paired comparison of two sets of runs on the same test images: `python -m lvae.compare`.

    python -m lvae.compare --a VAE_RUN [VAE_RUN ...] --b LVAE_RUN [LVAE_RUN ...] [--images N]

Runs of a and b are paired by seed. Every run stores the estimate of each test image
(per_image.pt) with the image's index in the test set, and all runs of one dataset score the
same test images (binarized once with data.binarization_seed; a subset is the first N of one
fixed random order), so a pair's difference b - a is taken image by image, on the images both
runs scored, and runs that scored other images, or scored them otherwise (`what_was_scored`: another
dataset, likelihood, binarization, pixel scale, K or numerics version), are refused. Its
standard error is that of the per-image differences, far smaller than either run's own
standard error, which is dominated by how much the images differ from one another.
Over seeds, the table gives the mean and standard deviation of each quantity. When the runs recorded
training curves (eval.curve_every), a second table gives b - a along training.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lvae.report.grid import row_label
from lvae.report.runs import fine_tuning_base, run_setting
from lvae.run.config import Config, config_value
from lvae.run.provenance import numerics_version_of
from lvae.run.record import (PER_IMAGE_FILE, RecordError, is_complete, read_config, read_per_image, read_record,
                             record_problem, status_of)
from lvae.run.summary import variant_name


@dataclass
class RunEstimates:
    path: Path
    seed: int
    label: str
    per_image: dict[str, torch.Tensor]  # quantity -> (N,) float64
    indices: torch.Tensor  # (N,) each value's image: its index in the whole test set
    indices_assumed: bool = False  # per_image.pt predates the indices: taken as the first N test images
    curves: dict[int, dict] = field(default_factory=dict)  # epoch -> its training-curve point (eval.curve_every)
    scored: dict[str, Any] = field(default_factory=dict)  # what its estimates are estimates of (`what_was_scored`)


# The data settings that make the same test images other data: another binarization (or none), other pixel values.
SCORED_DATA_KEYS = ("data.binarize", "data.binarization_seed", "data.dequantize", "data.intensity_scale")


def what_was_scored(path: Path, metrics: dict) -> dict[str, Any]:
    """What a run's per-image estimates are estimates of, beyond which test images: the dataset, the likelihood,
    K of the test log-likelihood, the numerics version, and (from config.yaml, when the folder holds one) how the
    pixels were made. Two runs that differ in any of these scored different quantities."""
    scored = {"dataset": metrics.get("dataset"), "likelihood": metrics.get("likelihood"),
              "eval.iw_samples (K)": metrics["test_log_likelihood"].get("iw_samples"),
              "numerics version": numerics_version_of(metrics)}
    config = read_config(path)
    if config is not None:
        scored.update({key: config_value(config, key) for key in SCORED_DATA_KEYS})
    return scored


def read_estimates(path: Path) -> RunEstimates:
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder{'' if path.exists() else ' (it does not exist)'}")
    metrics = read_record(path)
    if not is_complete(metrics):
        raise ValueError(f"{path} is not a completed run (status {status_of(metrics)})")
    per_image = read_per_image(path)
    if per_image is None:
        raise ValueError(f"{path} has no {PER_IMAGE_FILE} (runs record it since the per-image estimates were added)")
    problem = record_problem(metrics, per_image)
    if problem:
        raise RecordError(f"{path}: {problem}")
    indices = per_image.pop("test_indices", None)
    assumed = indices is None  # written when a subset was the first N test images
    if assumed:
        indices = torch.arange(len(per_image["test_log_likelihood"]))
    curves = {record["epoch"]: record["curve"] for record in metrics.get("history", []) if "curve" in record}
    config = read_config(path)
    setting = _setting_with_base(path, config) if config is not None else None
    label = row_label(setting) if setting and "model.name" in setting else variant_name(metrics)  # as reports do
    return RunEstimates(path, metrics["seed"], f"{label} L={metrics['layers']}", per_image,
                        indices, assumed, curves, what_was_scored(path, metrics))


def _setting_with_base(path: Path, config: Config) -> dict:
    """The run's setting as the reports label a row: a fine-tuned run as its base run's variant + fine-tuning,
    its base found as a report finds it (fine_tuning_base), the run beside it being the report's other run."""
    setting = run_setting(config)
    if setting.get("init_from"):
        beside = path.parent / Path(setting["init_from"]).name
        named = {beside.name: run_setting(base)} if (base := read_config(beside)) is not None else {}
        if base_setting := fine_tuning_base(setting["init_from"], named):
            setting["init_from.setting"] = base_setting
    return setting


def _describe_indices(run: RunEstimates) -> str:
    return ("its per_image.pt has no test-image indices (written before test subsets were a random sample), "
            "so it is taken to hold the first test images in file order" if run.indices_assumed
            else "its test images are the first ones of the fixed random order (eval.test_subset)")


@dataclass
class Paired:
    """b - a on the first `images` test images of one pair of runs, for one quantity."""

    seed: int
    images: int
    mean_a: float
    mean_b: float
    difference: float
    difference_stderr: float


def paired(a: RunEstimates, b: RunEstimates, quantity: str, images: int | None = None) -> Paired:
    """b - a on the first `images` (default: all) of the test images that both runs scored; ValueError
    when the runs scored other images (a comparison of different images is no paired one)."""
    n = min(len(a.per_image[quantity]), len(b.per_image[quantity]), images or math.inf)
    if not torch.equal(a.indices[:n], b.indices[:n]):
        raise ValueError(f"{a.path} and {b.path} did not score the same test images, so they cannot be paired "
                         f"image by image. {a.path}: {_describe_indices(a)}; {b.path}: {_describe_indices(b)}. "
                         "Evaluate both runs with this code (run the same command again after deleting "
                         "metrics.json: it re-evaluates the final checkpoint) before comparing them.")
    values_a, values_b = a.per_image[quantity][:n], b.per_image[quantity][:n]
    difference = values_b - values_a
    stderr = difference.std().item() / math.sqrt(n) if n > 1 else math.nan
    return Paired(a.seed, n, values_a.mean().item(), values_b.mean().item(), difference.mean().item(), stderr)


def _by_seed(runs: list[RunEstimates], side: str) -> dict[int, RunEstimates]:
    """seed -> run of one side; two runs of one seed are refused (their mean over seeds would count it twice)."""
    by_seed: dict[int, RunEstimates] = {}
    for run in runs:
        if run.seed in by_seed:
            raise ValueError(f"{side} holds two runs of seed {run.seed} ({by_seed[run.seed].path} and {run.path}): "
                             "give each seed once per side")
        by_seed[run.seed] = run
    return by_seed


def _scoring_difference(runs: list[RunEstimates]) -> str | None:
    """What the first run scored that another did not score the same way, as 'key: path value, path value'."""
    first = runs[0]
    for run in runs[1:]:
        for key in first.scored.keys() & run.scored.keys():
            if first.scored[key] != run.scored[key]:
                return f"{key}: {first.scored[key]!r} in {first.path}, {run.scored[key]!r} in {run.path}"
    return None


def pair_by_seed(runs_a: list[RunEstimates], runs_b: list[RunEstimates]) -> list[tuple[RunEstimates, RunEstimates]]:
    """(a, b) for every seed of both sides; ValueError for a run on both sides, a seed twice on one side, no
    shared seed, or runs that scored different quantities or data (see `what_was_scored`)."""
    same = {run.path.resolve() for run in runs_a} & {run.path.resolve() for run in runs_b}
    if same:
        raise ValueError(f"{', '.join(map(str, sorted(same)))} is in both --a and --b: a run compared with itself "
                         "differs by exactly 0")
    by_seed_a, by_seed_b = _by_seed(runs_a, "--a"), _by_seed(runs_b, "--b")
    pairs = [(a, by_seed_b[seed]) for seed, a in by_seed_a.items() if seed in by_seed_b]
    if not pairs:
        raise ValueError("no seed is shared by the runs of --a and --b")
    difference = _scoring_difference([run for pair in pairs for run in pair])
    if difference:
        raise ValueError(f"these runs scored different things, so their numbers cannot be compared ({difference}); "
                         "compare runs of the same data, likelihood, K and numerics version")
    return pairs


def _origin(pairs: list[tuple[RunEstimates, RunEstimates]]) -> str:
    if any(run.indices_assumed for pair in pairs for run in pair):
        return "; per_image.pt without test-image indices: taken as the first test images in file order"
    return ""


def _mean_std(values: list[float], sign: str = "") -> str:
    return f"{statistics.fmean(values):{sign}.2f} ± {statistics.stdev(values):.2f}"


def comparison_table(pairs: list[tuple[RunEstimates, RunEstimates]], images: int | None = None) -> str:
    """Markdown: one line per seed and quantity, then, for several seeds, the mean ± std over them."""
    lines = []
    for quantity in ("test_log_likelihood", "test_elbo"):
        results = [paired(a, b, quantity, images) for a, b in pairs]
        a_label, b_label = pairs[0][0].label, pairs[0][1].label
        if a_label == b_label:  # the same variant in other settings (data, budget): the run folders tell them apart
            a_label, b_label = (f"{label} ({run.path.name})" for label, run in ((a_label, pairs[0][0]),
                                                                                (b_label, pairs[0][1])))
        lines += [f"{quantity} (nats, on the {min(r.images for r in results)} test images every pair scored"
                  f"{_origin(pairs)})", "",
                  f"| seed | {a_label} | {b_label} | {b_label} - {a_label} (paired, ± s.e.) |", "|---|---|---|---|"]
        lines += [f"| {r.seed} | {r.mean_a:.2f} | {r.mean_b:.2f} | {r.difference:+.2f} "
                  f"{'(one image: no s.e.)' if math.isnan(r.difference_stderr) else f'± {r.difference_stderr:.2f}'} |"
                  for r in results]
        if len(results) > 1:  # with one seed, the line above says it all
            means_a, means_b, differences = ([getattr(r, name) for r in results]
                                             for name in ("mean_a", "mean_b", "difference"))
            lines.append(f"| mean ± std over {len(results)} seeds | {_mean_std(means_a)} | {_mean_std(means_b)} "
                         f"| {_mean_std(differences, '+')} |")
        lines.append("")
    return "\n".join(lines)


CURVE_QUANTITIES = (("test_bound", "test bound"), ("test_elbo", "test ELBO"), ("train_elbo", "train ELBO"))


def curve_table(pairs: list[tuple[RunEstimates, RunEstimates]]) -> str:
    """Markdown: b - a along training, at the epochs where every run recorded a training-curve point measured
    the same way (K and images); "" when there are none. Means over seeds; no standard error, because a
    curve point stores means only (lvae.core.evaluate.curve_point)."""
    runs = [run for pair in pairs for run in pair]
    settings = {(c["iw_samples"], c["images"]) for run in runs for c in run.curves.values()}
    epochs = sorted(set.intersection(*(set(run.curves) for run in runs)))
    if not epochs or len(settings) != 1:
        return ""
    (k, images), = settings
    a_label, b_label = pairs[0][0].label, pairs[0][1].label
    lines = [f"along training (curves: means over the same {images} test images, test bound with K={k}, and "
             f"{images} training images; {len(pairs)} seed{'s' if len(pairs) > 1 else ''}; no ± here: a curve "
             "point stores means only)", "",
             f"| epoch | {a_label} test bound | {b_label} test bound | "
             + " | ".join(f"{name}, b - a" for _, name in CURVE_QUANTITIES) + " |",
             "|---|---|---|" + "---|" * len(CURVE_QUANTITIES)]
    for epoch in epochs:
        points = [(a.curves[epoch], b.curves[epoch]) for a, b in pairs]
        cells = [f"{statistics.fmean(a['test_bound'] for a, _ in points):.2f}",
                 f"{statistics.fmean(b['test_bound'] for _, b in points):.2f}",
                 *(f"{statistics.fmean(b[key] - a[key] for a, b in points):+.2f}" for key, _ in CURVE_QUANTITIES)]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, ""])
