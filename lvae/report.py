"""Tables and the figure of runs: `python -m lvae.report DIR [DIR ...] [--out DIR]`.

Every folder below the given ones that holds a metrics.json or a config.yaml is a
run; a run without a finished metrics.json is listed as such, never dropped, and so
is a run that a sweep's multirun.yaml asks for but that has no folder ("missing").
Prints a table of the runs and writes, into --out or --publish (default: the first DIR):

    results.md    budget, hardware, dates, commands; rows = variants, columns = layers:
                  train bound, test bound (1-sample ELBO), test log-likelihood (IW, K
                  samples) and active units, the paper's numbers beside; then every run
    results.csv   the same cells, one line per variant, depth and quantity
    fig3.png      the paper's Figure 3: the three bounds against the number of layers

A cell's runs differ only in their seed: runs that differ in anything else are rows of
their own, so nothing is averaged over different settings.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import shutil
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hydra.errors import HydraException
from matplotlib.figure import Figure
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import CONFIG_DIR, Config, run_defining_values
from .provenance import NUMERICS_MODULES, code_fingerprint, fingerprint_of
from .summary import format_bound, variant_label, variant_name
from .sweep import Job, jobs_of_sweep_dir

log = logging.getLogger(__name__)


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


def code_mark(metrics: dict) -> str:
    """"" for a run scored by the estimators installed now; " †" for other or unknown code."""
    return "" if fingerprint_of(metrics) == code_fingerprint() else " †"


OTHER_CODE_NOTE = ("† scored by other code: the modules that define the numbers (lvae/"
                   + ", lvae/".join(NUMERICS_MODULES) + ") differed from the installed ones, or the run "
                   "does not say which code it ran. Its numbers are not those of this code: rerun it in a "
                   "fresh directory to replace them.")


def markdown_table(runs: list[tuple[Path, dict | None]]) -> str:
    header = ("| run | variant | layers | epochs | test log p(x) | K | gap left at K | test images | test ELBO "
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
        gap = ll.get("remaining_gap")
        lines.append(
            f"| {run_dir.name}{code_mark(m)} | {variant_name(m)} | {m['layers']} | {m['epochs']} | {format_bound(ll)} "
            f"| {ll['iw_samples']} | {'' if gap is None else f'{gap:.3f}'} | {ll['images']} "
            f"| {format_bound(m['test_elbo'])} | {format_bound(m['train_bound'])} | {kl} | {m['wall_time_s']['total']:.0f} |"
        )
    if any(m and m.get("status") == "completed" and code_mark(m) for _, m in runs):
        lines += ["", OTHER_CODE_NOTE]
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


# --- The report of a sweep: results.md, results.csv and fig3.png -------------------------------

QUANTITIES = {  # metrics.json key -> what it is (the three panels of the paper's Figure 3)
    "train_bound": "Train bound",
    "test_elbo": "Test bound: 1-sample ELBO",
    "test_log_likelihood": "Test log-likelihood",
}
PAPER_ORDER = ("VAE", "VAE+BN", "VAE+BN+WU", "LVAE+BN+WU")  # Figure 3's variants, first in every table
# (quantity, row, layers) -> (nats, where the number comes from): the paper's tables (Sønderby et al.
# 2016, arXiv:1602.02282). Figure 3's curves are a plot, not numbers, so every other cell stays blank.
# Rows of other datasets than MNIST carry the dataset's name (`row_label`); NORB's number is left out.
PAPER_NUMBERS = {
    ("test_log_likelihood", "LVAE+BN+WU", 5): (-82.1, "the paper's MNIST table, LVAE 5-layer (about -82.1)"),
    ("test_log_likelihood", "LVAE+BN+WU + fine-tuning (MC=10)", 5):
        (-81.8, "the paper's MNIST table, LVAE 5-layer + fine-tuning (about -81.8)"),
    ("test_log_likelihood", "LVAE+BN+WU + fine-tuning (MC=10, IW=10)", 5):
        (-81.74, "the paper's MNIST table, LVAE 5-layer + fine-tuning + IW=10"),
    ("test_log_likelihood", "VAE", 2):
        (-85.33, "the paper's MNIST table, Burda et al.'s 2-layer VAE (k=1): their architecture, not this one"),
    ("test_log_likelihood", "LVAE+BN+WU, omniglot", 5):
        (-102.1, "the paper's OMNIGLOT result, LVAE 5-layer (about -102.1)"),
}
# The keys a budget (configs/budget/) sets; no budget changes anything else about a run.
BUDGET_KEYS = ("train.epochs", "warmup_epochs", "data.train_subset",
               "eval.iw_samples", "eval.test_subset", "eval.train_subset")
# Keys that do not separate a table's rows: the columns, the seeds of a cell, labels.
NOT_A_ROW_KEY = ("layers", "seed", "init_from", "budget_name")


@dataclass
class RunRecord:
    """A run of a report: found on disk, expected by a sweep's multirun.yaml, or both."""

    run_dir: Path
    status: str  # completed, running, interrupted, failed, unfinished (no metrics.json yet) or missing (no folder)
    metrics: dict | None
    setting: dict | None  # what the run computes, flat key -> value (`run_setting`); None when unknown

    @property
    def completed(self) -> bool:
        return self.status == "completed"


