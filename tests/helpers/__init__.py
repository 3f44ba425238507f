"""Helpers the tests import explicitly (never through conftest)."""
