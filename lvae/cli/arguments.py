"""Argument types that several commands share: each refuses a bad value in argparse's one message (exit 2),
before the command runs anything or starts another command."""

from __future__ import annotations

import argparse
from pathlib import Path

from lvae.run.config import CONFIG_DIR


def positive_integer(text: str) -> int:
    """A count (of images, of seeds): an integer of at least 1 (0 or -5 would silently mean something else)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def budget_name(text: str) -> str:
    """A budget of configs/budget/ (what `budget=<name>` selects in every run of a sweep)."""
    budgets = sorted(path.stem for path in (Path(CONFIG_DIR) / "budget").glob("*.yaml"))
    if text not in budgets:
        raise argparse.ArgumentTypeError(f"{text!r} is not a budget of configs/budget/ (there are: {', '.join(budgets)})")
    return text
