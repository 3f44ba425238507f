"""The paper's analyses in one folder: `python -m lvae.paper --budget quick` (`make paper BUDGET=quick`).

1. Runs what is missing of Figure 3 and of the MNIST table (`python -m lvae.reproduce` for experiment=fig3,
   then table1: finished runs are skipped, interrupted ones resume), unless --no-run.
2. Writes, from the runs' records only (no training), into outputs/paper-<budget>/ (or --out):

       index.md               every analysis below under the paper's claim, with our verdict
       bounds_vs_epochs.png   1. train and test bounds against epochs (the training curves)
       fig3/                  2. Figure 3 (fig3.png) and its tables (results.md, results.csv)
       (index.md)             3. active units per layer, both criteria, as a table
       kl_per_layer.png       4. KL per layer at the end of training
       kl_per_unit.png        5. log KL per unit at selected epochs (white: inactive)
       analysis/              6. PCA of each layer's posterior (pca.png), active units, samples (lvae.cli.analyze)
       (index.md)             7. the MNIST table with fine-tuning; OMNIGLOT and NORB (variants x layers)

`python -m lvae.paper --from DIR [DIR ...] --out DIR` writes the folder from runs found below the DIRs
(e.g. the 200-epoch VAE-vs-LVAE pair of experiment=vae_vs_lvae); what they lack is "not testable".

A verdict is computed, never typed: a claim that one model is better is "supported" when the paired
difference (image by image on the same test images; over several seeds, the mean of the seeds'
differences and its standard error over seeds) exceeds twice its standard error, "not supported" when it
does not (either sign, the numbers say which), and "not testable" when the runs or curves it needs are missing.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from lvae.core.analysis import layer_names, plot_bounds_vs_epochs, plot_kl_per_layer_bars, plot_kl_per_unit, ACTIVITY_THRESHOLD
from lvae.report.compare import curve_table, pair_by_seed, paired, read_estimates
from lvae.report.grid import Grid, build_grid
from lvae.report.markdown import budget_summary
from lvae.report.output import write_report
from lvae.report.paper_numbers import PAPER_NUMBERS, PAPER_ORDER, budget_deviations
from lvae.report.runs import RunRecord, left_out_notes
from lvae.run.analysis import AnalysisSettings, analyze_runs
from lvae.run.stored import RunDirError, check_run_dir

SUPPORTED, NOT_SUPPORTED, NOT_TESTABLE = "supported", "not supported", "not testable at this budget"
VAE_VARIANTS = PAPER_ORDER[:3]  # VAE, VAE+BN, VAE+BN+WU
LVAE, BEST_VAE = PAPER_ORDER[3], PAPER_ORDER[2]
FINE_TUNED = ("LVAE+BN+WU + fine-tuning (MC=10)", "LVAE+BN+WU + fine-tuning (MC=10, IW=10)")
OTHER_DATASETS = ("omniglot", "norb")
STEPS = ("fig3", "table1")  # the presets whose runs the analyses read, in the order they run


@dataclass
class Verdict:
    word: str  # SUPPORTED, NOT_SUPPORTED or NOT_TESTABLE
    because: str  # the numbers it rests on
    parts: tuple["Verdict", ...] = ()  # a claim made of several parts: each part's verdict

    def markdown(self) -> str:
        if not self.parts:
            return f"**Verdict: {self.word}**: {self.because}"
        return "\n".join([f"**Verdict: {self.word}**{self.because}", "",
                          *(f"- {part.word}: {part.because}" for part in self.parts)])


@dataclass
class Difference:
    """b - a of one quantity, with its standard error and what it is a mean of."""

    value: float
    stderr: float
    basis: str  # "paired over 10,000 test images, 1 seed", ...


def completed(runs: list[RunRecord]) -> list[RunRecord]:
    return [r for r in runs if r.completed]


def difference(runs_a: list[RunRecord], runs_b: list[RunRecord], quantity: str) -> Optional[Difference]:
    """b - a of `quantity` (test_log_likelihood or test_elbo), paired image by image per seed; None without a pair.
    Runs without per-image estimates (older records) are compared by their means (standard errors added), and
    only when both scored the whole test set."""
    by_seed = {r.metrics["seed"]: r for r in completed(runs_b)}
    pairs = [(a, by_seed[a.metrics["seed"]]) for a in completed(runs_a) if a.metrics["seed"] in by_seed]
    if not pairs:
        return None
    values, stderrs, images = [], [], set()
    for a, b in pairs:
        try:
            result = paired(read_estimates(a.run_dir), read_estimates(b.run_dir), quantity)
            values.append(result.difference)
            stderrs.append(result.difference_stderr)
            images.add(result.images)
        except (OSError, ValueError):  # no per_image.pt, or other images: the means, unpaired, of whole test sets only
            ma, mb = a.metrics[quantity], b.metrics[quantity]
            if not all(m["images"] == m.get("test_set_images") for m in (ma, mb)):
                continue  # means over different test images are no comparison (docs/method.md, section 5)
            values.append(mb["mean"] - ma["mean"])
            stderrs.append(math.hypot(ma["stderr"], mb["stderr"]))
            images.add(min(ma["images"], mb["images"]))
    n = len(values)
    if n == 0:
        return None
    if n == 1:
        return Difference(values[0], stderrs[0], f"paired over {min(images):,} test images, 1 seed")
    return Difference(statistics.fmean(values), statistics.stdev(values) / math.sqrt(n),
                      f"mean of {n} seeds' paired differences ± its standard error over the seeds")


def better_verdict(d: Optional[Difference], what: str) -> Verdict:
    """`what` (b better than a) from the difference b - a."""
    if d is None:
        return Verdict(NOT_TESTABLE, f"{what}: the runs are missing, unfinished, or scored other test images")
    text = f"{what}: {d.value:+.2f} ± {d.stderr:.2f} nats ({d.basis})"
    if d.value > 2 * d.stderr:
        return Verdict(SUPPORTED, text)
    side = "the opposite, by more than" if d.value < -2 * d.stderr else "within"
    return Verdict(NOT_SUPPORTED, f"{text}: {side} 2 standard errors of zero")


def all_of(verdicts: list[Verdict]) -> Verdict:
    """One verdict for a claim made of parts: supported when every part is, not testable when one is."""
    words = {v.word for v in verdicts}
    word = NOT_TESTABLE if NOT_TESTABLE in words else SUPPORTED if words == {SUPPORTED} else NOT_SUPPORTED
    return Verdict(word, f" ({len(verdicts)} parts, supported when every part is):", tuple(verdicts))


def mean_over_seeds(runs: list[RunRecord], value: Callable[[dict], float]) -> Optional[float]:
    values = [value(r.metrics) for r in completed(runs)]
    return statistics.fmean(values) if values else None


@dataclass
class Paper:
    """The runs of the analyses: the grid of every run found, and the depth of the per-layer analyses."""

    records: list[RunRecord]
    grid: Grid
    layers: int  # the deepest models: the paper's 5 layers when present

    def cell(self, row: str, layers: Optional[int] = None) -> list[RunRecord]:
        return self.grid.runs(row, self.layers if layers is None else layers)

    def deep_runs(self) -> dict[str, list[RunRecord]]:
        """The completed runs of each variant at `layers` (not fine-tuned, MNIST), in the paper's order."""
        return {row: completed(self.cell(row)) for row in PAPER_ORDER if completed(self.cell(row))}

    def histories(self) -> dict[str, list[dict]]:
        return {f"{row} L{self.layers}": runs[0].metrics["history"] for row, runs in self.deep_runs().items()
                if runs[0].metrics.get("history")}


