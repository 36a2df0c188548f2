"""Autoscaling on the local control plane (issue 10, items 1 and 6): the chart's own ScaledObject,
the real KEDA operator and metrics adapter, the controller-manager's HPA (its default 15 s sync:
controlplane.py does not set --horizontal-pod-autoscaler-sync-period) and the process kubelet.

The burst is tests/e2e/autoscaling.py's: ``TASKS`` celeriac.demo.sleep tasks of ``SECONDS``
through the API; the replicas rise to ceil(backlog / pool) capped by maxReplicas, every task
finishes once (its result read back, and the workers' own success counters summing to the task
count), and the group returns to its minimum through the HPA's scale-down behavior (shortened
for the test: tests/e2e/autoscaling.py). The timeline and figures (autoscaling-burst.csv,
autoscaling-burst-figures.csv and autoscaling-burst.png) go to the test's temporary directory, or
to bench/results with CELERIAC_RECORD_RESULTS=1. No assertion on timing: the figures are
reported.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from celeriac.testing import wait_until
from tests.cluster.controlplane import ADAPTER_PORT, APISERVER_PORT, ControlPlane, plane_with_node
from tests.cluster.test_helm import LOCAL_VALUES, api_base_url, diagnostics
from tests.e2e import autoscaling, scenario
from tests.e2e.scenario import Obj, Release, condition, kubectl_json
from tests.support import missing

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

NODE = "process-node"
RELEASE = "burst"
NAMESPACE = "celeriac"
TIMEOUT = 180.0
# 72 x 2.5 s = 180 task-seconds; 6 replicas of pool 1 drain them ideally in 30 s.
TASKS = 72
SECONDS = 2.5


class LocalCluster:
    """The control plane, with pods reached at their bridge addresses from the host."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def kubectl(self, *args: str) -> str:
        return self.plane.kubectl(*args)

    def kubectl_command(self, *args: str) -> list[str]:
        return [self.plane.kubectl_binary, "--kubeconfig", str(self.plane.kubeconfig), *args]

    def http_get(self, pod: Obj, port: int, path: str) -> str:
        response = httpx.get(f"http://{pod['status']['podIP']}:{port}{path}", timeout=2)
        response.raise_for_status()
        return response.text


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    if importlib.util.find_spec("helm_python") is None:
        missing("helm-python-sdk", "pip install -e '.[test,chart]'")
    with plane_with_node(
        tmp_path_factory.mktemp("autoscaling"),
        NODE,
        apiserver_port=int(os.environ.get("CELERIAC_CLUSTER_APISERVER_PORT", APISERVER_PORT)),
        adapter_port=int(os.environ.get("CELERIAC_CLUSTER_ADAPTER_PORT", ADAPTER_PORT)),
    ) as plane:
        yield plane


def test_burst_scales_up_runs_each_task_once_and_scales_back(
    plane: ControlPlane, tmp_path: Path
) -> None:
    cluster = LocalCluster(plane)
    release = Release(plane.kubeconfig, RELEASE, NAMESPACE)
    values = scenario.values(
        {"redis": LOCAL_VALUES["redis"]},
        autoscaling.burst_values(),
    )
    try:
        release.install(values, timeout=int(TIMEOUT))
        scenario.wait_all_ready(plane, release, expected=5, timeout=TIMEOUT)
        scaled = release.one(plane, "scaledobject", "worker")
        hpa_name = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["name"]
        wait_until(
            lambda: (
                condition(
                    kubectl_json(plane, "get", "hpa", hpa_name, "-n", NAMESPACE), "ScalingActive"
                )
                == "True"
            ),
            timeout=TIMEOUT,
            message="KEDA's HPA reading the external metric",
        )
        token = release.api_token(plane)
        with scenario.api_client(api_base_url(plane, release), token) as api:
            burst = autoscaling.run_burst(
                cluster, release, api, tasks=TASKS, seconds=SECONDS, timeout=600
            )
        written = autoscaling.save(burst, autoscaling.results_directory(tmp_path))
        print("written:", *written)
        print("figures:", burst.figures())
        autoscaling.check(burst, burst.results)
        # Exactly once: the workers' own success counters (read each second from every pod,
        # including those later removed at scale-in) add up to the task count.
        assert burst.runs == TASKS, burst.runs_by_pod
        assert len(burst.runs_by_pod) >= burst.needed
    except BaseException:
        print(diagnostics(plane))
        raise
    release.uninstall(timeout=int(TIMEOUT))
