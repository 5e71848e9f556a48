# qmsflow: `make run` and `make test` are all a newcomer needs; `make help` lists the rest.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
QMSFLOW := $(BIN)/qmsflow

.DEFAULT_GOAL := help
.PHONY: help install run test unit integration lint stack-up stack-down stack-status clean chart

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

install: $(BIN)/.installed ## create .venv and install qmsflow with its dev tools

$(BIN)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	@touch $@

run: install ## start the local stack and run the platform on live demo traffic
	$(QMSFLOW) run

test: install lint ## lint, then unit and integration tests against a real Kafka and Postgres
	$(QMSFLOW) stack up
	$(BIN)/pytest -q

unit: install ## unit tests only (no servers)
	$(BIN)/pytest -q tests/unit

integration: install ## integration tests only (starts the stack)
	$(QMSFLOW) stack up
	$(BIN)/pytest -q tests/integration

lint: install ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

stack-up: install ## fetch (first time) and start Kafka and Postgres
	$(QMSFLOW) stack up

stack-down: install ## stop Kafka and Postgres (data is kept)
	$(QMSFLOW) stack down

stack-status: install ## show the local servers
	$(QMSFLOW) stack status

clean: stack-down ## stop the stack and delete its data (.stack/); cached jars are kept
	rm -rf .stack

chart: install ## build helm once (cached in ~/.cache/qmsflow/bin), lint and validate the chart
	$(BIN)/pytest -q tests/deploy

.PHONY: bench
bench: install ## throughput, latency, scale and state benchmarks vs their baselines (~15 min); bench/results/<time>.json + .png
	$(QMSFLOW) stack up
	$(BIN)/python -m bench

.PHONY: soak
soak: install ## worker + sink RSS under 300 events/s for 10 min (QMSFLOW_SOAK_SECONDS); ±10% verdict, bench/results/soak-<time>.json + .png
	$(QMSFLOW) stack up
	$(BIN)/python -m bench.soak

.PHONY: chaos
chaos: install ## faults, poison and load on a stack of its own (.stack-chaos); ledgers printed and in its report.json
	RUN_CHAOS=1 $(BIN)/pytest -q tests/chaos
