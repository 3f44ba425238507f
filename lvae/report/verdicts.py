"""The paper's analyses in one folder: `python -m lvae.paper --budget quick` (`make paper BUDGET=quick`).

1. Runs what is missing of Figure 3 and of the MNIST table (`python -m lvae.reproduce` for experiment=fig3,
   then table1: finished runs are skipped, interrupted ones resume), unless --no-run.
2. Writes, from the runs' records only (no training), into outputs/paper-<budget>/ (or --out):

       index.md               every analysis below under the paper's claim, with our verdict
       bounds_vs_epochs.png   1. train and test bounds against epochs (the training curves), every seed
       fig3/                  2. Figure 3 (fig3.png) and its tables (results.md, results.csv)
       (index.md)             3. active units per layer, both criteria, as a table
       kl_per_layer.png       4. KL per layer at the end of training, every seed
       kl_per_unit.png        5. log KL per unit at selected epochs (white: inactive), a panel per run
       analysis/              6. PCA of each layer's posterior (pca.png), active units, samples (lvae.cli.analyze)
       (index.md)             7. the MNIST table with fine-tuning; OMNIGLOT and NORB (variants x layers)

`python -m lvae.paper --from DIR [DIR ...] --out DIR` writes the folder from runs found below the DIRs
(e.g. the 200-epoch VAE-vs-LVAE pair of experiment=vae_vs_lvae); what they lack is "not run", with the
command that makes it.

A verdict is computed, never typed, under one rule (lvae/report/rule.py, printed in index.md): supported,
not supported, contradicted, not run, not testable at this budget; descriptive numbers give no word.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Optional

from lvae.core.analysis import layer_names
from lvae.report.claims import (BEST_VAE, FINE_TUNED, LVAE, OTHER_DATASETS, Paper, active_units_verdict, completed,
                                curves_verdict, fig3_verdict, kl_per_layer_verdict, kl_per_unit_verdict, pca_verdict,
                                table_value, table_verdict)
from lvae.report.compare import curve_table, pair_by_seed, read_estimates
from lvae.report.figures import plot_bounds_vs_epochs, plot_kl_per_layer_bars, plot_kl_per_unit
from lvae.report.grid import build_grid
from lvae.report.markdown import budget_summary
from lvae.report.output import write_report
from lvae.report.paper_numbers import PAPER_NUMBERS, PAPER_ORDER, budget_deviations
from lvae.report.rule import RULE, format_count
from lvae.report.runs import RunRecord, left_out_notes
from lvae.run.analysis import AnalysisSettings, analyze_runs
from lvae.run.record import ANALYSIS_FILE
from lvae.run.stored import RunDirError, check_run_dir

STEPS = ("fig3", "table1")  # the presets whose runs the analyses read, in the order they run


def curve_differences(paper: Paper) -> list[str]:
    """LVAE+BN+WU - VAE+BN+WU along training, from the curve points of the runs of both (lvae.report.compare)."""
    try:
        pairs = pair_by_seed(*([read_estimates(r.run_dir) for r in completed(paper.cell(row))]
                               for row in (BEST_VAE, LVAE)))
    except (OSError, ValueError):  # a variant missing, no shared seed, or no per-image estimates
        return []
    table = curve_table(pairs)
    return [table] if table else []


def active_units_table(paper: Paper) -> list[str]:
    sizes = next((r.metrics["active_units"]["layer_sizes"] for runs in paper.deep_runs().values() for r in runs
                  if "active_units" in r.metrics), None)
    if sizes is None:
        return ["No completed run records active units."]
    lines = ["| variant | " + " | ".join(f"{z} (of {d})" for z, d in zip(layer_names(len(sizes)), sizes))
             + " | total |", "|---" * (len(sizes) + 2) + "|"]
    per_seed = []
    for row, runs in paper.deep_runs().items():
        counts = [r.metrics["active_units"] for r in runs if "active_units" in r.metrics]
        cells = [" / ".join(format_count(statistics.fmean(c[criterion][i] for c in counts))
                            for criterion in ("kl", "cov")) for i in range(len(sizes))]
        total = " / ".join(format_count(statistics.fmean(sum(c[criterion]) for c in counts))
                           for criterion in ("kl", "cov"))
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {total} |")
        per_seed.append(f"{row} " + ", ".join(f"{sum(r.metrics['active_units']['kl'])} (seed {r.metrics['seed']})"
                                              for r in runs if "active_units" in r.metrics))
    seeds = len(paper.seeds)
    return lines + ["", "Each cell: active by the paper's criterion (the unit's KL term > 0.01 nats) / by Burda et "
                        "al.'s (Cov_x(E_q[z_u|x]) > 0.01), on the runs' test images"
                        + (f"; the mean over {seeds} seeds. The KL criterion's totals per seed: "
                           + "; ".join(per_seed) + "." if seeds > 1 else ", one seed.")]


def mnist_table(paper: Paper) -> list[str]:
    rows = [(LVAE, paper.cell(LVAE, 5)), *((label, paper.cell(label, 5)) for label in FINE_TUNED)]
    seeds = {len(completed(runs)) for _, runs in rows if completed(runs)}
    error = ("± its standard error over the seeds" if seeds and min(seeds) > 1 else
             "± the standard error over the test images (one seed: the training noise is not in it)")
    lines = [f"| model (5 layers) | test log p(x), {'mean over the seeds ' if max(seeds, default=1) > 1 else ''}"
             f"{error} | seeds | paper |", "|---|---|---|---|"]
    for label, runs in rows:
        paper_value = PAPER_NUMBERS.get(("test_log_likelihood", label, 5), ("",))[0]
        lines.append(f"| {label} | {table_value(runs)} | {len(completed(runs))} | {paper_value} |")
    return lines + ["", "The gains of fine-tuning, paired on the same test images, are the first parts of the "
                        "verdict below."]


def other_datasets_table(paper: Paper) -> list[str]:
    lines = []
    for dataset in OTHER_DATASETS:
        lines += [f"{dataset.upper()} (test log p(x), the mean over the seeds; the paper: LVAE+BN+WU 5-layer "
                  f"{PAPER_NUMBERS.get(('test_log_likelihood', f'{LVAE}, {dataset}', 5), ('no number',))[0]})", "",
                  "| variant | " + " | ".join(f"L={n}" for n in range(1, 6)) + " |", "|---" * 6 + "|"]
        for row in PAPER_ORDER:
            cells = []
            for n in range(1, 6):
                done = completed(paper.grid.runs(f"{row}, {dataset}", n))
                cells.append(f"{statistics.fmean(r.metrics['test_log_likelihood']['mean'] for r in done):.2f}"
                             if done else "not run")
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def analyze_deep_runs(paper: Paper, out_dir: Path, previous: Path) -> tuple[Optional[dict], str]:
    """lvae.cli.analyze on the deepest runs of each variant that have weights (the first seed that has them) into
    out_dir, and a sentence on what was analysed. Runs published without weights keep the analysis that
    `previous` (the analysis/ folder this one replaces) holds from when their checkpoints were there, if it
    names the same runs; else (None, "")."""
    run_dirs = []
    for runs in paper.deep_runs().values():
        for run in runs:
            try:
                check_run_dir(run.run_dir)
            except RunDirError:
                continue
            run_dirs.append(run.run_dir)
            break
    if not run_dirs:
        return kept_analysis(paper, previous, out_dir)
    subset = completed(paper.cell(LVAE)) or [r for runs in paper.deep_runs().values() for r in runs]
    test_images = subset[0].metrics["test_log_likelihood"]["images"]
    analysis = analyze_runs(run_dirs, out_dir, AnalysisSettings(test_subset=test_images), device="cpu")
    return analysis, f"The runs analysed: {analysis_seeds(analysis)} (the runs with weights)."


def analysis_seeds(analysis: dict) -> str:
    return ", ".join(f"{name} seed {run['seed']}" for name, run in analysis["runs"].items())


def kept_analysis(paper: Paper, previous: Path, out_dir: Path) -> tuple[Optional[dict], str]:
    """The analysis in `previous`, copied into out_dir when that is another folder, when its analysis.json names
    exactly the deep runs' variants (see analyze_deep_runs)."""
    try:
        analysis = json.loads((previous / ANALYSIS_FILE).read_text())
    except (OSError, ValueError):
        return None, ""
    if set(analysis["runs"]) != {f"{row} L{paper.layers}" for row in paper.deep_runs()}:
        return None, ""
    if previous.resolve() != out_dir.resolve():
        shutil.copytree(previous, out_dir, dirs_exist_ok=True)
    return analysis, (f"The runs analysed: {analysis_seeds(analysis)}; written when their checkpoints were there "
                      "(the published runs hold no weights), and kept.")


