"""LVAE - VAE as the training budget grows: `python -m lvae.compare --by-budget DIR [DIR ...]`.

The paper reports its numbers after 2000 epochs; shorter runs show whether a difference grows toward the
paper's, shrinks, or turns on the way. The completed runs below the folders (fine-tuned runs left out) are
grouped by what they trained: every setting but the model's name, the seed, the budget preset's name and how
the test was scored (eval.*), and by the numerics version that scored them. Each group that holds a VAE and an
LVAE of the same seed is one line: LVAE - VAE of the test log-likelihood and of the 1-sample test ELBO, paired
by seed (lvae/report/compare.py) on the test images that every pair of the group scored, judged under the one
rule of every verdict (lvae/report/rule.py): over the seeds with 2 or more, image by image with one. Of the
runs of one seed and model that differ only in how many test images they scored (a run published in two
folders, or evaluated again on all of them), the one that scored the most counts.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from lvae.report.compare import RunEstimates, pair_by_seed, paired, read_estimates
from lvae.report.grid import row_label
from lvae.report.rule import Difference, better_verdict, over_images, over_seeds
from lvae.report.runs import RunRecord
from lvae.run.provenance import NUMERICS_VERSION, numerics_version_of
from lvae.run.summary import describe_test_images

A_MODEL, B_MODEL = "vae", "lvae"
QUANTITIES = (("test_log_likelihood", "test log p(x)"), ("test_elbo", "test ELBO"))
# Settings that do not change what a run trained: the side of the comparison, the seed, names, how it was scored.
NOT_TRAINING = ("model.name", "seed", "budget_name", "init_from", "init_from.setting",
                "eval.iw_samples", "eval.test_subset", "eval.train_subset")


@dataclass
class BudgetLine:
    """b - a for one training setting: its pairs of runs and, per quantity, the difference under the rule."""

    setting: dict  # what both sides trained (the a side's setting, less NOT_TRAINING)
    labels: tuple[str, str]  # a's and b's row labels: "VAE+BN+WU", "LVAE+BN+WU"
    pairs: list[tuple[RunEstimates, RunEstimates]]
    images: int  # the test images every pair scored
    test_images: str  # which they are: "all 10,000", "300 of 10,000 (random sample)", "the first 1,000 (file order)"
    k: int  # samples of the test log-likelihood
    numerics: int | None
    differences: dict[str, Difference]  # quantity -> b - a

    @property
    def seeds(self) -> list[int]:
        return [a.seed for a, _ in self.pairs]

    def per_seed(self, quantity: str) -> list[float]:
        return [paired(a, b, quantity, self.images).difference for a, b in self.pairs]


def _training_key(record: RunRecord) -> str:
    """What the run trained, and the K and numerics version its test log-likelihood was scored with."""
    trained = {key: value for key, value in record.setting.items() if key not in NOT_TRAINING}
    return json.dumps({**trained, "K": record.metrics["test_log_likelihood"].get("iw_samples"),
                       "numerics": numerics_version_of(record.metrics)}, sort_keys=True, default=str)


def _images(record: RunRecord) -> int:
    return record.metrics["test_log_likelihood"]["images"]


def budget_lines(records: list[RunRecord], layers: int | None = None) -> list[BudgetLine]:
    """One line per training setting (of `layers` stochastic layers; default: any) that has a VAE and an LVAE
    run of the same seed, fewest layers and epochs first. ValueError when a group's runs cannot be paired (runs
    that scored other data, see lvae.report.compare.what_was_scored)."""
    # training -> side -> seed -> the run of that seed that scored the most test images
    groups: dict[str, dict[str, dict[int, RunRecord]]] = defaultdict(lambda: {A_MODEL: {}, B_MODEL: {}})
    for record in records:
        setting = record.setting or {}
        if (record.completed and not setting.get("init_from") and setting.get("model.name") in (A_MODEL, B_MODEL)
                and layers in (None, setting.get("layers"))):
            side = groups[_training_key(record)][setting["model.name"]]
            seed = record.metrics["seed"]
            if seed not in side or _images(record) > _images(side[seed]):
                side[seed] = record
    lines = []
    for sides in groups.values():
        if sides[A_MODEL].keys() & sides[B_MODEL].keys():
            lines.append(_line(*(list(sides[model].values()) for model in (A_MODEL, B_MODEL))))
    return sorted(lines, key=lambda line: tuple(line.setting.get(key) or 0 for key in
                                                ("layers", "train.epochs", "warmup_epochs", "data.train_subset")))


def _line(runs_a: list[RunRecord], runs_b: list[RunRecord]) -> BudgetLine:
    pairs = sorted(pair_by_seed([read_estimates(r.run_dir) for r in runs_a], [read_estimates(r.run_dir) for r in runs_b]),
                   key=lambda pair: pair[0].seed)
    images = min(min(len(a.per_image["test_log_likelihood"]), len(b.per_image["test_log_likelihood"]))
                 for a, b in pairs)
    first = runs_a[0].metrics["test_log_likelihood"]
    which = {"images": images, "test_set_images": None if any(run.indices_assumed for pair in pairs for run in pair)
             else first.get("test_set_images")}
    differences = {}
    for quantity, _ in QUANTITIES:
        results = [paired(a, b, quantity, images) for a, b in pairs]
        differences[quantity] = (over_seeds([r.difference for r in results]) if len(results) > 1 else
                                 over_images(results[0].difference, results[0].difference_stderr, images))
    setting = {key: value for key, value in runs_a[0].setting.items() if key not in NOT_TRAINING}
    return BudgetLine(setting, (row_label(runs_a[0].setting), row_label(runs_b[0].setting)), pairs, images,
                      describe_test_images(which, noun=""), first["iw_samples"], numerics_version_of(runs_a[0].metrics),
                      differences)


def training(line: BudgetLine, differing: list[str]) -> str:
    """"200 epochs, warm-up 20, L=5", with every other setting in which the lines differ."""
    s = line.setting
    text = f"{s['train.epochs']} epochs, warm-up {s['warmup_epochs']}, L={s['layers']}"
    if s.get("data.train_subset"):
        text += f", {s['data.train_subset']:,} training images"
    return ", ".join([text, *(f"{key}={s.get(key)}" for key in differing)])


def budget_table(lines: list[BudgetLine]) -> str:
    """Markdown: one row per line, b - a ± its standard error and the rule's word for each quantity."""
    if not lines:
        return ""
    shown = ("train.epochs", "warmup_epochs", "layers", "data.train_subset")
    differing = sorted({key for line in lines for key in line.setting if key not in shown
                        and any(other.setting.get(key) != line.setting.get(key) for other in lines)})
    titles = sorted({f"{b} - {a}" for a, b in (line.labels for line in lines)})
    header = [f"{' / '.join(titles)}, by training budget (paired by seed on the same test images; ± is the "
              "standard error the verdict uses: over the seeds with 2 or more, over the images with one; the rule: "
              "lvae/report/rule.py)", "",
              "| training | seeds | test images | K | numerics | " + " | ".join(
                  f"{name}, b - a | per seed | verdict" for _, name in QUANTITIES) + " |",
              "|---|---|---|---|---|" + "---|---|---|" * len(QUANTITIES)]
    rows = []
    for line in lines:
        cells = [training(line, differing), ", ".join(map(str, line.seeds)), line.test_images, str(line.k),
                 str(line.numerics)]
        for quantity, name in QUANTITIES:
            d = line.differences[quantity]
            cells += [f"{d.value:+.2f} ± {d.stderr:.2f}", ", ".join(f"{v:+.2f}" for v in line.per_seed(quantity)),
                      better_verdict(d, name).word]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([*header, *rows, ""])


