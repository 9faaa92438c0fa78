# One way to run things. Every target sets up .venv first if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# The suite mostly waits on real processes (gateways, workers, redis-server, nginx, node): three pytest-xdist
# workers keep 2 cores busy. Tests sharing a module-scoped fixture, and the signal-timing tests, stay together
# (`xdist_group`, tests/conftest.py). `make test PYTEST_XDIST=` runs it in one process.
PYTEST_XDIST ?= -n 3 --dist loadgroup

.PHONY: install run test lint format bench conformance clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,fastmcp,redis,otel,otlp,policy,lambda]"
	touch $(STAMP)

install: $(STAMP)

run: install
	PORT=$(PORT) $(PY) -m mcp_middleware.gateway serve --config examples/gateway/gateway.toml

test: install
	$(PY) -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff format --check mcp_middleware tests examples
	$(PY) -m ruff check mcp_middleware tests examples
	$(PY) -m mypy

format: install
	$(PY) -m ruff format mcp_middleware tests examples
	$(PY) -m ruff check --fix mcp_middleware tests examples

bench: install
	$(PY) -m tests.benchmarks

conformance: install
	$(PY) -m tests.conformance.run

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache .hypothesis