CLAIMS = {  # item -> the paper's claim, in one sentence (docs/method.md, section 5)
    "curves": "Training the 5-layer models, the LVAE+BN+WU reaches better train and test bounds than the VAEs "
              "(judged here on the end-of-training K-sample test log p(x), with the test ELBO and the train bound "
              "as parts of their own; the curves are described).",
    "fig3": "Batch norm and warm-up are needed for deep VAEs to improve with depth; the LVAE+BN+WU is best and "
            "keeps improving with depth (tested: the deepest LVAE+BN+WU against each VAE variant, and the VAE+BN+WU "
            "and LVAE+BN+WU from the shallowest to the deepest; the plain VAE's trend is in the figure).",
    "active": "Batch norm, warm-up and the LVAE each increase the number of active units.",
    "kl_layer": "The VAE's KL is concentrated in its lowest layers; the LVAE spreads it over more layers.",
    "kl_unit": "Units switch on during training, and more of the LVAE's, in higher layers too, stay active.",
    "pca": "The LVAE's higher layers stay informative: their posterior is structured by the digit.",
    "table": "Fine-tuning the 5-layer LVAE with 10 Monte Carlo samples, then 10 importance samples, improves its "
             "test log-likelihood (-82.1 -> -81.8 -> -81.74); on OMNIGLOT and NORB too the LVAE+BN+WU is the "
             "better model (tested: the 5-layer LVAE+BN+WU against the VAE+BN+WU).",
}


