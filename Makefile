# `make install` builds a local .venv; every other target uses it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The PyTorch build to install first (override for another CUDA/CPU build).
TORCH ?= torch==2.14.1 torchvision==0.29.1
ARGS ?=
# make reproduce: a preset of configs/experiment/, a budget of configs/budget/, runs per cell (seeds 0..N-1).
EXPERIMENT ?= fig3
BUDGET ?= paper
SEEDS ?= 1

.PHONY: install test demo train reproduce paper bench gpu-check tensorboard clean

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

# The paper's Figure 3 (or EXPERIMENT=table1) in one command: prints the estimated wall time, runs
# the sweep into outputs/$(EXPERIMENT)-$(BUDGET)/ (finished runs are skipped, interrupted ones resume),
# then writes results.md, results.csv and fig3.png there, also when runs failed (and then exits 1).
#   make reproduce BUDGET=quick                                   # about an hour on 2 CPU cores (measured 62 min)
#   make reproduce SEEDS=3 ARGS="hydra/launcher=slurm hydra.launcher.partition=gpu"
reproduce: install
	$(PY) -m lvae.reproduce --experiment $(EXPERIMENT) --budget $(BUDGET) --seeds $(SEEDS) $(ARGS)

# Every analysis of the paper in one folder, outputs/paper-$(BUDGET)/index.md: runs what is missing of Figure 3
# and the MNIST table (as make reproduce: resumes, skips finished runs), then the figures, tables and verdicts.
#   make paper BUDGET=quick
paper: install
	$(PY) -m lvae.paper --budget $(BUDGET) --seeds $(SEEDS) $(ARGS)

# Training and K=5000 evaluation speed against the device's matmul rate (prints figures; a few minutes).
bench: install
	$(PY) scripts/bench.py

# The GPU self-check (scripts/gpu_check.py; about 8 minutes on a CUDA machine, installs included): the tests
# on the GPU, eager vs compiled speed, a projected paper run, runs per GPU; summary in outputs/gpu-check/.
# It reuses the torch that GPU_PYTHON (a CUDA image's python3) already has: a venv that sees its packages,
# where pip adds only what lvae needs, from the same index as `make install`; offline, add
# PIP_ARGS="--no-index --find-links DIR" with those wheels in DIR. On a CPU: ARGS=--tiny (what CI runs).
GPU_PYTHON ?= python3
GPU_VENV ?= .venv-gpu
PIP_ARGS ?=
gpu-check:
	$(GPU_PYTHON) -m venv --system-site-packages $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install --quiet $(PIP_ARGS) -e '.[dev]'
	$(GPU_VENV)/bin/python scripts/gpu_check.py $(ARGS)

tensorboard: install
	$(VENV)/bin/tensorboard --logdir outputs

clean:
	rm -rf outputs/runs outputs/multirun outputs/demo .pytest_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
