"""Helpers the tests import explicitly (never through conftest)."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent  # the repository's root
