# One entry point for people and CI. `make demo` and `make test` are the README's commands.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo serve test pytest lint format typecheck services bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The main job on the embedded SQLite default: database with sample data, API on :8000.
demo: install
	$(BIN)/homepot demo

serve: install
	$(BIN)/homepot serve

## The whole suite: services up, lint, types, then every test on SQLite and PostgreSQL.
test: install services lint typecheck pytest

services:
	./scripts/ensure-services.sh

## Tests in PYTEST_WORKERS processes (pytest-xdist); `make pytest PYTEST_WORKERS=0` runs them in
## this one. --dist loadgroup keeps each xdist_group's tests in one worker (see tests/conftest.py).
PYTEST_WORKERS ?= 2
pytest: install
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup

lint: install
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

typecheck: install
	$(BIN)/mypy

bench: install services
	# request_logging.py drives the server with wrk (Debian's package).
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python benchmarks/request_logging.py
	$(BIN)/python benchmarks/recorder_ingest.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var homepot.db homepot.db-wal homepot.db-shm