def curves_verdict(paper: Paper) -> Verdict:
    lvae, vae = paper.cell(LVAE), paper.cell(BEST_VAE)
    verdict = better_verdict(difference(vae, lvae, "test_elbo"),
                             f"end-of-training test ELBO, {LVAE} - {BEST_VAE} (L={paper.layers})")
    points = {row: mean_curve(runs) for row, runs in ((LVAE, lvae), (BEST_VAE, vae)) if completed(runs)}
    if len(points) == 2:
        warmup = completed(lvae)[0].metrics["warmup_epochs"]
        shared = sorted(e for e in points[LVAE] if e in points[BEST_VAE] and e > warmup)
        ahead = sum(points[LVAE][e] > points[BEST_VAE][e] for e in shared)
        seeds = min(len(completed(lvae)), len(completed(vae)))
        verdict.because += (f"; on the curves after warm-up{' (means over the seeds)' if seeds > 1 else ''}, the "
                            f"LVAE's test bound is the higher at {ahead} of {len(shared)} points")
    return verdict


def mean_curve(runs: list[RunRecord]) -> dict[int, float]:
    """The test bound of the training curves at each epoch that every completed run has, averaged over them."""
    curves = [{r["epoch"]: r["curve"]["test_bound"] for r in run.metrics.get("history", []) if "curve" in r}
              for run in completed(runs)]
    epochs = set.intersection(*map(set, curves)) if curves else set()
    return {epoch: sum(curve[epoch] for curve in curves) / len(curves) for epoch in epochs}


