# token-broker — `make run` starts a working demo, `make test` runs every test.
# Everything installs itself into .venv on first use (Python >= 3.11 must be on PATH).

PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install run test test-fast test-superset lint bench format check-config clean

install: $(STAMP)

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Exactly what uv.lock pins, plus the dev tools.
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra dev --python $(PYTHON)
	@touch $@

# `make run PORT=9080 SANDBOX_PORT=9090` when 8080 or 8090 is taken.
PORT ?= 8080
SANDBOX_PORT ?= 8090
# The policy `make check-config` validates: yours once config/broker.yaml exists.
CONFIG ?= $(if $(wildcard config/broker.yaml),config/broker.yaml,config/demo.yaml)

run: $(STAMP) ## sandbox vendors + broker on config/demo.yaml, prints curl commands
	$(BIN)/token-broker demo --port $(PORT) --sandbox-port $(SANDBOX_PORT)

test: $(STAMP) ## the whole test suite but the real Superset (make test-superset)
	$(BIN)/pytest -m "not superset"

test-fast: $(STAMP) ## the inner loop: everything but the tests marked slow (real processes)
	$(BIN)/pytest -m "not slow"

# Apache Superset 6.1.0 in its own virtualenv, cached under ~/.cache/token-broker (about
# 800 MB, 1.5 min the first time); then Superset on loopback and the broker against it.
test-superset: $(STAMP) ## the broker against a real Apache Superset (installs it once)
	$(BIN)/python -m tests.support.superset install
	$(BIN)/pytest -m superset tests/superset

lint: $(STAMP) ## ruff + mypy --strict, over the tests and the benchmark too
	$(BIN)/ruff check app tests bench
	$(BIN)/ruff format --check app tests bench
	$(BIN)/mypy app tests bench

format: $(STAMP)
	$(BIN)/ruff check --fix app tests bench
	$(BIN)/ruff format app tests bench

bench: $(STAMP) ## the benchmark harness (needs wrk); writes bench/RESULTS.md
	$(BIN)/python -m bench.run

check-config: $(STAMP) ## validate $(CONFIG) and the BROKER_* environment
	$(BIN)/token-broker check-config $(CONFIG)

clean:
	rm -rf $(VENV) $(TOOLS) dist build .mypy_cache .ruff_cache .pytest_cache .hypothesis