def run_setting(config: dict | DictConfig | None, metrics: dict | None = None) -> dict | None:
    """What a run computes, as flat key -> value: from its config, else from its metrics.json."""
    if config is not None:
        # A key added to the schema after the run was configured had its default value in that run.
        tree = OmegaConf.merge(OmegaConf.to_container(OmegaConf.structured(Config)), config)
        setting = {key: value for key, value in run_defining_values(tree).items() if value != MISSING}
        for key in (*BUDGET_KEYS, "budget_name"):
            if OmegaConf.select(tree, key, default=MISSING) is not MISSING:
                setting[key] = OmegaConf.select(tree, key)
        return setting
    if metrics and "model" in metrics:
        return {"model.name": metrics["model"], "layers": metrics["layers"], "batch_norm": metrics["batch_norm"],
                "warmup_epochs": metrics["warmup_epochs"], "seed": metrics.get("seed"),
                "train.epochs": metrics["epochs"]}
    return None


def _read_config(run_dir: Path) -> dict | None:
    path = run_dir / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(path)) if path.exists() else None


def expected_jobs(roots: list[Path]) -> dict[Path, Job]:
    """Resolved run folder -> job, for every job that a multirun.yaml below roots asks for."""
    expected = {}
    for sweep_file in sorted(path for root in roots for path in root.rglob("multirun.yaml")):
        try:
            expected.update({job.run_dir.resolve(): job for job in jobs_of_sweep_dir(sweep_file.parent)})
        except (HydraException, OmegaConfBaseException) as error:  # e.g. a preset that no longer exists
            log.warning("cannot tell which runs %s asks for (%s); listing the runs found only",
                        sweep_file, str(error).splitlines()[0])
    return expected


def collect_runs(roots: list[Path]) -> list[RunRecord]:
    """Every run below roots, plus every run that a sweep folder's multirun.yaml asks for but that has no folder."""
    expected = expected_jobs(roots)
    records = []
    for run_dir, metrics in find_runs(roots):
        job = expected.pop(run_dir.resolve(), None)
        config = _read_config(run_dir) or (job.config if job else None)
        status = metrics.get("status", "unknown") if metrics else "unfinished"
        records.append(RunRecord(run_dir, status, metrics, run_setting(config, metrics)))
    for job in expected.values():  # Hydra made the folder of a job that started, even one that failed at once
        status = "unfinished" if job.run_dir.is_dir() else "missing"
        records.append(RunRecord(job.run_dir, status, None, run_setting(job.config)))
    return records


def row_label(setting: dict) -> str:
    """"LVAE+BN+WU"; ", omniglot" on other data than MNIST; "... + fine-tuning" for a run started from
    another; "(MC=10, IW=10)" for its training samples."""
    label = variant_label(setting["model.name"], setting["batch_norm"], setting["warmup_epochs"],
                          show_warmup_epochs=False)
    if setting.get("data.name", "mnist") != "mnist":
        label = f"{label}, {setting['data.name']}"
    if setting.get("init_from"):
        base = _read_config(Path(setting["init_from"]))
        label = f"{row_label(run_setting(base)) if base else label} + fine-tuning"
    samples = [f"{name}={setting[key]}" for name, key in (("MC", "train.mc_samples"), ("IW", "train.iw_samples"))
               if setting.get(key, 1) > 1]
    return f"{label} ({', '.join(samples)})" if samples else label


