# The two commands a newcomer needs: `make demo` and `make test`.
# Everything is installed into .venv by these targets; nothing by hand.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-deps
SAGE_DEMO_HOME ?= $(CURDIR)/.sage-demo
PYTEST_ARGS ?=

.PHONY: help venv install test lint typecheck unit demo demo-stop bench clean

help:
	@echo "make demo      start gateway + agent + simulated engines on loopback and send real requests"
	@echo "make demo-stop stop what make demo started"
	@echo "make test      ruff + mypy --strict + the whole pytest suite (asyncio and trio)"
	@echo "make bench     run the benchmarks in bench/ (prints numbers)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Dependencies are reinstalled only when pyproject.toml changes.
$(STAMP): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,dev]' --config-settings editable_mode=strict
	touch $(STAMP)

venv: $(BIN)/python

# A strict editable install is a link tree: re-run it (seconds, no downloads) so new
# modules are visible to mypy and to the tests, which import the installed package.
install: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps -e . --config-settings editable_mode=strict

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test: lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

demo: install
	SAGE_HOME=$(SAGE_DEMO_HOME) $(BIN)/python -m sage.unified.cli.demo

demo-stop: install
	SAGE_HOME=$(SAGE_DEMO_HOME) $(BIN)/python -m sage.unified.cli.demo --stop

bench: install
	$(BIN)/python bench/simulator_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache $(SAGE_DEMO_HOME)
