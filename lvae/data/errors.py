"""What a dataset that cannot be used raises; each message says where it looked and what to do."""

from __future__ import annotations


class DatasetError(RuntimeError):
    """The dataset cannot be used; the message says where it looked and what to do."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset files are neither on disk nor downloadable."""


class SubsetError(DatasetError, ValueError):
    """An evaluation subset that the dataset cannot give: more images than it has."""


class DatasetInvalidError(DatasetError):
    """A dataset file is there but is not what it should be (truncated, wrong format)."""