def curve_differences(paper: Paper) -> list[str]:
    """LVAE+BN+WU - VAE+BN+WU along training, from the curve points of the runs of both (lvae.report.compare)."""
    try:
        pairs = pair_by_seed(*([read_estimates(r.run_dir) for r in completed(paper.cell(row))]
                               for row in (BEST_VAE, LVAE)))
    except (OSError, ValueError):  # a variant missing, no shared seed, or no per-image estimates
        return []
    table = curve_table(pairs)
    return [table] if table else []


def fig3_verdict(paper: Paper) -> Verdict:
    best = [better_verdict(difference(paper.cell(row), paper.cell(LVAE), "test_log_likelihood"),
                           f"{LVAE} - {row}, test log p(x), L={paper.layers}") for row in VAE_VARIANTS]
    return all_of([*best, *(improves_with_depth(paper, row) for row in (BEST_VAE, LVAE))])


def improves_with_depth(paper: Paper, row: str) -> Verdict:
    depths = sorted(n for n in paper.grid.layers if completed(paper.cell(row, n)))
    if len(depths) < 2:
        return Verdict(NOT_TESTABLE, f"{row} improves with depth: fewer than two depths ran")
    return better_verdict(difference(paper.cell(row, depths[0]), paper.cell(row, depths[-1]), "test_log_likelihood"),
                          f"{row} L={depths[-1]} - L={depths[0]}, test log p(x)")


def active_units_table(paper: Paper) -> list[str]:
    sizes = next((r.metrics["active_units"]["layer_sizes"] for runs in paper.deep_runs().values() for r in runs
                  if "active_units" in r.metrics), None)
    if sizes is None:
        return ["No completed run records active units."]
    lines = ["| variant | " + " | ".join(f"{z} (of {d})" for z, d in zip(layer_names(len(sizes)), sizes))
             + " | total |", "|---" * (len(sizes) + 2) + "|"]
    for row, runs in paper.deep_runs().items():
        counts = [r.metrics["active_units"] for r in runs if "active_units" in r.metrics]
        cells = [" / ".join(f"{statistics.fmean(c[criterion][i] for c in counts):g}" for criterion in ("kl", "cov"))
                 for i in range(len(sizes))]
        total = " / ".join(f"{statistics.fmean(sum(c[criterion]) for c in counts):g}" for criterion in ("kl", "cov"))
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {total} |")
    return lines + ["", "Each cell: active by the paper's criterion (the unit's KL term > 0.01 nats) / by Burda et "
                        "al.'s (Cov_x(E_q[z_u|x]) > 0.01), on the runs' test images (a mean when several seeds ran)."]


def active_units_verdict(paper: Paper) -> Verdict:
    totals = {row: mean_over_seeds(paper.cell(row), lambda m: sum(m["active_units"]["kl"]))
              for row in PAPER_ORDER if any("active_units" in r.metrics for r in completed(paper.cell(row)))}
    missing = [row for row in PAPER_ORDER if row not in totals]
    if missing:
        return Verdict(NOT_TESTABLE, f"no completed {', '.join(missing)} run at L={paper.layers}")
    steps = [f"{a} {totals[a]:g} -> {b} {totals[b]:g}" for a, b in zip(PAPER_ORDER, PAPER_ORDER[1:])]
    increases = all(totals[b] > totals[a] for a, b in zip(PAPER_ORDER, PAPER_ORDER[1:]))
    return Verdict(SUPPORTED if increases else NOT_SUPPORTED,
                   f"active units (KL criterion, all layers, L={paper.layers}): {'; '.join(steps)} (counts of "
                   "one evaluation: no standard error; each step must increase the count)")


