# `make install` builds a local .venv; every other target uses it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The PyTorch build to install first (override for another CUDA/CPU build).
TORCH ?= torch==2.14.1 torchvision==0.29.1
ARGS ?=

.PHONY: install test demo train tensorboard clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: install
	$(PY) -m pytest -q

# A short CPU run: VAE and LVAE (5 layers) trained briefly, K=5000 on a test subset, then the table.
demo: install
	rm -rf outputs/demo
	$(PY) train.py -m experiment=demo model=vae,lvae
	$(PY) -m lvae.report outputs/demo

# One run with Hydra overrides: make train ARGS="model=vae layers=3 train.epochs=10"
train: install
	$(PY) train.py $(ARGS)

tensorboard: install
	$(VENV)/bin/tensorboard --logdir outputs

clean:
	rm -rf outputs/runs outputs/multirun outputs/demo .pytest_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