def plot_by_budget(lines: list[BudgetLine], path: Path) -> None:
    """LVAE - VAE against the training epochs (log scale), one panel per quantity and one colour per depth: each
    line's difference with the interval of its verdict (± t standard errors, lvae/report/rule.py), each seed's
    paired difference as a cross; hollow where another numerics version than the installed one scored it."""
    figure = Figure(figsize=(11, 4.6), layout="constrained")
    axes = figure.subplots(1, len(QUANTITIES), sharex=True)
    depths = sorted({line.setting["layers"] for line in lines})
    ks = sorted({line.k for line in lines})
    for ax, (quantity, name) in zip(axes, QUANTITIES):
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        for colour, depth in enumerate(depths):
            for line in (line for line in lines if line.setting["layers"] == depth):
                d = line.differences[quantity]
                epochs = line.setting["train.epochs"] * 1.04 ** (colour - (len(depths) - 1) / 2)  # depths side by side
                face = f"C{colour}" if line.numerics == NUMERICS_VERSION else "white"
                ax.errorbar([epochs], [d.value], yerr=[d.threshold], fmt="o", color=f"C{colour}", capsize=3,
                            markerfacecolor=face)
                if len(line.seeds) > 1:
                    ax.plot([epochs] * len(line.seeds), line.per_seed(quantity), "x", color=f"C{colour}",
                            markersize=5, alpha=0.7)
                images = f"first {line.images:,}" if line.test_images.startswith("the first") else f"{line.images:,}"
                label = f"{len(line.seeds)}, {images}" + ("" if len(ks) == 1 else f", K={line.k}")
                ax.annotate(label, (epochs, d.value), textcoords="offset points", xytext=(6, -3), fontsize=7,
                            color=f"C{colour}")
            ax.plot([], [], "o", color=f"C{colour}", label=f"L={depth}")
        ax.set_xscale("log")
        ax.set_xlabel("training epochs")
        ax.set_ylabel(f"{lines[0].labels[1]} - {lines[0].labels[0]} (nats)")
        ax.set_title(name)
        ax.legend(fontsize=8)
    hollow = (f"; hollow: scored by another numerics version than {NUMERICS_VERSION}"
              if any(line.numerics != NUMERICS_VERSION for line in lines) else "")
    scored = f", test log p(x) with K={ks[0]}" if len(ks) == 1 else ""
    figure.suptitle(f"{lines[0].labels[1]} - {lines[0].labels[0]} by training budget{scored}\n"
                    "dot: the difference (the mean over the seeds; with one seed, paired over the test images); "
                    "bar: ± t standard errors, the verdict's interval;\ncross: each seed; label: seeds, test images "
                    "(first: in file order, else a fixed random sample or all)"
                    + ("" if len(ks) == 1 else ", K")
                    + hollow, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)  # as --publish and --out make theirs
    figure.savefig(path, dpi=120)
