"""The paper's claims judged on the runs' records, one function an item of the paper folder (lvae/report/verdicts.py).

Every verdict follows the one rule of lvae/report/rule.py. A claim that needs runs that are not there says
which, and the command that makes them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable, Optional

from lvae.core.analysis import ACTIVITY_THRESHOLD
from lvae.report.compare import paired, read_estimates
from lvae.report.figures import curve_points
from lvae.report.grid import Grid
from lvae.report.paper_numbers import PAPER_ORDER
from lvae.report.rule import (DESCRIPTIVE, NOT_RUN, NOT_TESTABLE, Difference, Verdict, all_of, better_verdict,
                              format_count, over_images, over_seeds)
from lvae.report.runs import RunRecord

VAE_VARIANTS = PAPER_ORDER[:3]  # VAE, VAE+BN, VAE+BN+WU
LVAE, BEST_VAE = PAPER_ORDER[3], PAPER_ORDER[2]
VARIANT_PRESETS = dict(zip(PAPER_ORDER, ("vae", "vae_bn", "vae_bn_wu", "lvae_bn_wu")))  # configs/variant/
FINE_TUNED = ("LVAE+BN+WU + fine-tuning (MC=10)", "LVAE+BN+WU + fine-tuning (MC=10, IW=10)")
OTHER_DATASETS = ("omniglot", "norb")


def completed(runs: list[RunRecord]) -> list[RunRecord]:
    return [r for r in runs if r.completed]


def seed_pairs(runs_a: list[RunRecord], runs_b: list[RunRecord]) -> list[tuple[RunRecord, RunRecord]]:
    """The completed runs of a and b that share a seed, paired, in a's order."""
    by_seed = {r.metrics["seed"]: r for r in completed(runs_b)}
    return [(a, by_seed[a.metrics["seed"]]) for a in completed(runs_a) if a.metrics["seed"] in by_seed]