def _row_key(setting: dict) -> str:
    kept = {key: value for key, value in setting.items() if key not in NOT_A_ROW_KEY}
    return json.dumps({**kept, "fine-tuned": bool(setting.get("init_from"))}, sort_keys=True, default=str)


def _unique_labels(settings_by_key: dict[str, dict]) -> dict[str, str]:
    """Row key -> label; rows that would share a label get the keys on which they differ appended."""
    keys_by_label: dict[str, list[str]] = defaultdict(list)
    for key, setting in settings_by_key.items():
        keys_by_label[row_label(setting)].append(key)
    labels = {}
    for label, keys in keys_by_label.items():
        settings = [settings_by_key[key] for key in keys]
        differing = sorted({name for s in settings for name in s if name not in NOT_A_ROW_KEY
                            and any(other.get(name) != s.get(name) for other in settings)})
        for key in keys:
            extra = ", ".join(f"{name}={settings_by_key[key].get(name)}" for name in differing)
            labels[key] = f"{label} [{extra}]" if extra else label
    return labels


@dataclass
class Grid:
    """Rows (variants) x columns (layers); each cell holds its runs, one per seed."""

    rows: list[str]
    layers: list[int]
    cells: dict[tuple[str, int], list[RunRecord]]
    unplaced: list[RunRecord]  # runs whose config is unknown

    def runs(self, row: str, layers: int) -> list[RunRecord]:
        return self.cells.get((row, layers), [])

    def values(self, row: str, layers: int, value_of: Callable[[dict], float | None]) -> list[float]:
        """value_of(metrics) of the cell's completed runs."""
        values = [value_of(r.metrics) for r in self.runs(row, layers) if r.completed]
        return [v for v in values if v is not None]


def build_grid(records: list[RunRecord]) -> Grid:
    """Group the runs into rows (everything but layers and seed alike) and columns (layers)."""
    runs_by_key: dict[str, list[RunRecord]] = defaultdict(list)
    unplaced = []
    for record in records:
        if record.setting is None or "model.name" not in record.setting:
            unplaced.append(record)
        else:
            runs_by_key[_row_key(record.setting)].append(record)
    labels = _unique_labels({key: runs[0].setting for key, runs in runs_by_key.items()})
    cells: dict[tuple[str, int], list[RunRecord]] = defaultdict(list)
    for key, runs in runs_by_key.items():
        for record in runs:
            cells[labels[key], record.setting["layers"]].append(record)
    order = {label: i for i, label in enumerate(PAPER_ORDER)}
    rows = sorted(set(labels.values()), key=lambda label: (order.get(label, len(order)), label))
    return Grid(rows, sorted({layers for _, layers in cells}), dict(cells), unplaced)


def mean_of(quantity: str) -> Callable[[dict], float]:
    """The mean over images of a bound of metrics.json ("train_bound", "test_elbo", "test_log_likelihood")."""
    return lambda metrics: metrics[quantity]["mean"]


def active_units_of(criterion: str) -> Callable[[dict], float | None]:
    """Active units summed over the layers ("kl": the paper's criterion, "cov": Burda et al.'s)."""
    return lambda metrics: sum(metrics["active_units"][criterion]) if "active_units" in metrics else None


