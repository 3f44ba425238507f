"""Writing a report: results.md, results.csv and fig3.png of a set of runs."""

from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.figure import Figure

from lvae.data import DATASETS
from lvae.report.grid import QUANTITIES, Grid, active_units_of, build_grid, mean_and_std, mean_of, panel_titles
from lvae.report.markdown import results_markdown
from lvae.report.paper_numbers import OTHER_ARCHITECTURE, PAPER_NUMBERS, budget_deviations
from lvae.report.runs import RunRecord


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
                    mean, std = mean_and_std(values) if values else ("", "")
                    without = "; ".join(f"{r.run_dir.name}: {r.status}" for r in runs if not r.completed)
                    paper = PAPER_NUMBERS.get((quantity, row, n), ("",))[0]
                    writer.writerow([row, n, quantity, mean, std, len(values), len(runs), without, paper])


def plot_grid(grid: Grid, path: Path, title: str) -> None:
    """Figure 3's three panels: nats against layers, one line per variant, error bars = std over seeds."""
    figure = Figure(figsize=(16, 5.6), layout="constrained")
    axes = figure.subplots(1, 3)
    for ax, letter, (quantity, name) in zip(axes, "abc", panel_titles(grid).items()):
        for colour, row in enumerate(grid.rows):
            points = [(n, mean_and_std(v)) for n in grid.layers if (v := grid.values(row, n, mean_of(quantity)))]
            if points:
                ax.errorbar([n for n, _ in points], [m for _, (m, _) in points], yerr=[s for _, (_, s) in points],
                            color=f"C{colour}", marker="o", capsize=4, linewidth=1.8, label=row)
            for n in grid.layers:
                if (quantity, row, n) in PAPER_NUMBERS and (quantity, row, n) not in OTHER_ARCHITECTURE:
                    ax.plot(n, PAPER_NUMBERS[quantity, row, n][0], linestyle="none", marker="*", markersize=15,
                            color=f"C{colour}", markeredgecolor="black",
                            label="the paper's number, in its variant's colour")
        ax.set_title(f"{letter}) {name}", fontsize=12)
        ax.set_xlabel("stochastic layers")
        ax.set_ylabel("nats (higher is better)")
        ax.set_xticks(grid.layers)
        ax.grid(alpha=0.3)
    handles = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    if handles:  # none while no run has completed
        figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=min(len(handles), 5),
                      fontsize=10)
    figure.suptitle(title, fontsize=13)
    figure.savefig(path, dpi=110)


def report_title(records: list[RunRecord], out_dir: Path) -> str:
    """"MNIST: fig3-quick (a short budget, not the paper's)", with the datasets of the runs. The budget is that of
    the completed runs: a folder of unfinished ones (or of a config.yaml alone, which may not be lvae's) has none."""
    settings = [r.setting for r in records if r.setting and "model.name" in r.setting]
    budgets = [r.setting for r in records if r.completed and r.setting and "model.name" in r.setting]
    scale = ("no run has finished" if not budgets else
             "a short budget, not the paper's" if budget_deviations(budgets) else "the paper's budget")
    names = sorted({s.get("data.name", "mnist") for s in settings}) or ["mnist"]
    return f"{', '.join(DATASETS[name].title for name in names)}: {out_dir.resolve().name} ({scale})"


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