def seeds_sentence(seeds: int) -> str:
    """What a ± of the folder is: over the seeds, or (one seed) over the test images."""
    if seeds > 1:
        return (f"{seeds} seeds: a ± of a difference between variants is the standard error over the seeds of the "
                "seeds' paired differences (each seed's difference paired image by image), so the training noise "
                "between seeds is in it; a ± of one run is its standard error over the test images.")
    return ("One seed: a ± is the paired standard error over the test images; how much the result would change with "
            "another seed (training noise) is not in it.")


def draw_figures(paper: Paper, out_dir: Path) -> None:
    """bounds_vs_epochs.png, kl_per_unit.png and kl_per_layer.png of the deep runs, every seed."""
    deep = paper.deep_runs()
    histories = {f"{row} L{paper.layers}": [r.metrics["history"] for r in runs if r.metrics.get("history")]
                 for row, runs in deep.items()}
    histories = {name: seeds for name, seeds in histories.items() if seeds}
    if histories:
        plot_bounds_vs_epochs(histories, out_dir / "bounds_vs_epochs.png")
        plot_kl_per_unit({f"{row} L{paper.layers}, seed {r.metrics['seed']}": r.metrics["history"]
                          for row, runs in deep.items() for r in runs if r.metrics.get("history")},
                         out_dir / "kl_per_unit.png")
    kl_bars = {f"{row} L{paper.layers}": ([r.metrics["kl_per_layer"] for r in runs],
                                           [r.metrics.get("kl_per_layer_stderr", [0.0] * paper.layers) for r in runs])
               for row, runs in deep.items()}
    if kl_bars:
        plot_kl_per_layer_bars(kl_bars, out_dir / "kl_per_layer.png")


def distinct_runs(records: list[RunRecord]) -> list[RunRecord]:
    """records without the copies of a run found twice (the same metrics.json: a fine-tuning's base run published
    beside its fine-tunings and in Figure 3's folder), so that no run counts as two seeds."""
    seen, distinct = set(), []
    for record in records:
        key = json.dumps(record.metrics, sort_keys=True) if record.completed else str(record.run_dir)
        if key not in seen:
            seen.add(key)
            distinct.append(record)
    return distinct


