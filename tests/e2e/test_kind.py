"""End to end on kind: build the image, install KEDA and the chart, push a burst of tasks
through the API, watch the workers scale out and back in, and check that every task succeeds.

Runs where a Docker engine answers (`docker info`), and kind and kubectl are on PATH; skipped
with the reason otherwise (failed under CELERIAC_REQUIRE_TOOLS=1). Not part of `make test`:
run it with `make test-e2e`. It needs the network (the base image, KEDA's manifest, the Redis
and KEDA images) and takes about ten minutes. The cluster gets a unique name and is deleted at the
end (set CELERIAC_E2E_KEEP_CLUSTER=1 to keep it for a look; delete it with
`kind delete cluster --name <name>`).

    .venv/bin/pytest -m e2e tests/e2e
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from celeriac.testing import Child, free_port, wait_until
from tests.e2e import scenario
from tests.support import REPO_ROOT, missing, require_tool

pytestmark = pytest.mark.e2e

KEDA_VERSION = "2.20.2"
KEDA_MANIFEST = (
    f"https://github.com/kedacore/keda/releases/download/v{KEDA_VERSION}/keda-{KEDA_VERSION}.yaml"
)
KEDA_NAMESPACE = "keda"
RELEASE = "e2e"
NAMESPACE = "celeriac"

# 60 tasks of 2 s: two minutes of work for the one process of the minimum replica, so the
# autoscaler has time to add pods (KEDA polls every 5 s, the HPA acts every 15 s).
BURST_TASKS = 60
TASK_SECONDS = 2.0
SCALE_OUT_TIMEOUT_SECONDS = 240
TASKS_DONE_TIMEOUT_SECONDS = 600
# Scale-in: 30 s stabilization, then at most half the pods per minute (values-dev).
SCALE_IN_TIMEOUT_SECONDS = 420


def require_prerequisites() -> None:
    """Skip (or fail, under CELERIAC_REQUIRE_TOOLS) unless Docker, kind and kubectl work here."""
    require_tool("docker", "install Docker Engine: https://docs.docker.com/engine/install/")
    require_tool("kind", "go install sigs.k8s.io/kind@latest, or brew install kind")
    require_tool("kubectl", "https://kubernetes.io/docs/tasks/tools/, or brew install kubectl")
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        missing("a working Docker engine", "start it (`docker info` timed out)")
    if info.returncode != 0:
        first_line = (info.stderr.strip().splitlines() or ["no output"])[0]
        missing("a working Docker engine", f"start it (`docker info`: {first_line})")
    if importlib.util.find_spec("helm_python") is None:
        missing("helm-python-sdk", "pip install -e '.[test,chart]'")


def run(args: Sequence[str], *, timeout: float = 300, stdin: str | None = None) -> str:
    """Run a command; fail with its stderr when it fails."""
    result = subprocess.run(
        list(args), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise AssertionError(
            f"`{' '.join(args)}` exited {result.returncode}: {result.stderr.strip()[-2000:]}"
        )
    return result.stdout


@dataclass(frozen=True)
class Cluster:
    name: str
    kubeconfig: Path

    def kubectl(self, *args: str, timeout: float = 300) -> str:
        return run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args], timeout=timeout)

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json"))

    def diagnostics(self) -> str:
        """What to look at when the test fails: objects, autoscaler state, recent events."""
        sections = []
        for args in (
            ["get", "all,scaledobject,hpa", "-n", NAMESPACE, "-o", "wide"],
            ["describe", "scaledobject", "-n", NAMESPACE],
            ["get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp"],
            ["logs", "-n", KEDA_NAMESPACE, "deployment/keda-operator", "--tail=40"],
            ["logs", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=worker", "--tail=20"],
        ):
            try:
                output = self.kubectl(*args, timeout=60)
            except (AssertionError, subprocess.TimeoutExpired) as exc:
                output = str(exc)
            sections.append(f"$ kubectl {' '.join(args)}\n{output}")
        return "\n".join(sections)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_prerequisites()
    name = f"celeriac-e2e-{secrets.token_hex(3)}"
    # A kubeconfig of its own: the user's current context is never touched.
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    target = ["--name", name, "--kubeconfig", str(kubeconfig)]
    config = REPO_ROOT / "k8s" / "kind-config.yaml"
    try:
        run(
            ["kind", "create", "cluster", *target, "--config", str(config), "--wait", "300s"],
            timeout=600,
        )
        yield Cluster(name, kubeconfig)
    finally:
        if os.environ.get("CELERIAC_E2E_KEEP_CLUSTER") != "1":
            subprocess.run(["kind", "delete", "cluster", *target], capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def image(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """The celeriac image, built from this checkout and loaded into the cluster's nodes."""
    repository, tag = "celeriac.local/celeriac", f"e2e-{secrets.token_hex(4)}"
    reference = f"{repository}:{tag}"
    dockerfile = REPO_ROOT / "services" / "base" / "Dockerfile"
    run(["docker", "build", "-f", str(dockerfile), "-t", reference, str(REPO_ROOT)], timeout=1800)
    try:
        run(["kind", "load", "docker-image", reference, "--name", cluster.name], timeout=600)
        yield repository, tag
    finally:
        subprocess.run(["docker", "image", "rm", reference], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def keda(cluster: Cluster) -> None:
    """KEDA from its release manifest, as k8s/README.md installs it."""
    cluster.kubectl("apply", "--server-side", "-f", KEDA_MANIFEST)
    available = ["wait", "--for=condition=Available", "--timeout=300s"]
    cluster.kubectl(*available, "deployment", "--all", "-n", KEDA_NAMESPACE, timeout=330)
    # The external metrics API is what the HPA reads KEDA's metric through.
    cluster.kubectl(*available, "apiservice/v1beta1.external.metrics.k8s.io", timeout=330)


@dataclass(frozen=True)
class Deployed:
    release: scenario.Release
    api: httpx.Client
    worker_deployment: str
    min_replicas: int
    max_replicas: int
    worker_cpu_limit: str


@pytest.fixture(scope="module")
def deployed(
    cluster: Cluster, image: tuple[str, str], keda: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployed]:
    repository, tag = image
    values = scenario.values({"image": {"repository": repository, "tag": tag}})
    autoscaling = values["workerDefaults"]["autoscaling"]
    release = scenario.Release(cluster.kubeconfig, RELEASE, NAMESPACE)
    release.install(values, timeout=600)
    # One pod per component (redis, api, beat, exporter, the worker's minimum), all Ready.
    scenario.wait_all_ready(cluster, release, expected=5, timeout=300)
    # The chart's own `helm test`: the exporter reads Redis and the API is ready.
    release.test(timeout=300)
    token = release.api_token(cluster)
    deployment = release.worker_deployment(cluster)
    service = release.one(cluster, "service", "api")["metadata"]["name"]
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]

    port = free_port()
    log = tmp_path_factory.mktemp("port-forward") / "api.log"
    kubectl = ["kubectl", "--kubeconfig", str(cluster.kubeconfig)]
    forward = Child(
        [
            *kubectl,
            "port-forward",
            "-n",
            NAMESPACE,
            "--address",
            "127.0.0.1",
            f"service/{service}",
            f"{port}:8000",
        ],
        log_path=log,
    )
    client = scenario.api_client(f"http://127.0.0.1:{port}", token)
    try:
        wait_until(
            lambda: client.get("/readyz").status_code == 200,
            timeout=60,
            interval=0.5,
            message=f"the API through kubectl port-forward (log: {log})",
        )
        yield Deployed(
            release=release,
            api=client,
            worker_deployment=deployment["metadata"]["name"],
            min_replicas=int(autoscaling["minReplicas"]),
            max_replicas=int(autoscaling["maxReplicas"]),
            worker_cpu_limit=str(limits["cpu"]),
        )
    finally:
        client.close()
        forward.stop()


