"""`python -m lvae.cli ...`: the same as `python train.py ...`."""

from lvae.cli.train_command import train

train()
