# Everyday verbs. `make run` and `make test` each build the virtual environment
# they need in .venv on first use (and again when the package metadata changes).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test lint format bench dist clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-run

## Start the development server on http://127.0.0.1:5000 (SQLite in instance/).
run: $(VENV)/.installed-run
	$(BIN)/flask --app flaskchat run

## Run the whole test suite.
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Lint, format check and strict type check.
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check flaskchat tests
	$(BIN)/ruff format --check flaskchat tests
	$(BIN)/mypy

## Benchmark the production setup (needs wrk and redis-server); see README, Performance.
bench: $(VENV)/.installed-dev
	$(BIN)/python tests/bench/run.py --out bench-results.json

## Build the wheel and source archive into dist/ (pip install dist/flaskchat-*.whl).
dist: $(VENV)/.installed-dev
	$(BIN)/python -m build --outdir dist .

format: $(VENV)/.installed-dev
	$(BIN)/ruff format flaskchat tests
	$(BIN)/ruff check --fix flaskchat tests

clean:
	rm -rf $(VENV) build dist *.egg-info test-artifacts bench-results.json
