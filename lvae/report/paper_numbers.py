"""The paper's side of a report: its published numbers and its budget (configs/budget/paper.yaml)."""

from __future__ import annotations

from lvae.run.config import PAPER_BUDGET, config_value

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
        (-85.33, "the paper's MNIST table, Burda et al.'s 2-layer VAE (k=1): their architecture, not this one, "
                 "so not drawn in the figure"),
    ("test_log_likelihood", "LVAE+BN+WU, omniglot", 5):
        (-102.1, "the paper's OMNIGLOT result, LVAE 5-layer (about -102.1)"),
}

# Numbers of another architecture than this code's: a reference in the paper column, never drawn as a point.
OTHER_ARCHITECTURE = {("test_log_likelihood", "VAE", 2)}


# The keys a budget (configs/budget/) sets; no budget changes anything else about a run.
BUDGET_KEYS = ("train.epochs", "warmup_epochs", "data.train_subset",
               "eval.iw_samples", "eval.test_subset", "eval.train_subset")


def paper_cell(quantity: str, row: str, layers: list[int]) -> str:
    return ", ".join(f"{PAPER_NUMBERS[quantity, row, n][0]:g} (L={n})" for n in layers
                     if (quantity, row, n) in PAPER_NUMBERS)


def paper_budget() -> dict:
    """The paper's values of BUDGET_KEYS, read from configs/budget/paper.yaml."""
    return {key: config_value(PAPER_BUDGET, key) for key in BUDGET_KEYS}


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