def _mean_and_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _spread(values: list[float], digits: int) -> str:
    """One value with `digits` decimals; a mean ± std with at least one (a mean of counts has decimals)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    mean, std = _mean_and_std(values)
    digits = max(digits, 1)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_cell(runs: list[RunRecord], values: list[list[float]], digits: int = 2) -> str:
    """"-95.12", "-95.12 ± 0.40 (n=3)" over seeds, "... ; 1 failed" when some runs have no result, several
    values joined by " / "; the statuses alone when no run completed."""
    shortfall = Counter(r.status for r in runs if not r.completed)
    not_done = ", ".join(f"{count} {status}" for status, count in sorted(shortfall.items()))
    if not values or not values[0]:
        return not_done.removeprefix("1 ") if len(runs) == 1 else not_done
    text = " / ".join(_spread(v, digits) for v in values)
    if len(values[0]) > 1:
        text += f" (n={len(values[0])})"
    text += "".join(sorted({code_mark(r.metrics) for r in runs if r.completed}))
    return f"{text}; {not_done}" if not_done else text


def _paper_cell(quantity: str, row: str, layers: list[int]) -> str:
    return ", ".join(f"{PAPER_NUMBERS[quantity, row, n][0]:g} (L={n})" for n in layers
                     if (quantity, row, n) in PAPER_NUMBERS)


def paper_budget() -> dict:
    """The paper's values of BUDGET_KEYS, read from configs/budget/paper.yaml."""
    budget = OmegaConf.load(Path(CONFIG_DIR) / "budget" / "paper.yaml")
    return {key: OmegaConf.select(budget, key) for key in BUDGET_KEYS}


def budget_deviations(settings: list[dict]) -> list[str]:
    """"key=value (paper: value)" for every budget key on which a run differs from the paper's budget."""
    paper = paper_budget()
    found = set()
    for setting in settings:
        for key, paper_value in paper.items():
            value = setting.get(key, "unknown")
            if key == "warmup_epochs" and value == 0:
                continue  # a variant without warm-up
            if key in ("train.epochs", "warmup_epochs") and setting.get("init_from"):
                continue  # fine-tuning has a length of its own
            if value != paper_value:
                found.add(f"{key}={'all' if value is None else value} "
                          f"(paper: {'all' if paper_value is None else paper_value})")
    return sorted(found)


def _values(records: list[RunRecord], get: Callable[[RunRecord], Any]) -> str:
    """The distinct values of get(record), or "unknown"."""
    return ", ".join(sorted({str(value) for value in map(get, records) if value})) or "unknown"


def _command(record: RunRecord) -> str | None:
    command = record.metrics.get("command")
    return f"`{command}`" if command else None


def report_header(records: list[RunRecord], title: str) -> list[str]:
    """Title, budget (never a short one presented as the paper's), hardware, dates, commands, run counts."""
    placed = [r for r in records if r.setting and "model.name" in r.setting]
    finished = [r for r in records if r.completed]
    deviations = budget_deviations([r.setting for r in placed])
    names = {r.setting["budget_name"] for r in placed if r.setting.get("budget_name")}
    if deviations:
        name = f"Budget `{', '.join(sorted(names))}`: a" if names else "A"
        budget = (f"**{name} short budget, not the paper's.** It differs from the paper's "
                  f"(configs/budget/paper.yaml) in: {'; '.join(deviations)}.")
    else:
        budget = ("Budget: the paper's (configs/budget/paper.yaml): 2000 epochs, warm-up over 200, all 60,000 training images, "
                  "K=5000 on all 10,000 test images.")
    statuses = Counter(r.status for r in records)
    counts = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    return [
        f"# {title}", "",
        budget, "",
        f"- Hardware: {_values(finished, lambda r: r.metrics.get('device'))}",
        f"- Runs finished: {_values(finished, lambda r: r.metrics.get('date', '')[:10])}; "
        f"report written {datetime.date.today().isoformat()}",
        f"- Commands: {_values(finished, _command)}",
        f"- Runs: {len(records)} ({counts}); the table marks every run without a result.",
        "",
        "Cells: the number of one run, or the mean ± standard deviation over seeds (n = seeds). A cell "
        "also counts its runs without a result: failed, interrupted, running, unfinished (started, no "
        "metrics.json yet) or missing (expected by the sweep's multirun.yaml, no folder). † marks "
        "numbers from other code (see below the runs).",
        "",
        "Gap left at K (runs table): the K-sample estimate minus the mean of its two K/2-sample halves, "
        "from the same samples. The bound's gap to log p(x) shrinks about as 1/K, so this estimates "
        "how far the K-sample number still is below log p(x).",
    ]


