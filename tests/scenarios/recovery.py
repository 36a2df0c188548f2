"""Scale to zero and back, KEDA's fallback while the exporter is down, and a Redis pod deleted
with tasks queued (issue 10, items 3 and 4): the scenarios and their assertions, shared by the
local control plane's tests/cluster/test_autoscaling_recovery.py and kind's
tests/e2e/test_autoscaling_recovery.py. Each takes the cluster (``ScenarioCluster``: kubectl,
a pod's port, the API's address, diagnostics), the release and the cluster's values layer; the
helpers are tests/scenarios/autoscaling.py's. Behaviour is asserted with deadlines; the time from a
submit to its result with the group at zero is printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from celeriac.testing import wait_until
from tests.scenarios import autoscaling, scenario
from tests.scenarios.autoscaling import ScenarioCluster
from tests.scenarios.scenario import COMPONENT_LABEL, Release, condition, kubectl_json

# Longer than the (shortened) cooldown plus KEDA's polling interval: were the task not counted
# in the backlog while it runs, KEDA would take its pod away before it ends.
LONG_SECONDS = 35.0
# Exporter down: replicas reached by tasks of this length, then held while the exporter is down
# for longer than the scale-down stabilization window plus a policy period (20 s + 15 s).
HOLD_REPLICAS = 3
HOLD_TASK_SECONDS = 20.0
HOLD_WINDOW_SECONDS = 45.0
# Redis deleted: tasks queued when its pod goes.
QUEUED_TASKS = 8


def holds(check: Callable[[], bool], seconds: float, message: str) -> None:
    """``check`` is true at every sample (about once a second) for ``seconds``: an
    observation over a period, not a wait for something to happen."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert check(), message
        time.sleep(1)