def kl_above_bottom(metrics: dict) -> tuple[float, float]:
    """KL of the layers above z_1 and a bound on its standard error (the layers' standard errors added)."""
    return sum(metrics["kl_per_layer"][1:]), sum(metrics["kl_per_layer_stderr"][1:])


def kl_per_layer_verdict(paper: Paper) -> Verdict:
    lvae, vae = completed(paper.cell(LVAE)), completed(paper.cell(BEST_VAE))
    if not lvae or not vae or "kl_per_layer_stderr" not in lvae[0].metrics or "kl_per_layer_stderr" not in vae[0].metrics:
        return Verdict(NOT_TESTABLE, f"no completed {LVAE} and {BEST_VAE} runs with KL per layer at L={paper.layers}")
    (kl_l, se_l), (kl_v, se_v) = kl_above_bottom(lvae[0].metrics), kl_above_bottom(vae[0].metrics)
    shares = [kl / sum(runs[0].metrics["kl_per_layer"]) for kl, runs in ((kl_l, lvae), (kl_v, vae))]
    d = Difference(kl_l - kl_v, se_l + se_v, "the standard errors over test images added: an upper bound")
    verdict = better_verdict(d, f"KL above z1, {LVAE} {kl_l:.2f} ({shares[0]:.0%} of its KL) - {BEST_VAE} "
                                f"{kl_v:.2f} ({shares[1]:.0%})")
    return verdict


def kl_per_unit_verdict(paper: Paper) -> Verdict:
    def active_above_bottom(runs: list[RunRecord]) -> Optional[tuple[int, int]]:
        points = [r for r in completed(runs)[0].metrics.get("history", []) if "curve" in r] if completed(runs) else []
        if not points:
            return None
        units = points[-1]["curve"]["kl_per_unit"][1:]
        return points[-1]["epoch"], sum(value > ACTIVITY_THRESHOLD for layer in units for value in layer)

    lvae, vae = active_above_bottom(paper.cell(LVAE)), active_above_bottom(paper.cell(BEST_VAE))
    if lvae is None or vae is None:
        return Verdict(NOT_TESTABLE, f"no training curves of {LVAE} and {BEST_VAE} at L={paper.layers} "
                                     "(eval.curve_every)")
    text = (f"units active above z1 at the last curve point (epoch {lvae[0]}): {LVAE} {lvae[1]}, {BEST_VAE} {vae[1]} "
            "(counts: no standard error)")
    return Verdict(SUPPORTED if lvae[1] > vae[1] else NOT_SUPPORTED, text)


def pca_verdict(analysis: Optional[dict], paper: Paper) -> Verdict:
    if analysis is None:
        return Verdict(NOT_TESTABLE, "the runs' checkpoints are not there to look inside")
    runs = analysis["runs"]
    lvae, vae = f"{LVAE} L{paper.layers}", f"{BEST_VAE} L{paper.layers}"
    if not all(name in runs and "nearest_centroid_accuracy" in runs[name] for name in (lvae, vae)):
        return Verdict(NOT_TESTABLE, f"needs {LVAE} and {BEST_VAE} at L={paper.layers} on a dataset with classes")
    top_l, top_v = runs[lvae]["nearest_centroid_accuracy"][-1], runs[vae]["nearest_centroid_accuracy"][-1]
    n = analysis["test_images"] - analysis["test_images"] // 2  # the images scored (nearest_centroid_accuracy)
    stderr = math.sqrt(top_l * (1 - top_l) / n + top_v * (1 - top_v) / n)
    d = Difference(100 * (top_l - top_v), 100 * stderr, f"binomial standard error, {n:,} scored images")
    verdict = better_verdict(d, f"digit accuracy of a nearest-class-mean classifier on the top layer's posterior, "
                                f"{LVAE} {top_l:.1%} - {BEST_VAE} {top_v:.1%} (in percentage points)")
    verdict.because = verdict.because.replace(" nats", " points")
    return verdict