def _table(grid: Grid, header: list[str], cell: Callable[[str, int], str],
           paper: Callable[[str], str] | None) -> list[str]:
    """A markdown table: one line per row of the grid, one column per depth, the paper's numbers last."""
    columns = ["variant", *header] + (["paper"] if paper else [])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in grid.rows:
        cells = [row, *(cell(row, n) for n in grid.layers)] + ([paper(row)] if paper else [])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _k_of(grid: Grid) -> str:
    values = {r.metrics["test_log_likelihood"]["iw_samples"] for runs in grid.cells.values() for r in runs
              if r.completed}
    return ", ".join(f"K={k}" for k in sorted(values)) or "K unknown"


def panel_titles(grid: Grid) -> dict[str, str]:
    """QUANTITIES, with the test log-likelihood's number of importance samples."""
    return {**QUANTITIES, "test_log_likelihood": f"{QUANTITIES['test_log_likelihood']}, {_k_of(grid)}"}


def _bound_table(grid: Grid, header: list[str], quantity: str) -> list[str]:
    return _table(grid, header,
                  lambda row, n: format_cell(grid.runs(row, n), [grid.values(row, n, mean_of(quantity))]),
                  lambda row: _paper_cell(quantity, row, grid.layers))


def results_markdown(records: list[RunRecord], grid: Grid, title: str) -> str:
    """results.md: the header, a table per bound and one of active units, then every run."""
    layer_header = [f"{n} layer{'s' if n > 1 else ''}" for n in grid.layers]
    lines = report_header(records, title)
    for letter, (quantity, name) in zip("abc", panel_titles(grid).items()):
        lines += ["", f"## {letter}) {name} (nats)", ""] + _bound_table(grid, layer_header, quantity)
    lines += ["", "## Active units, summed over the layers: KL > 0.01 nats (paper) / Cov > 0.01 (Burda et al.)", ""]
    lines += _table(grid, layer_header,
                    lambda row, n: format_cell(grid.runs(row, n), [grid.values(row, n, active_units_of(criterion))
                                                                   for criterion in ("kl", "cov")], digits=0),
                    None)
    shown = [(quantity, row, n) for quantity, row, n in PAPER_NUMBERS if row in grid.rows and n in grid.layers]
    lines += ["", "The paper column: " + ("; ".join(f"{row}, L={n}: {PAPER_NUMBERS[q, row, n][1]}"
                                                    for q, row, n in shown) or "no published number for these rows")
              + ". The paper gives no number for the other cells (Figure 3's curves are a plot), so they are blank."]
    lines += ["", "## Runs", "", markdown_table([(r.run_dir, r.metrics) for r in records if r.status != "missing"])]
    stopped = [r for r in records if r.status in ("failed", "interrupted")]
    if stopped:
        lines += ["", "Stopped runs:"] + [f"- `{r.run_dir.name}`: {r.status}: {r.metrics.get('reason', '')}"
                                          for r in stopped]
    missing = [r for r in records if r.status == "missing"]
    if missing:
        lines += ["", "Missing runs (expected by multirun.yaml, no folder; run the sweep's command again):"]
        lines += [f"- `{r.run_dir}`" for r in missing]
    if grid.unplaced:
        lines += ["", "Runs without a known config (not in the tables): "
                  + ", ".join(f"`{r.run_dir.name}` ({r.status})" for r in grid.unplaced)]
    return "\n".join(lines) + "\n"


def write_csv(grid: Grid, path: Path) -> None:
    """One line per variant, depth and quantity: mean, std over seeds, counts, the paper's number."""
    quantities = {**{q: mean_of(q) for q in QUANTITIES},
                  "active_units_kl": active_units_of("kl"), "active_units_cov": active_units_of("cov")}
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["variant", "layers", "quantity", "mean", "std", "completed_runs", "runs",
                         "runs_without_result", "paper"])
        for row in grid.rows:
            for n in grid.layers:
                runs = grid.runs(row, n)
                if not runs:
                    continue
                for quantity, value_of in quantities.items():
                    values = grid.values(row, n, value_of)
                    mean, std = _mean_and_std(values) if values else ("", "")
                    without = "; ".join(f"{r.run_dir.name}: {r.status}" for r in runs if not r.completed)
                    paper = PAPER_NUMBERS.get((quantity, row, n), ("",))[0]
                    writer.writerow([row, n, quantity, mean, std, len(values), len(runs), without, paper])