def write_paper(records: list[RunRecord], out_dir: Path, analyze: bool = True,
                previous: Optional[Path] = None) -> Path:
    """Every analysis of the module's docstring for `records` into out_dir; returns index.md's path. previous:
    the folder that out_dir replaces (default out_dir itself), whose analysis/ is kept for runs without weights."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = distinct_runs(records)
    grid = build_grid(records)
    deep = [n for n in grid.layers if any(completed(grid.runs(row, n)) for row in PAPER_ORDER)]
    paper = Paper(records, grid, max(deep) if deep else 5)
    deviations = budget_deviations([r.setting for r in records if r.setting and "model.name" in r.setting])
    draw_figures(paper, out_dir)
    write_report(records, out_dir / "fig3")
    analysis, analysed = (analyze_deep_runs(paper, out_dir / "analysis", (previous or out_dir) / "analysis")
                          if analyze else (None, ""))
    seeds = len(paper.seeds)

    def figure(name: str, caption: str) -> list[str]:
        return [f"![{caption}]({name})", ""] if (out_dir / name).exists() else [f"({caption}: nothing to draw)", ""]

    every_seed = f"every seed of the {seeds}: the mean, each seed faint" if seeds > 1 else "one seed"
    kl_bars = f"the mean over {seeds} seeds, each a dot" if seeds > 1 else "one seed"
    fig3_points = (f"each point the mean over the {seeds} seeds ± their standard deviation" if seeds > 1
                   else "one seed: no error bars")
    sections = [
        ("1. Bounds during training", "curves",
         [*figure("bounds_vs_epochs.png", f"train and test bounds against epochs, {every_seed}"),
          *curve_differences(paper)], curves_verdict(paper)),
        ("2. Figure 3: bounds against depth", "fig3", [*figure("fig3/fig3.png", f"Figure 3, {fig3_points}"),
                                                        "Tables: [fig3/results.md](fig3/results.md).", ""],
         fig3_verdict(paper)),
        (f"3. Active units per layer (L={paper.layers})", "active", [*active_units_table(paper), ""],
         active_units_verdict(paper)),
        ("4. KL per layer at the end of training", "kl_layer",
         figure("kl_per_layer.png", f"KL per layer, {kl_bars}"),
         kl_per_layer_verdict(paper)),
        ("5. KL per unit during training", "kl_unit",
         figure("kl_per_unit.png", f"log KL per unit, a panel per run ({seeds} seed{'s' if seeds > 1 else ''})"),
         kl_per_unit_verdict(paper)),
        ("6. PCA of each layer's posterior", "pca", [*figure("analysis/pca.png", "PCA per layer"),
                                                     *([analysed, ""] if analysed else []),
                                                     *(["More: [analysis/](analysis/) (active units, samples, "
                                                        "reconstructions, analysis.json)", ""] if analysis else [])],
         pca_verdict(analysis, paper)),
        ("7. The MNIST table, and OMNIGLOT and NORB", "table", [*mnist_table(paper), "", *other_datasets_table(paper)],
         table_verdict(paper)),
    ]
    lines = ["# The paper's analyses, reproduced", "",
             "Sønderby et al., *Ladder Variational Autoencoders*, NIPS 2016 (arXiv:1602.02282). Each item: the "
             "paper's claim, what we measured, and our verdict, computed by lvae/report/claims.py from the numbers "
             "under the rule below.", "",
             RULE, "",
             budget_summary(records), "",
             *left_out_notes(records),
             seeds_sentence(seeds), "",
             *([f"**Not the paper's budget** ({'; '.join(deviations)}): a verdict here says what this budget "
                "shows, not what the paper's would.", ""] if deviations else []),
             "| item | verdict |", "|---|---|",
             *(f"| [{title}](#{anchor(title)}) | {verdict.summary()} |" for title, _, _, verdict in sections), ""]
    for title, claim, body, verdict in sections:
        lines += [f"## {title}", "", f"*The paper:* {CLAIMS[claim]}", "", *body, verdict.markdown(), ""]
    index = out_dir / "index.md"
    index.write_text("\n".join(lines))
    return index


def anchor(title: str) -> str:
    """The markdown anchor of a `## title` heading (GitHub's rule: lower case, spaces to dashes, no punctuation)."""
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")