@dataclass
class Paper:
    """The runs of the analyses: the grid of every run found, the depth of the per-layer analyses, and what
    the command that makes missing runs needs (the runs' budget preset and seeds)."""

    records: list[RunRecord]
    grid: Grid
    layers: int  # the deepest models: the paper's 5 layers when present

    def cell(self, row: str, layers: Optional[int] = None) -> list[RunRecord]:
        return self.grid.runs(row, self.layers if layers is None else layers)

    def deep_runs(self) -> dict[str, list[RunRecord]]:
        """The completed runs of each variant at `layers` (not fine-tuned, MNIST), in the paper's order."""
        return {row: completed(self.cell(row)) for row in PAPER_ORDER if completed(self.cell(row))}

    @property
    def seeds(self) -> list[int]:
        return sorted({r.metrics["seed"] for runs in self.deep_runs().values() for r in runs}) or [0]

    @property
    def budget(self) -> str:
        names = sorted({r.setting["budget_name"] for r in self.records if (r.setting or {}).get("budget_name")})
        return names[0] if len(names) == 1 else "<budget>"

    def train_command(self, experiment: str, **overrides: str) -> str:
        """The sweep that makes runs of `experiment` at this folder's budget and seeds."""
        seeds = ",".join(map(str, self.seeds))
        settings = " ".join(f"{key}={value}" for key, value in overrides.items())
        return f"`python train.py -m experiment={experiment} budget={self.budget} {settings} seed={seeds}`"

    def missing(self, needs: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """The cells (variant, layers) of `needs` without a completed run."""
        return [(row, n) for row, n in needs if not completed(self.cell(row, n))]

    def not_run(self, what: str, needs: list[tuple[str, int]], command: str) -> Verdict:
        """NOT_RUN for `what`, naming the cells (variant, layers) of `needs` without a completed run; when every
        cell has runs, they are no pair (no shared seed, or other test images: eval.test_subset is a budget key)."""
        missing = self.missing(needs)
        if not missing:
            return Verdict(NOT_TESTABLE, f"{what}: the runs share no seed, or scored different test images")
        return Verdict(NOT_RUN, f"{what}: no completed run of {', '.join(f'{row} L={n}' for row, n in missing)}; "
                                f"{command} makes them")

    def fig3_not_run(self, what: str, needs: list[tuple[str, int]]) -> Verdict:
        """NOT_RUN for `what`, with the Figure 3 sweep of just the missing variants and depths."""
        missing = self.missing(needs) or needs
        rows = [row for row in PAPER_ORDER if any(row == r for r, _ in missing)]
        layers = ",".join(str(n) for n in sorted({n for _, n in missing}))
        command = self.train_command("fig3", layers=layers, variant=",".join(VARIANT_PRESETS[r] for r in rows))
        return self.not_run(what, needs, command)


def difference(runs_a: list[RunRecord], runs_b: list[RunRecord], quantity: str) -> Optional[Difference]:
    """b - a of `quantity` (test_log_likelihood or test_elbo): over the seeds when 2 or more pairs share one, else
    paired image by image; None without a pair. Runs without per-image estimates (older records) are compared by
    their means (standard errors added), and only when both scored the whole test set."""
    values, stderrs, images = [], [], []
    for a, b in seed_pairs(runs_a, runs_b):
        try:
            result = paired(read_estimates(a.run_dir), read_estimates(b.run_dir), quantity)
            values.append(result.difference)
            stderrs.append(result.difference_stderr)
            images.append(result.images)
        except (OSError, ValueError):  # no per_image.pt, or other images: the means, unpaired, of whole test sets only
            ma, mb = a.metrics[quantity], b.metrics[quantity]
            if not all(m["images"] == m.get("test_set_images") for m in (ma, mb)):
                continue  # means over different test images are no comparison (docs/method.md, section 5)
            values.append(mb["mean"] - ma["mean"])
            stderrs.append(math.hypot(ma["stderr"], mb["stderr"]))
            images.append(min(ma["images"], mb["images"]))
    if len(values) == 1:
        return over_images(values[0], stderrs[0], images[0])
    return over_seeds(values)


def count_verdict(pairs: list[tuple[RunRecord, RunRecord]], count: Callable[[dict], float], what: str,
                  missing: Verdict) -> Verdict:
    """b - a of a count: the rule over 2 or more seeds; DESCRIPTIVE for one seed (a count has no standard error)."""
    if not pairs:
        return missing
    values = [(count(a.metrics), count(b.metrics)) for a, b in pairs]
    if len(pairs) == 1:
        (a, b), = values
        return Verdict(DESCRIPTIVE, f"{what}: {format_count(a)} -> {format_count(b)} (one seed: a count has no "
                                    "standard error, so no verdict)")
    listed = "; ".join(f"seed {x.metrics['seed']}: {format_count(a)} -> {format_count(b)}"
                       for (x, _), (a, b) in zip(pairs, values))
    return better_verdict(over_seeds([b - a for a, b in values], counts=True), f"{what} ({listed})", unit="units")


def curves_verdict(paper: Paper) -> Verdict:
    """Item 1: the end-of-training K-sample test log p(x), test ELBO and train bound (parts), and the curves
    (descriptive: successive points of a run are not independent)."""
    lvae, vae = paper.cell(LVAE), paper.cell(BEST_VAE)
    missing = paper.fig3_not_run(f"{LVAE} - {BEST_VAE}", [(BEST_VAE, paper.layers), (LVAE, paper.layers)])
    k = {r.metrics["test_log_likelihood"]["iw_samples"] for r in completed(lvae) + completed(vae)}
    parts = [better_verdict(difference(vae, lvae, "test_log_likelihood"),
                            f"end-of-training test log p(x) (K={'/'.join(map(str, sorted(k)))}), {LVAE} - {BEST_VAE} "
                            f"(L={paper.layers})", missing),
             better_verdict(difference(vae, lvae, "test_elbo"), "end-of-training test ELBO (1 sample)", missing),
             train_bound_verdict(seed_pairs(vae, lvae), missing)]
    return all_of([*parts, curve_points_part(seed_pairs(vae, lvae))])


def train_bound_verdict(pairs: list[tuple[RunRecord, RunRecord]], missing: Verdict) -> Verdict:
    what = "end-of-training train bound (the training objective on a fixed sample of training images)"
    if len(pairs) == 1:  # no per-image values are stored: the runs' standard errors, added as if independent
        (a, b), = pairs
        ta, tb = a.metrics["train_bound"], b.metrics["train_bound"]
        d = Difference(tb["mean"] - ta["mean"], math.hypot(ta["stderr"], tb["stderr"]), ta["images"] - 1,
                       f"the same {ta['images']:,} training images, 1 seed, not paired (no per-image values are "
                       "stored): the standard errors added as if independent")
        return better_verdict(d, what)
    return better_verdict(over_seeds([b.metrics["train_bound"]["mean"] - a.metrics["train_bound"]["mean"]
                                      for a, b in pairs]), what, missing)


def curve_points_part(pairs: list[tuple[RunRecord, RunRecord]]) -> Verdict:
    """DESCRIPTIVE: at how many curve points after warm-up the LVAE's test bound is the higher, per seed."""
    counts = []
    for vae, lvae in pairs:
        points = [{r["epoch"]: r["curve"]["test_bound"] for r in curve_points(run.metrics.get("history", []))}
                  for run in (vae, lvae)]
        shared = [e for e in sorted(points[0]) if e in points[1] and e > lvae.metrics["warmup_epochs"]]
        if shared:
            counts.append(f"{sum(points[1][e] > points[0][e] for e in shared)} of {len(shared)} "
                          f"(seed {lvae.metrics['seed']})")
    if not counts:
        return Verdict(NOT_TESTABLE, "training curves after warm-up: none recorded at this budget (eval.curve_every)")
    return Verdict(DESCRIPTIVE, f"the curve points after warm-up at which the LVAE's test bound is the higher: "
                                f"{', '.join(counts)} (successive points of one run are not independent, so no "
                                "verdict)")


def fig3_verdict(paper: Paper) -> Verdict:
    """Item 2: the deepest LVAE+BN+WU against each VAE variant; the VAE+BN+WU and LVAE+BN+WU with depth."""
    best = [better_verdict(difference(paper.cell(row), paper.cell(LVAE), "test_log_likelihood"),
                           f"{LVAE} - {row}, test log p(x), L={paper.layers}",
                           paper.fig3_not_run(f"{LVAE} - {row}, L={paper.layers}",
                                              [(row, paper.layers), (LVAE, paper.layers)]))
            for row in VAE_VARIANTS]
    return all_of([*best, *(improves_with_depth(paper, row) for row in (BEST_VAE, LVAE))])


def improves_with_depth(paper: Paper, row: str) -> Verdict:
    depths = sorted(n for n in paper.grid.layers if completed(paper.cell(row, n)))
    if len(depths) < 2:
        return paper.fig3_not_run(f"{row} improves with depth (runs at L={','.join(map(str, depths))} only)",
                                  [(row, n) for n in range(1, 6)])
    return better_verdict(difference(paper.cell(row, depths[0]), paper.cell(row, depths[-1]), "test_log_likelihood"),
                          f"{row} L={depths[-1]} - L={depths[0]}, test log p(x)")


def active_units_verdict(paper: Paper) -> Verdict:
    """Item 3: each step VAE -> VAE+BN -> VAE+BN+WU -> LVAE+BN+WU increases the active units (KL criterion)."""
    def total(metrics: dict) -> float:
        return sum(metrics["active_units"]["kl"])

    parts = []
    for a, b in zip(PAPER_ORDER, PAPER_ORDER[1:]):
        pairs = [(x, y) for x, y in seed_pairs(paper.cell(a), paper.cell(b))
                 if "active_units" in x.metrics and "active_units" in y.metrics]
        what = f"active units (KL criterion, all layers, L={paper.layers}), {a} -> {b}"
        parts.append(count_verdict(pairs, total, what,
                                   paper.fig3_not_run(f"{a} -> {b}", [(a, paper.layers), (b, paper.layers)])))
    return all_of(parts)


def kl_above_bottom(metrics: dict) -> tuple[float, float]:
    """KL of the layers above z1 and a bound on its standard error (the layers' standard errors added)."""
    return sum(metrics["kl_per_layer"][1:]), sum(metrics["kl_per_layer_stderr"][1:])


def kl_per_layer_verdict(paper: Paper) -> Verdict:
    """Item 4: the LVAE's KL above z1 against the VAE+BN+WU's, over every seed."""
    pairs = [(v, l) for v, l in seed_pairs(paper.cell(BEST_VAE), paper.cell(LVAE))
             if "kl_per_layer_stderr" in v.metrics and "kl_per_layer_stderr" in l.metrics]
    if not pairs:
        return paper.fig3_not_run(f"KL per layer, {LVAE} and {BEST_VAE}",
                                  [(BEST_VAE, paper.layers), (LVAE, paper.layers)])
    above = [(kl_above_bottom(v.metrics), kl_above_bottom(l.metrics)) for v, l in pairs]
    shares = [(kv / sum(v.metrics["kl_per_layer"]), kl / sum(l.metrics["kl_per_layer"]))
              for ((kv, _), (kl, _)), (v, l) in zip(above, pairs)]
    mean = [statistics.fmean(x) for x in zip(*((kv, kl) for (kv, _), (kl, _) in above))]
    share = [statistics.fmean(x) for x in zip(*shares)]
    what = (f"KL above z1, {LVAE} {mean[1]:.2f} ({share[1]:.0%} of its KL) - {BEST_VAE} {mean[0]:.2f} "
            f"({share[0]:.0%}){' (means over the seeds)' if len(pairs) > 1 else ''}")
    if len(pairs) == 1:
        ((kv, sv), (kl, sl)), = above
        images = pairs[0][0].metrics["test_log_likelihood"]["images"]
        return better_verdict(Difference(kl - kv, sv + sl, images - 1, f"1 seed, {images:,} test images: the "
                                         "layers' and runs' standard errors added, an upper bound"), what)
    return better_verdict(over_seeds([kl - kv for (kv, _), (kl, _) in above]), what)


def active_above_bottom(metrics: dict) -> Optional[tuple[int, int]]:
    """(epoch, units active above z1) at the run's last training-curve point; None without curves."""
    points = curve_points(metrics.get("history", []))
    if not points:
        return None
    units = points[-1]["curve"]["kl_per_unit"][1:]
    return points[-1]["epoch"], sum(value > ACTIVITY_THRESHOLD for layer in units for value in layer)


def kl_per_unit_verdict(paper: Paper) -> Verdict:
    """Item 5: units active above z1 at the last curve point, the LVAE against the VAE+BN+WU, over every seed."""
    pairs = [(v, l) for v, l in seed_pairs(paper.cell(BEST_VAE), paper.cell(LVAE))
             if active_above_bottom(v.metrics) and active_above_bottom(l.metrics)]
    if not pairs and seed_pairs(paper.cell(BEST_VAE), paper.cell(LVAE)):
        return Verdict(NOT_TESTABLE, "no training curves at this budget (eval.curve_every)")
    epoch = active_above_bottom(pairs[0][1].metrics)[0] if pairs else None
    return count_verdict(pairs, lambda m: active_above_bottom(m)[1],
                         f"units active above z1 at the last curve point (epoch {epoch}), {BEST_VAE} -> {LVAE}",
                         paper.fig3_not_run(f"KL per unit, {LVAE} and {BEST_VAE}",
                                            [(BEST_VAE, paper.layers), (LVAE, paper.layers)]))


def pca_verdict(analysis: Optional[dict], paper: Paper) -> Verdict:
    """Item 6: digit accuracy from the top layer's posterior, of the runs analysed (those with weights)."""
    if analysis is None:
        return Verdict(NOT_RUN, "the runs' checkpoints or weights are not there to look inside; `python -m "
                                "lvae.analyze <run dirs>` on runs that have them")
    runs = analysis["runs"]
    lvae, vae = f"{LVAE} L{paper.layers}", f"{BEST_VAE} L{paper.layers}"
    if not all(name in runs and "nearest_centroid_accuracy" in runs[name] for name in (lvae, vae)):
        return Verdict(NOT_TESTABLE, f"needs {LVAE} and {BEST_VAE} at L={paper.layers} on a dataset with classes")
    top_l, top_v = runs[lvae]["nearest_centroid_accuracy"][-1], runs[vae]["nearest_centroid_accuracy"][-1]
    n = analysis["test_images"] - analysis["test_images"] // 2  # the images scored (nearest_centroid_accuracy)
    stderr = math.sqrt(top_l * (1 - top_l) / n + top_v * (1 - top_v) / n)
    d = Difference(100 * (top_l - top_v), 100 * stderr, n - 1,
                   f"seed {runs[lvae]['seed']} alone, binomial standard error over {n:,} scored images: the training "
                   "noise between seeds is not in it")
    return better_verdict(d, f"digit accuracy of a nearest-class-mean classifier on the top layer's posterior, "
                             f"{LVAE} {top_l:.1%} - {BEST_VAE} {top_v:.1%}", unit="percentage points")


def table_value(runs: list[RunRecord]) -> str:
    """A cell of the MNIST table: one seed's mean ± its standard error over the test images, or several seeds'
    mean ± its standard error over the seeds."""
    values = [r.metrics["test_log_likelihood"] for r in completed(runs)]
    if not values:
        return runs[0].status if runs else "not run"
    if len(values) == 1:
        return f"{values[0]['mean']:.2f} ± {values[0]['stderr']:.2f}"
    means = [v["mean"] for v in values]
    return f"{statistics.fmean(means):.2f} ± {statistics.stdev(means) / math.sqrt(len(means)):.2f}"


def table_verdict(paper: Paper) -> Verdict:
    """Item 7: each fine-tuning against its base run; on OMNIGLOT and NORB, the LVAE+BN+WU against the VAE+BN+WU."""
    base = paper.cell(LVAE, 5)
    command = f"`make reproduce EXPERIMENT=table1 BUDGET={paper.budget} SEEDS={len(paper.seeds)}`"
    parts = [better_verdict(difference(base, paper.cell(label, 5), "test_log_likelihood"), f"{label} - {LVAE}",
                            paper.not_run(f"{label} - {LVAE}", [(LVAE, 5), (label, 5)], command))
             for label in FINE_TUNED]
    for dataset in OTHER_DATASETS:
        rows = [f"{row}, {dataset}" for row in (BEST_VAE, LVAE)]
        what = f"{dataset.upper()}: {LVAE} - {BEST_VAE}, test log p(x), L=5"
        parts.append(better_verdict(
            difference(paper.grid.runs(rows[0], 5), paper.grid.runs(rows[1], 5), "test_log_likelihood"), what,
            paper.not_run(what, [(row, 5) for row in rows], paper.train_command(
                "table1_datasets", data=dataset, variant=f"{VARIANT_PRESETS[BEST_VAE]},{VARIANT_PRESETS[LVAE]}"))))
    return all_of(parts)
