# The two commands of the quickstart: `make up` (run the local stack) and `make test`.
PYTHON ?= python3
VENV ?= .venv
CHECKOV_VENV ?= .venv-checkov
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test test-fast test-e2e e2e lint bench install checkov clean

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

# A test that needs a missing tool (promtool, tini, ...) is skipped with how to get it;
# CELERIAC_REQUIRE_TOOLS=1 (CI) fails it instead. The e2e test (kind) is `make test-e2e`; the
# local control plane's tests are `make e2e`.
test: lint $(CHECKOV_VENV)/bin/checkov
	CELERIAC_CHECKOV=$(abspath $(CHECKOV_VENV)/bin/checkov) $(BIN)/pytest -m "not e2e and not cluster" --durations=20

# Lint, types and the unit tests (no network, no child processes): under a minute.
test-fast: lint
	$(BIN)/pytest tests/unit

test-e2e: $(STAMP)
	$(BIN)/pytest -m e2e tests/e2e

# The local control plane (tests/cluster/README.md): builds etcd, Kubernetes and KEDA from the
# pinned sources if not cached, then runs its tests (root: bridge, network and mount namespaces),
# test_helm.py among them: helm install/test/upgrade/uninstall of the chart, every pod a process.
e2e: $(STAMP)
	$(BIN)/python -m tests.cluster.build
	$(BIN)/pytest -m cluster tests/cluster --durations=10

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache .mypy_cache .ruff_cache
