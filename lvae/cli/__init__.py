"""The commands: train (Hydra), report, compare, analyze, reproduce, paper; `python -m lvae.cli` trains."""

from lvae.cli.train_command import train

__all__ = ["train"]