def mnist_table(paper: Paper) -> tuple[list[str], Verdict]:
    base = paper.cell(LVAE, 5)
    rows = [(LVAE, base), *((label, paper.cell(label, 5)) for label in FINE_TUNED)]
    lines = ["| model (5 layers) | test log p(x) | paper | improvement over the base run |", "|---|---|---|---|"]
    verdicts = []
    for label, runs in rows:
        done = completed(runs)
        value = (f"{statistics.fmean(r.metrics['test_log_likelihood']['mean'] for r in done):.2f} ± "
                 f"{done[0].metrics['test_log_likelihood']['stderr']:.2f}" if done else (runs[0].status if runs else "not run"))
        paper_value = PAPER_NUMBERS.get(("test_log_likelihood", label, 5), ("",))[0]
        gain = ""
        if label != LVAE:
            verdict = better_verdict(difference(base, runs, "test_log_likelihood"), f"{label} - {LVAE}")
            verdicts.append(verdict)
            gain = verdict.because.split(": ", 1)[1] if verdict.word != NOT_TESTABLE else "not run"
        lines.append(f"| {label} | {value} | {paper_value} | {gain} |")
    return lines, all_of(verdicts)


def other_datasets_table(paper: Paper) -> list[str]:
    lines = []
    for dataset in OTHER_DATASETS:
        lines += [f"{dataset.upper()} (test log p(x); the paper: LVAE+BN+WU 5-layer "
                  f"{PAPER_NUMBERS.get(('test_log_likelihood', f'{LVAE}, {dataset}', 5), ('no number',))[0]})", "",
                  "| variant | " + " | ".join(f"L={n}" for n in range(1, 6)) + " |", "|---" * 6 + "|"]
        for row in PAPER_ORDER:
            cells = []
            for n in range(1, 6):
                done = completed(paper.grid.runs(f"{row}, {dataset}", n))
                cells.append(f"{statistics.fmean(r.metrics['test_log_likelihood']['mean'] for r in done):.2f}"
                             if done else "")
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def analyze_deep_runs(paper: Paper, out_dir: Path) -> Optional[dict]:
    """lvae.cli.analyze on the deepest run of each variant (its first seed) into out_dir; None without checkpoints."""
    run_dirs = []
    for runs in paper.deep_runs().values():
        try:
            check_run_dir(runs[0].run_dir)
            run_dirs.append(runs[0].run_dir)
        except RunDirError:
            continue
    if not run_dirs:
        return None
    subset = completed(paper.cell(LVAE)) or [r for runs in paper.deep_runs().values() for r in runs]
    test_images = subset[0].metrics["test_log_likelihood"]["images"]
    return analyze_runs(run_dirs, out_dir, AnalysisSettings(test_subset=test_images), device="cpu")


CLAIMS = {  # item -> the paper's claim, in one sentence (docs/method.md, section 5)
    "curves": "Training the 5-layer models, the LVAE+BN+WU reaches better train and test bounds than the VAEs.",
    "fig3": "Batch norm and warm-up are needed for deep VAEs to improve with depth; the LVAE+BN+WU is best and "
            "keeps improving with depth (tested: the deepest LVAE+BN+WU against each VAE variant, and the VAE+BN+WU "
            "and LVAE+BN+WU from the shallowest to the deepest; the plain VAE's trend is in the figure).",
    "active": "Batch norm, warm-up and the LVAE each increase the number of active units.",
    "kl_layer": "The VAE's KL is concentrated in its lowest layers; the LVAE spreads it over more layers.",
    "kl_unit": "Units switch on during training, and more of the LVAE's, in higher layers too, stay active.",
    "pca": "The LVAE's higher layers stay informative: their posterior is structured by the digit.",
    "table": "Fine-tuning the 5-layer LVAE with 10 Monte Carlo samples, then 10 importance samples, improves its "
             "test log-likelihood (-82.1 -> -81.8 -> -81.74).",
}


