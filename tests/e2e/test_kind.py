"""End to end on kind: build the image, install KEDA and the chart, push a burst of tasks
through the API, watch the workers scale out and back in, and check that every task succeeds.

Runs where a Docker engine answers (`docker info`), and kind and kubectl are on PATH; skipped
with the reason otherwise (failed under CELERIAC_REQUIRE_TOOLS=1). Not part of `make test`:
run it with `make test-e2e`. It needs the network (the base image, KEDA's manifest, the Redis
and KEDA images). The kind cluster, the image and KEDA are the session's (tests/e2e/conftest.py),
shared with the autoscaling and rollout scenarios (test_autoscaling.py,
test_autoscaling_recovery.py, test_rollouts.py); set CELERIAC_E2E_KEEP_CLUSTER=1 to keep the
cluster for a look.

    .venv/bin/pytest -m e2e tests/e2e
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from celeriac.testing import wait_until
from tests.e2e.kind import NAMESPACE, KindCluster
from tests.scenarios import scenario

pytestmark = pytest.mark.e2e

RELEASE = "e2e"

# 60 tasks of 2 s: two minutes of work for the one process of the minimum replica, so the
# autoscaler has time to add pods (KEDA polls every 5 s, the HPA acts every 15 s).
BURST_TASKS = 60
TASK_SECONDS = 2.0
SCALE_OUT_TIMEOUT_SECONDS = 240
TASKS_DONE_TIMEOUT_SECONDS = 600
# Scale-in: 30 s stabilization, then at most half the pods per minute (values-dev).
SCALE_IN_TIMEOUT_SECONDS = 420


@dataclass(frozen=True)
class Deployed:
    release: scenario.Release
    api: httpx.Client
    worker_deployment: str
    min_replicas: int
    max_replicas: int
    worker_cpu_limit: str


@pytest.fixture(scope="module")
def deployed(cluster: KindCluster, image: tuple[str, str], keda: None) -> Iterator[Deployed]:
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
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]

    client = scenario.api_client(cluster.api_url(release), token)
    try:
        wait_until(
            lambda: client.get("/readyz").status_code == 200,
            timeout=60,
            interval=0.5,
            message="the API through kubectl port-forward",
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
    # The session's cluster runs the other modules' releases next.
    release.uninstall(timeout=300)


def test_a_task_runs_and_the_pool_equals_the_cpu_limit(
    cluster: KindCluster, deployed: Deployed
) -> None:
    try:
        status = scenario.run_task(deployed.api, "celeriac.demo.sleep", seconds=0.2)
        assert status["state"] == "SUCCESS", status
        assert status["result"] == 0.2
        (worker,) = deployed.release.pods(cluster, "app.kubernetes.io/component=worker")
        pool = scenario.pool_processes(scenario.process_table(cluster, worker))
        assert len(pool) == int(deployed.worker_cpu_limit)
    except BaseException:
        print(cluster.diagnostics())
        raise


def test_burst_scales_workers_out_and_in_and_every_task_succeeds(
    cluster: KindCluster, deployed: Deployed
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
