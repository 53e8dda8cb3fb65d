# Two commands on a fresh machine:  `make run` (service on SQLite with the demo trial) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PG_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/postgres

.PHONY: run test lint test-sqlite test-postgres openapi bench install

$(BIN)/trial-fhir: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/trial-fhir

run: install
	$(BIN)/trial-fhir serve --demo

test: install lint test-sqlite test-postgres

lint: install
	VENV=$(VENV) .ci/lint

test-sqlite: install
	$(BIN)/python -m pytest -q -n 2 tests

test-postgres: install
	TEST_DATABASE_URL=$(PG_URL) $(BIN)/python -m pytest -q -n 2 tests

openapi: install
	$(BIN)/python -m service.export_openapi

bench: install
	$(BIN)/python bench/ingest.py
