"""The runs of a report as a grid: rows = variants, columns = layers, a cell = the runs of one setting over seeds.

A cell's runs differ only in their seed: runs that differ in anything else are rows of
their own, so nothing is averaged over different settings.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable

from lvae.report.paper_numbers import PAPER_ORDER
from lvae.report.runs import RunRecord, code_mark
from lvae.run.summary import variant_label

QUANTITIES = {  # metrics.json key -> what it is (the three panels of the paper's Figure 3)
    "train_bound": "Train bound",
    "test_elbo": "Test bound: 1-sample ELBO",
    "test_log_likelihood": "Test log-likelihood",
}


# Keys that do not separate a table's rows: the columns, the seeds of a cell, labels.
NOT_A_ROW_KEY = ("layers", "seed", "init_from", "init_from.setting", "budget_name")


def row_label(setting: dict) -> str:
    """"LVAE+BN+WU"; ", omniglot" on other data than MNIST; "... + fine-tuning" for a run started from
    another; "(MC=10, IW=10)" for its training samples."""
    label = variant_label(setting["model.name"], setting["batch_norm"], setting["warmup_epochs"])
    if setting.get("data.name", "mnist") != "mnist":
        label = f"{label}, {setting['data.name']}"
    if setting.get("init_from"):  # labelled as its base run (known when the report holds or finds it)
        base = setting.get("init_from.setting")
        label = f"{row_label(base) if base else label} + fine-tuning"
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


def mean_and_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _spread(values: list[float], digits: int) -> str:
    """One value with `digits` decimals; a mean ± std with at least one (a mean of counts has decimals)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    mean, std = mean_and_std(values)
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


def _k_of(grid: Grid) -> str:
    values = {r.metrics["test_log_likelihood"]["iw_samples"] for runs in grid.cells.values() for r in runs
              if r.completed}
    return ", ".join(f"K={k}" for k in sorted(values)) or "K unknown"


def panel_titles(grid: Grid) -> dict[str, str]:
    """QUANTITIES, with the test log-likelihood's number of importance samples."""
    return {**QUANTITIES, "test_log_likelihood": f"{QUANTITIES['test_log_likelihood']}, {_k_of(grid)}"}
