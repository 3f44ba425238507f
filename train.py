"""Train and evaluate one run: `python train.py model=lvae layers=5` (Hydra overrides)."""

from lvae.cli import train

if __name__ == "__main__":
    train()
