"""results.md and the printed table of runs: the budget and provenance of the numbers, a table per
bound (the paper's numbers beside) and of active units, then every run."""

from __future__ import annotations

import datetime
import re
from collections import Counter
from typing import Any, Callable

from lvae.report.grid import Grid, active_units_of, format_cell, mean_of, panel_titles, row_label
from lvae.report.paper_numbers import PAPER_NUMBERS, budget_deviations, paper_cell
from lvae.report.runs import OTHER_CODE_NOTE, RunRecord, code_mark
from lvae.run.record import Status
from lvae.run.summary import describe_test_images, format_bound, variant_name


def markdown_table(records: list[RunRecord]) -> str:
    """One line per run: its row label in the tables (a fine-tuned run as "... + fine-tuning"), its length and
    warm-up, and every end-of-run number; a run without a result says its status."""
    header = ("| run | variant | layers | epochs | warm-up | test log p(x) | K | gap left at K | test images "
              "| test ELBO | train bound | KL per layer | time (s) |")
    columns = header.count("|") - 1
    lines = [header, "|" + "---|" * columns]
    for record in records:
        m = record.metrics
        if not record.completed:
            lines.append(f"| {record.run_dir.name} | {record.status} |" + " |" * (columns - 2))
            continue
        ll = m["test_log_likelihood"]
        kl = " / ".join(f"{v:.1f}" for v in m["kl_per_layer"])
        gap = ll.get("remaining_gap")
        variant = row_label(record.setting) if record.setting and "model.name" in record.setting else variant_name(m)
        lines.append(
            f"| {record.run_dir.name}{code_mark(m)} | {variant} | {m['layers']} | {m['epochs']} | {m['warmup_epochs']} "
            f"| {format_bound(ll)} | {ll['iw_samples']} | {'' if gap is None else f'{gap:.3f}'} "
            f"| {describe_test_images(ll, noun='')} | {format_bound(m['test_elbo'])} | {format_bound(m['train_bound'])} "
            f"| {kl} | {m['wall_time_s']['total']:.0f} |"
        )
    if any(r.completed and code_mark(r.metrics) for r in records):
        lines += ["", OTHER_CODE_NOTE]
    return "\n".join(lines)


def budget_summary(records: list[RunRecord]) -> str:
    """One sentence on the budget, device and dates behind the numbers of the completed runs among
    `records`; fine-tuned runs (init_from) are counted apart, their epochs being added to a trained run's."""
    finished = [r for r in records if r.completed]
    if not finished:
        return "No run has finished yet."
    tuned = [r.metrics for r in finished if (r.setting or {}).get("init_from")]
    trained = [r.metrics for r in finished if not (r.setting or {}).get("init_from")]
    base, metrics = trained or tuned, [r.metrics for r in finished]

    def values(runs: list[dict], get) -> str:
        return ", ".join(sorted({str(get(m)) for m in runs}))

    def epochs(runs: list[dict]) -> str:
        return f"{values(runs, lambda m: m['epochs'])} epoch{'' if {m['epochs'] for m in runs} == {1} else 's'}"
    scale = ("the paper's 2000 epochs" if {m["epochs"] for m in base} == {2000}
             else "a short budget, not the paper's 2000 epochs")
    fine_tuning = f"; fine-tuning: {epochs(tuned)} more from a trained run" if trained and tuned else ""
    return (f"Budget: {epochs(base)} ({scale}){fine_tuning}; test log p(x) with "
            f"K={values(metrics, lambda m: m['test_log_likelihood']['iw_samples'])} importance samples on "
            f"{values(metrics, lambda m: describe_test_images(m['test_log_likelihood']))}. Measured on "
            f"{values(metrics, lambda m: device_name(m['device']))}, {values(metrics, lambda m: m['date'][:10])}.")


def device_name(device: str) -> str:
    """A run's recorded device, in the singular for one thread: older runs recorded "cpu (x86_64, 1 threads)"."""
    return re.sub(r"\b1 threads\b", "1 thread", device)


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
        f"- Hardware: {_values(finished, lambda r: device_name(r.metrics.get('device', '')))}",
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


def _bound_table(grid: Grid, header: list[str], quantity: str) -> list[str]:
    return _table(grid, header,
                  lambda row, n: format_cell(grid.runs(row, n), [grid.values(row, n, mean_of(quantity))]),
                  lambda row: paper_cell(quantity, row, grid.layers))


def _test_images_note(records: list[RunRecord]) -> list[str]:
    """Says which test images the test bounds are means over, and, when they are not all of them, that the
    paper's numbers are means over the whole test set, so a subset mean beside them is not comparable."""
    entries = [r.metrics["test_log_likelihood"] for r in records if r.completed]
    if not entries:
        return []
    described = ", ".join(sorted({describe_test_images(entry) for entry in entries}))
    note = f"Test bounds: means over {described}."
    if any(entry["images"] != entry.get("test_set_images") for entry in entries):
        stderr = max(entry["stderr"] for entry in entries)
        note += (" The paper's numbers are means over the whole test set: a mean over a subset can differ from the "
                 f"full-set mean by its standard error (up to {stderr:.2f} nats here), and a first-N subset by more "
                 "(MNIST's test set is ordered), so the test cells are not comparable with the paper column.")
    return ["", note]


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
    lines += _test_images_note(records)
    lines += ["", "## Runs", "", markdown_table([r for r in records if r.status != Status.missing])]
    stopped = [r for r in records if r.status in (Status.failed, Status.interrupted)]
    if stopped:
        lines += ["", "Stopped runs:"] + [f"- `{r.run_dir.name}`: {r.status}: {r.metrics.get('reason', '')}"
                                          for r in stopped]
    missing = [r for r in records if r.status == Status.missing]
    if missing:
        lines += ["", "Missing runs (expected by multirun.yaml, no folder; run the sweep's command again):"]
        lines += [f"- `{r.run_dir}`" for r in missing]
    if grid.unplaced:
        lines += ["", "Runs without a known config (not in the tables): "
                  + ", ".join(f"`{r.run_dir.name}` ({r.status})" for r in grid.unplaced)]
    return "\n".join(lines) + "\n"