def write_paper(records: list[RunRecord], out_dir: Path, analyze: bool = True) -> Path:
    """Every analysis of the module's docstring for `records` into out_dir; returns index.md's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = build_grid(records)
    deep = [n for n in grid.layers if any(completed(grid.runs(row, n)) for row in PAPER_ORDER)]
    paper = Paper(records, grid, max(deep) if deep else 5)
    deviations = budget_deviations([r.setting for r in records if r.setting and "model.name" in r.setting])

    histories = paper.histories()
    if histories:
        plot_bounds_vs_epochs(histories, out_dir / "bounds_vs_epochs.png")
        plot_kl_per_unit(histories, out_dir / "kl_per_unit.png")
    kl_bars = {f"{row} L{paper.layers}": (runs[0].metrics["kl_per_layer"],
                                           runs[0].metrics.get("kl_per_layer_stderr", [0.0] * paper.layers))
               for row, runs in paper.deep_runs().items()}
    if kl_bars:
        plot_kl_per_layer_bars(kl_bars, out_dir / "kl_per_layer.png")
    write_report(records, out_dir / "fig3")
    analysis = analyze_deep_runs(paper, out_dir / "analysis") if analyze else None
    table, table_verdict = mnist_table(paper)

    def figure(name: str, caption: str) -> list[str]:
        return [f"![{caption}]({name})", ""] if (out_dir / name).exists() else [f"({caption}: nothing to draw)", ""]

    sections = [
        ("1. Bounds during training", "curves",
         [*figure("bounds_vs_epochs.png", "train and test bounds against epochs"), *curve_differences(paper)],
         curves_verdict(paper)),
        ("2. Figure 3: bounds against depth", "fig3", [*figure("fig3/fig3.png", "Figure 3"),
                                                        "Tables: [fig3/results.md](fig3/results.md).", ""],
         fig3_verdict(paper)),
        (f"3. Active units per layer (L={paper.layers})", "active", [*active_units_table(paper), ""],
         active_units_verdict(paper)),
        ("4. KL per layer at the end of training", "kl_layer", figure("kl_per_layer.png", "KL per layer"),
         kl_per_layer_verdict(paper)),
        ("5. KL per unit during training", "kl_unit", figure("kl_per_unit.png", "log KL per unit"),
         kl_per_unit_verdict(paper)),
        ("6. PCA of each layer's posterior", "pca", [*figure("analysis/pca.png", "PCA per layer"),
                                                     *(["More: [analysis/](analysis/) (active units, samples, "
                                                        "reconstructions, analysis.json)", ""] if analysis else [])],
         pca_verdict(analysis, paper)),
        ("7. The MNIST table, and OMNIGLOT and NORB", "table", [*table, "", *other_datasets_table(paper)],
         table_verdict),
    ]
    lines = ["# The paper's analyses, reproduced", "",
             "Sønderby et al., *Ladder Variational Autoencoders*, NIPS 2016 (arXiv:1602.02282). Each item: the "
             "paper's claim, what we measured, and our verdict, computed by lvae/paper.py from the numbers "
             "(supported: the difference exceeds twice its standard error).", "",
             budget_summary(records), "",
             *left_out_notes(records),
             "With one seed, a ± is the paired standard error over the test images: how much the result would "
             "change with another seed (training noise) is not in it.", "",
             *([f"**Not the paper's budget** ({'; '.join(deviations)}): a verdict here says what this budget "
                "shows, not what the paper's would.", ""] if deviations else []),
             "| item | verdict |", "|---|---|",
             *(f"| [{title}](#{anchor(title)}) | {verdict.word} |" for title, _, _, verdict in sections), ""]
    for title, claim, body, verdict in sections:
        lines += [f"## {title}", "", f"*The paper:* {CLAIMS[claim]}", "", *body, verdict.markdown(), ""]
    index = out_dir / "index.md"
    index.write_text("\n".join(lines))
    return index


def anchor(title: str) -> str:
    """The markdown anchor of a `## title` heading (GitHub's rule: lower case, spaces to dashes, no punctuation)."""
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")