def test_a_task_runs_and_the_pool_equals_the_cpu_limit(
    cluster: Cluster, deployed: Deployed
) -> None:
    try:
        status = scenario.run_task(deployed.api, "celeriac.demo.sleep", seconds=0.2)
        assert status["state"] == "SUCCESS", status
        assert status["result"] == 0.2
        (worker,) = deployed.release.pods(cluster, "app.kubernetes.io/component=worker")
        table = cluster.kubectl(
            "exec",
            "-n",
            NAMESPACE,
            worker["metadata"]["name"],
            "--",
            "python",
            "-c",
            scenario.PROCESS_TABLE_SCRIPT,
        )
        pool = scenario.pool_processes(scenario.parse_process_table(table))
        assert len(pool) == int(deployed.worker_cpu_limit)
    except BaseException:
        print(cluster.diagnostics())
        raise


def test_burst_scales_workers_out_and_in_and_every_task_succeeds(
    cluster: Cluster, deployed: Deployed
) -> None:
    def replicas() -> int:
        deployment = cluster.kubectl_json(
            "get", "deployment", deployed.worker_deployment, "-n", NAMESPACE
        )
        return int(deployment["spec"].get("replicas", 0))

    try:
        assert replicas() == deployed.min_replicas

        ids = [
            scenario.submit(deployed.api, "celeriac.demo.sleep", seconds=TASK_SECONDS)
            for _ in range(BURST_TASKS)
        ]

        scaled_to = wait_until(
            lambda: (count := replicas()) > deployed.min_replicas and count,
            timeout=SCALE_OUT_TIMEOUT_SECONDS,
            interval=2,
            message=f"{deployed.worker_deployment} to scale out past {deployed.min_replicas}",
        )
        assert scaled_to <= deployed.max_replicas

        finished = scenario.wait_finished(deployed.api, ids, timeout=TASKS_DONE_TIMEOUT_SECONDS)
        unsuccessful = [s for s in finished.values() if s["state"] != "SUCCESS"]
        assert not unsuccessful
        assert {s["result"] for s in finished.values()} == {TASK_SECONDS}

        wait_until(
            lambda: replicas() == deployed.min_replicas,
            timeout=SCALE_IN_TIMEOUT_SECONDS,
            interval=5,
            message=f"{deployed.worker_deployment} to scale back in to {deployed.min_replicas}",
        )
    except BaseException:
        print(cluster.diagnostics())
        raise