def zero_and_back_scenario(
    cluster: ScenarioCluster, release: Release, layer: Mapping[str, Any], *, timeout: float
) -> None:
    """minReplicas 0, cooldown 20 s (tests/scenarios/autoscaling.py zero_values): idle, KEDA takes
    the group to 0; a task brings a pod back, which is not removed while the task runs (35 s, longer
    than the cooldown: the backlog counts tasks in flight); after it, the group goes back to 0; a
    new task brings a pod back again and its time from submit to result is reported. The release is
    uninstalled at the end."""
    values = scenario.values(layer, autoscaling.zero_values())
    try:
        release.install(values, timeout=int(timeout))
        # No backlog since the install: KEDA scales the group to 0 (initialCooldownPeriod 0).
        autoscaling.wait_group_at(cluster, release, 0, timeout=timeout)
        scenario.wait_all_ready(cluster, release, expected=4, timeout=timeout)
        token = release.api_token(cluster)
        with scenario.api_client(cluster.api_url(release), token) as api:
            long = autoscaling.watch_task(
                cluster, release, api, seconds=LONG_SECONDS, timeout=timeout
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
            autoscaling.wait_group_at(cluster, release, 0, timeout=timeout)

            # A new task from zero: KEDA activates the group (0 -> 1), the pod starts, runs it.
            back = autoscaling.watch_task(cluster, release, api, seconds=0.5, timeout=timeout)
            assert back.status["state"] == "SUCCESS", back.status
            assert max(s[0] for s in back.while_running) >= 1
            print(
                f"from zero: submit -> result {back.seconds_to_result} s (0.5 s task); "
                f"{long.seconds_to_result} s for the {LONG_SECONDS:g} s task"
            )
    except BaseException:
        print(cluster.diagnostics())
        raise
    release.uninstall(timeout=int(timeout))


def install_held(
    cluster: ScenarioCluster, release: Release, layer: Mapping[str, Any], *, timeout: float
) -> None:
    """The release of the exporter and Redis scenarios: minReplicas 1, maxReplicas 3, the
    chart's fallback (failureThreshold 3, replicas 1, currentReplicasIfHigher); every pod Ready
    and KEDA's HPA reading the backlog."""
    values = scenario.values(layer, autoscaling.burst_values(max_replicas=HOLD_REPLICAS))
    try:
        release.install(values, timeout=int(timeout))
        scenario.wait_all_ready(cluster, release, expected=5, timeout=timeout)
        autoscaling.wait_scaling_active(cluster, release, timeout=timeout)
    except BaseException:
        print(cluster.diagnostics())
        raise


def fallback(cluster: ScenarioCluster, release: Release, scaled: str) -> str:
    """The ScaledObject's Fallback condition ("True", "False" or "")."""
    return condition(
        kubectl_json(cluster, "get", "scaledobject", scaled, "-n", release.namespace), "Fallback"
    )


def exporter_down_scenario(cluster: ScenarioCluster, release: Release, *, timeout: float) -> None:
    """The group at 3 replicas, then the exporter scaled to 0: the tasks end, KEDA's fallback
    holds the replicas for longer than the scale-down window; the exporter back, the fallback
    ends and the group scales in to 1."""
    namespace = release.namespace
    exporter = release.one(cluster, "deployment", "exporter")["metadata"]["name"]
    try:
        token = release.api_token(cluster)
        with scenario.api_client(cluster.api_url(release), token) as api:
            ids = [
                scenario.submit(api, autoscaling.TASK, seconds=HOLD_TASK_SECONDS)
                for _ in range(HOLD_REPLICAS)
            ]
            wait_until(
                lambda: autoscaling.spec_replicas(cluster, release) == HOLD_REPLICAS,
                timeout=timeout,
                interval=1,
                message=f"scaled up to {HOLD_REPLICAS}",
            )
            # The exporter down (and kept down) while the group has replicas.
            cluster.kubectl("scale", "deployment", exporter, "--replicas=0", "-n", namespace)
            wait_until(
                lambda: not release.pods(cluster, f"{COMPONENT_LABEL}=exporter"),
                timeout=timeout,
                message="exporter pod gone",
            )
            results = scenario.wait_finished(api, ids, timeout=timeout)
            assert {r["state"] for r in results.values()} == {"SUCCESS"}, results
            # No backlog any more, but nobody can see it: KEDA's fallback (after more than 3
            # failed reads) feeds the HPA target x max(current, 1) = the current replicas.
            scaled = release.one(cluster, "scaledobject", "worker")["metadata"]["name"]
            wait_until(
                lambda: fallback(cluster, release, scaled) == "True",
                timeout=timeout,
                message="ScaledObject in fallback",
            )
            # Held for longer than the scale-down window plus a policy period: no scale-in.
            holds(
                lambda: autoscaling.spec_replicas(cluster, release) == HOLD_REPLICAS,
                HOLD_WINDOW_SECONDS,
                f"the group held at {HOLD_REPLICAS} in fallback",
            )
            hpa = kubectl_json(
                cluster, "get", "hpa", autoscaling.hpa_name(cluster, release), "-n", namespace
            )
            print("HPA metrics in fallback:", hpa["status"].get("currentMetrics"))

            # The exporter back: the backlog (0) is read again and the group scales in.
            cluster.kubectl("scale", "deployment", exporter, "--replicas=1", "-n", namespace)
            wait_until(
                lambda: fallback(cluster, release, scaled) == "False",
                timeout=timeout,
                message="ScaledObject out of fallback",
            )
            autoscaling.wait_group_at(cluster, release, 1, timeout=timeout)
    except BaseException:
        cluster.kubectl("scale", "deployment", exporter, "--replicas=1", "-n", namespace)
        print(cluster.diagnostics())
        raise


def redis_deleted_scenario(cluster: ScenarioCluster, release: Release, *, timeout: float) -> None:
    """Tasks queued, the Redis pod deleted: it comes back (its AOF on a claim), every queued
    task completes, and the API and the workers recover on their own (a new task runs)."""
    try:
        scenario.wait_all_ready(cluster, release, expected=5, timeout=timeout)
        token = release.api_token(cluster)
        with scenario.api_client(cluster.api_url(release), token) as api:
            ids = [scenario.submit(api, autoscaling.TASK, seconds=3) for _ in range(QUEUED_TASKS)]
            # Queued (the exporter sees them; AOF fsync everysec has run since the submits).
            wait_until(
                lambda: autoscaling.exporter_backlog(cluster, release) >= QUEUED_TASKS - 1,
                timeout=30,
                interval=0.5,
                message="tasks queued",
            )
            (redis,) = release.pods(cluster, f"{COMPONENT_LABEL}=redis")
            cluster.kubectl(
                "delete", "pod", redis["metadata"]["name"], "-n", release.namespace, "--wait=false"
            )

            def restarted() -> bool:
                pods = release.pods(cluster, f"{COMPONENT_LABEL}=redis")
                return (
                    len(pods) == 1
                    and pods[0]["metadata"]["uid"] != redis["metadata"]["uid"]
                    and condition(pods[0], "Ready") == "True"
                )

            wait_until(restarted, timeout=timeout, interval=1, message="Redis pod recreated")
            # Every task queued before the deletion completes: none lost.
            results = scenario.wait_finished(api, ids, timeout=timeout)
            assert {r["state"] for r in results.values()} == {"SUCCESS"}, results
            # The API and the workers recovered on their own: a new task runs.
            after = scenario.run_task(api, autoscaling.TASK, seconds=0.5, timeout=timeout)
            assert after["state"] == "SUCCESS", after
    except BaseException:
        print(cluster.diagnostics())
        raise
