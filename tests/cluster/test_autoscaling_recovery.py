"""Autoscaling on the local control plane (issue 10, items 3 and 4): scale to zero and back,
KEDA's fallback while the exporter is down, and a Redis pod deleted with tasks queued.

Its own control plane, on other ports than tests/cluster/test_autoscaling.py's (36443 and
37443; CELERIAC_RECOVERY_APISERVER_PORT / CELERIAC_RECOVERY_ADAPTER_PORT). The pod network
(bridge celeriac0, pods in 10.231.1.0/24) is one per machine: two process kubelets at once hand
out the same pod addresses, so never run this beside another `make e2e`. The scenario
helpers are tests/e2e/autoscaling.py's. Behaviour is asserted with deadlines; the time from a
submit to its result with the group at zero is printed and reported in the README.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator

import pytest

from celeriac.testing import wait_until
from tests.cluster.controlplane import ControlPlane, plane_with_node
from tests.cluster.test_autoscaling import LocalCluster
from tests.cluster.test_helm import LOCAL_VALUES, api_base_url, diagnostics
from tests.e2e import autoscaling, scenario
from tests.e2e.scenario import COMPONENT_LABEL, Release, condition, kubectl_json
from tests.support import missing

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

NODE = "process-node"
NAMESPACE = "celeriac"
TIMEOUT = 180.0
APISERVER_PORT = 36443
ADAPTER_PORT = 37443
# Longer than the (shortened) cooldown plus KEDA's polling interval: were the task not counted
# in the backlog while it runs, KEDA would take its pod away before it ends.
LONG_SECONDS = 35.0
# Exporter down: replicas reached by tasks of this length, then held while the exporter is down
# for longer than the scale-down stabilization window plus a policy period (20 s + 15 s).
HOLD_REPLICAS = 3
HOLD_TASK_SECONDS = 20.0
HOLD_WINDOW_SECONDS = 45.0


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    if importlib.util.find_spec("helm_python") is None:
        missing("helm-python-sdk", "pip install -e '.[test,chart]'")
    with plane_with_node(
        tmp_path_factory.mktemp("recovery"),
        NODE,
        apiserver_port=int(os.environ.get("CELERIAC_RECOVERY_APISERVER_PORT", APISERVER_PORT)),
        adapter_port=int(os.environ.get("CELERIAC_RECOVERY_ADAPTER_PORT", ADAPTER_PORT)),
    ) as plane:
        yield plane


def wait_scaling_active(plane: ControlPlane, release: Release) -> None:
    name = autoscaling.hpa_name(plane, release)
    wait_until(
        lambda: (
            condition(kubectl_json(plane, "get", "hpa", name, "-n", NAMESPACE), "ScalingActive")
            == "True"
        ),
        timeout=TIMEOUT,
        message="KEDA's HPA reading the external metric",
    )


def test_scale_to_zero_and_back(plane: ControlPlane) -> None:
    """minReplicas 0, cooldown 20 s (tests/e2e/autoscaling.py zero_values): idle, KEDA takes the
    group to 0; a task brings a pod back, which is not removed while the task runs (35 s, longer
    than the cooldown: the backlog counts tasks in flight); after it, the group goes back to 0;
    a new task brings a pod back again and its time from submit to result is reported."""
    cluster = LocalCluster(plane)
    release = Release(plane.kubeconfig, "zero", NAMESPACE)
    values = scenario.values({"redis": LOCAL_VALUES["redis"]}, autoscaling.zero_values())
    try:
        release.install(values, timeout=int(TIMEOUT))
        # No backlog since the install: KEDA scales the group to 0 (initialCooldownPeriod 0).
        autoscaling.wait_group_at(cluster, release, 0, timeout=TIMEOUT)
        scenario.wait_all_ready(plane, release, expected=4, timeout=TIMEOUT)
        token = release.api_token(plane)
        with scenario.api_client(api_base_url(plane, release), token) as api:
            long = autoscaling.watch_task(
                cluster, release, api, seconds=LONG_SECONDS, timeout=TIMEOUT
            )
            assert long.status["state"] == "SUCCESS", long.status
            assert long.status["result"] == LONG_SECONDS
            samples = long.while_running
            with_pod = [index for index, s in enumerate(samples) if s[1]]
            assert with_pod, samples
            # One pod, from its creation to the task's result: never terminating, never
            # replaced, and the Deployment never asked for fewer than 1.
            assert len(frozenset().union(*(s[1] for s in samples))) == 1, samples
            assert all(
                replicas >= 1 and len(uids) == 1 and terminating == 0
                for replicas, uids, terminating, _ in samples[with_pod[0] :]
            ), samples
            # The backlog (waiting + running) stayed at 1 for longer than the cooldown.
            busy = [backlog for *_, backlog in samples if backlog is not None and backlog >= 1]
            assert len(busy) > autoscaling.ZERO_COOLDOWN_SECONDS, samples

            # Drained: after the cooldown, KEDA takes the group back to 0.
            autoscaling.wait_group_at(cluster, release, 0, timeout=TIMEOUT)

            # A new task from zero: KEDA activates the group (0 -> 1), the pod starts, runs it.
            back = autoscaling.watch_task(cluster, release, api, seconds=0.5, timeout=TIMEOUT)
            assert back.status["state"] == "SUCCESS", back.status
            assert max(s[0] for s in back.while_running) >= 1
            print(
                f"from zero: submit -> result {back.seconds_to_result} s (0.5 s task); "
                f"{long.seconds_to_result} s for the {LONG_SECONDS:g} s task"
            )
    except BaseException:
        print(diagnostics(plane))
        raise
    release.uninstall(timeout=int(TIMEOUT))


@pytest.fixture(scope="module")
def held(plane: ControlPlane) -> Iterator[Release]:
    """One release for the exporter and Redis tests: minReplicas 1, maxReplicas 3, the chart's
    fallback (failureThreshold 3, replicas 1, currentReplicasIfHigher)."""
    release = Release(plane.kubeconfig, "held", NAMESPACE)
    values = scenario.values(
        {"redis": LOCAL_VALUES["redis"]}, autoscaling.burst_values(max_replicas=HOLD_REPLICAS)
    )
    try:
        release.install(values, timeout=int(TIMEOUT))
        scenario.wait_all_ready(plane, release, expected=5, timeout=TIMEOUT)
        wait_scaling_active(plane, release)
    except BaseException:
        print(diagnostics(plane))
        raise
    yield release
    release.uninstall(timeout=int(TIMEOUT))


def test_exporter_down_fallback_holds_replicas_then_scaling_resumes(
    plane: ControlPlane, held: Release
) -> None:
    cluster = LocalCluster(plane)
    release = held
    exporter = release.one(plane, "deployment", "exporter")["metadata"]["name"]
    try:
        with scenario.api_client(api_base_url(plane, release), release.api_token(plane)) as api:
            ids = [
                scenario.submit(api, autoscaling.TASK, seconds=HOLD_TASK_SECONDS)
                for _ in range(HOLD_REPLICAS)
            ]
            wait_until(
                lambda: autoscaling.spec_replicas(cluster, release) == HOLD_REPLICAS,
                timeout=TIMEOUT,
                interval=1,
                message=f"scaled up to {HOLD_REPLICAS}",
            )
            # The exporter down (and kept down) while the group has replicas.
            plane.kubectl("scale", "deployment", exporter, "--replicas=0", "-n", NAMESPACE)
            wait_until(
                lambda: not release.pods(plane, f"{COMPONENT_LABEL}=exporter"),
                timeout=TIMEOUT,
                message="exporter pod gone",
            )
            results = scenario.wait_finished(api, ids, timeout=TIMEOUT)
            assert {r["state"] for r in results.values()} == {"SUCCESS"}, results
            # No backlog any more, but nobody can see it: KEDA's fallback (after more than 3
            # failed reads) feeds the HPA target x max(current, 1) = the current replicas.
            scaled = release.one(plane, "scaledobject", "worker")["metadata"]["name"]
            wait_until(
                lambda: (
                    condition(
                        kubectl_json(plane, "get", "scaledobject", scaled, "-n", NAMESPACE),
                        "Fallback",
                    )
                    == "True"
                ),
                timeout=TIMEOUT,
                message="ScaledObject in fallback",
            )
            # Held for longer than the scale-down window plus a policy period: no scale-in.
            end = time.monotonic() + HOLD_WINDOW_SECONDS
            while time.monotonic() < end:
                assert autoscaling.spec_replicas(cluster, release) == HOLD_REPLICAS
                time.sleep(1)
            hpa = kubectl_json(
                plane, "get", "hpa", autoscaling.hpa_name(plane, release), "-n", NAMESPACE
            )
            print("HPA metrics in fallback:", hpa["status"].get("currentMetrics"))

            # The exporter back: the backlog (0) is read again and the group scales in.
            plane.kubectl("scale", "deployment", exporter, "--replicas=1", "-n", NAMESPACE)
            wait_until(
                lambda: (
                    condition(
                        kubectl_json(plane, "get", "scaledobject", scaled, "-n", NAMESPACE),
                        "Fallback",
                    )
                    == "False"
                ),
                timeout=TIMEOUT,
                message="ScaledObject out of fallback",
            )
            autoscaling.wait_group_at(cluster, release, 1, timeout=TIMEOUT)
    except BaseException:
        plane.kubectl("scale", "deployment", exporter, "--replicas=1", "-n", NAMESPACE)
        print(diagnostics(plane))
        raise


def test_redis_pod_deleted_keeps_queued_tasks_and_everything_recovers(
    plane: ControlPlane, held: Release
) -> None:
    cluster = LocalCluster(plane)
    release = held
    tasks = 8
    try:
        scenario.wait_all_ready(plane, release, expected=5, timeout=TIMEOUT)
        with scenario.api_client(api_base_url(plane, release), release.api_token(plane)) as api:
            ids = [scenario.submit(api, autoscaling.TASK, seconds=3) for _ in range(tasks)]
            # Queued (the exporter sees them; AOF fsync everysec has run since the submits).
            wait_until(
                lambda: autoscaling.exporter_backlog(cluster, release) >= tasks - 1,
                timeout=30,
                interval=0.5,
                message="tasks queued",
            )
            (redis,) = release.pods(plane, f"{COMPONENT_LABEL}=redis")
            plane.kubectl(
                "delete", "pod", redis["metadata"]["name"], "-n", NAMESPACE, "--wait=false"
            )

            def restarted() -> bool:
                pods = release.pods(plane, f"{COMPONENT_LABEL}=redis")
                return (
                    len(pods) == 1
                    and pods[0]["metadata"]["uid"] != redis["metadata"]["uid"]
                    and condition(pods[0], "Ready") == "True"
                )

            wait_until(restarted, timeout=TIMEOUT, interval=1, message="Redis pod recreated")
            # Every task queued before the deletion completes: none lost.
            results = scenario.wait_finished(api, ids, timeout=TIMEOUT)
            assert {r["state"] for r in results.values()} == {"SUCCESS"}, results
            # The API and the workers recovered on their own: a new task runs.
            after = scenario.run_task(api, autoscaling.TASK, seconds=0.5, timeout=TIMEOUT)
            assert after["state"] == "SUCCESS", after
    except BaseException:
        print(diagnostics(plane))
        raise