def plot_grid(grid: Grid, path: Path, title: str) -> None:
    """Figure 3's three panels: nats against layers, one line per variant, error bars = std over seeds."""
    figure = Figure(figsize=(16, 5.6), layout="constrained")
    axes = figure.subplots(1, 3)
    for ax, letter, (quantity, name) in zip(axes, "abc", panel_titles(grid).items()):
        for colour, row in enumerate(grid.rows):
            points = [(n, _mean_and_std(v)) for n in grid.layers if (v := grid.values(row, n, mean_of(quantity)))]
            if points:
                ax.errorbar([n for n, _ in points], [m for _, (m, _) in points], yerr=[s for _, (_, s) in points],
                            color=f"C{colour}", marker="o", capsize=4, linewidth=1.8, label=row)
            for n in grid.layers:
                if (quantity, row, n) in PAPER_NUMBERS:
                    ax.plot(n, PAPER_NUMBERS[quantity, row, n][0], linestyle="none", marker="*", markersize=15,
                            color=f"C{colour}", markeredgecolor="black",
                            label="the paper's number, in its variant's colour")
        ax.set_title(f"{letter}) {name}", fontsize=12)
        ax.set_xlabel("stochastic layers")
        ax.set_ylabel("nats (higher is better)")
        ax.set_xticks(grid.layers)
        ax.grid(alpha=0.3)
    handles = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=min(len(handles), 5),
                  fontsize=10)
    figure.suptitle(title, fontsize=13)
    figure.savefig(path, dpi=110)


def report_title(records: list[RunRecord], out_dir: Path) -> str:
    settings = [r.setting for r in records if r.setting and "model.name" in r.setting]
    scale = "a short budget, not the paper's" if budget_deviations(settings) else "the paper's budget"
    return f"MNIST: {out_dir.resolve().name} ({scale})"


def write_report(records: list[RunRecord], out_dir: Path) -> list[Path]:
    """results.md, results.csv and fig3.png of these runs into out_dir; returns their paths."""
    grid = build_grid(records)
    title = report_title(records, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results.md", out_dir / "results.csv", out_dir / "fig3.png"]
    paths[0].write_text(results_markdown(records, grid, title))
    write_csv(grid, paths[1])
    plot_grid(grid, paths[2], title)
    return paths


# What `--publish` copies of each run: its numbers, config and per-image estimates, never checkpoints.
PUBLISHED_FILES = ("metrics.json", "config.yaml", "per_image.pt")


def publish_runs(records: list[RunRecord], out_dir: Path) -> None:
    """Copy each run's PUBLISHED_FILES into out_dir/<run folder name>/, a record that can be reported again."""
    names = Counter(r.run_dir.name for r in records if r.run_dir.is_dir())
    clashes = sorted(name for name, count in names.items() if count > 1)
    if clashes:
        raise ValueError(f"several runs are named {', '.join(clashes)}: publish their folders separately")
    for record in records:
        if record.run_dir.is_dir() and record.run_dir.resolve() != (out_dir / record.run_dir.name).resolve():
            target = out_dir / record.run_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for name in PUBLISHED_FILES:
                if (record.run_dir / name).exists():
                    shutil.copy2(record.run_dir / name, target / name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, help="where results.md, results.csv and fig3.png go "
                                                 "(default: the first directory)")
    parser.add_argument("--publish", type=Path, metavar="DIR",
                        help="write the report into DIR and copy each run's " + ", ".join(PUBLISHED_FILES)
                             + " there (e.g. results/<name>: the committed record of a result; runs "
                               "themselves go to outputs/, which git ignores)")
    args = parser.parse_args(argv)
    missing = [d for d in args.dirs if not d.is_dir()]
    if missing:
        parser.error(f"not a directory: {', '.join(map(str, missing))}")
    records = collect_runs(args.dirs)
    if not records:
        parser.error(f"no run directories (with metrics.json or config.yaml) below {', '.join(map(str, args.dirs))}")
    runs = [(r.run_dir, r.metrics) for r in records if r.status != "missing"]
    print(markdown_table(runs))
    print()
    print(budget_summary([m for _, m in runs if m and m.get("status") == "completed"]))
    if args.publish:
        publish_runs(records, args.publish)
    for path in write_report(records, args.publish or args.out or args.dirs[0]):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
