# The two commands of the quickstart: `make up` (run the local stack) and `make test`.
PYTHON ?= python3
VENV ?= .venv
CHECKOV_VENV ?= .venv-checkov
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test test-fast lint bench install checkov clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[local,test,chart]'
	touch $(STAMP)

install: $(STAMP)

# checkov pins its own dependency versions, so it lives in a venv of its own.
$(CHECKOV_VENV)/bin/checkov:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet checkov

checkov: $(CHECKOV_VENV)/bin/checkov

up: $(STAMP)
	$(BIN)/celeriac up

test: $(STAMP) $(CHECKOV_VENV)/bin/checkov
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	CELERIAC_CHECKOV=$(abspath $(CHECKOV_VENV)/bin/checkov) $(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache .mypy_cache .ruff_cache
