"""Scale-in and rollouts on the local control plane (issue 10, items 2 and 5): idle workers go
first on scale-in, `helm upgrade` rolls beat with Recreate (never two beats, no entry fired
twice), keeps the replica count the HPA chose, and rolls workers while tasks run without losing
or repeating one.

Its own control plane, on other ports than the other cluster modules' (38443 and 39443;
CELERIAC_ROLLOUTS_APISERVER_PORT / CELERIAC_ROLLOUTS_ADAPTER_PORT). The pod network is one per
machine: never run this beside another `make e2e`. One release for the four tests (in order);
its values and the scenario helpers are tests/e2e/rollouts.py's: pool 1 per worker pod, at most
4 replicas, the scale-down shortened (20 s window), a grace period of 60 s (55 s for running
tasks), beat firing an entry every 2 s into a queue no worker consumes.

What is asserted comes from exact records (tests/e2e/rollouts.py): the API server's watch of
the pods and Deployments, and the task states the workers store (STARTED with the pod, then
SUCCESS) from the result backend's notifications. The duplicate rule: a task may run twice only
when it was requeued at a shutdown deadline; every task here is shorter than that deadline, so
each must start exactly once and succeed once.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celeriac.testing import wait_until
from tests.cluster.controlplane import ControlPlane, plane_with_node
from tests.cluster.test_autoscaling import LocalCluster
from tests.cluster.test_helm import LOCAL_VALUES, api_base_url, diagnostics
from tests.e2e import autoscaling, rollouts, scenario
from tests.e2e.scenario import COMPONENT_LABEL, Release
from tests.support import missing

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

NODE = "process-node"
NAMESPACE = "celeriac"
RELEASE = "rollout"
TIMEOUT = 180.0
APISERVER_PORT = 38443
ADAPTER_PORT = 39443
REDIS_PORT = 6379
# Beat: an entry every 2 s from the install on; the upgrade adds one every 3 s.
TICK = rollouts.beat_entry(2, marker=1)
TOCK = rollouts.beat_entry(3, marker=2)
# Scale-in: one short task on the first pod, two long ones, another short one: four pods, each
# with one task. The shorts end, the backlog drops to 2, and the HPA removes two pods (20 s
# window) while the longs still run for longer than the shutdown deadline (55 s): a busy pod
# removed would show as a task requeued there.
SHORT_SECONDS = 25.0
LONG_SECONDS = 100.0
# Held replicas: 3 tasks of 45 s keep the HPA at 3 through a worker upgrade (and 20 s more:
# the scale-down window), and end before the shutdown deadline of a pod the rollout removes.
HELD = 3
HELD_SECONDS = 45.0
# Worker rollout: 16 tasks of 6 s, the upgrade once some have started.
ROLLOUT_TASKS = 16
ROLLOUT_SECONDS = 6.0


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    if importlib.util.find_spec("helm_python") is None:
        missing("helm-python-sdk", "pip install -e '.[test,chart]'")
    with plane_with_node(
        tmp_path_factory.mktemp("rollouts"),
        NODE,
        apiserver_port=int(os.environ.get("CELERIAC_ROLLOUTS_APISERVER_PORT", APISERVER_PORT)),
        adapter_port=int(os.environ.get("CELERIAC_ROLLOUTS_ADAPTER_PORT", ADAPTER_PORT)),
    ) as plane:
        yield plane


def release_values(schedule: dict[str, Any], mark: str | None = None) -> dict[str, Any]:
    """The release's values; ``mark``: a worker environment variable, to change the workers'
    pod template (a worker setting changed by an upgrade)."""
    values = scenario.values({"redis": LOCAL_VALUES["redis"]}, rollouts.rollout_values(schedule))
    if mark is not None:
        values["workerDefaults"]["extraEnv"] = [{"name": "ROLLOUT_MARK", "value": mark}]
    return values


@pytest.fixture(scope="module")
def release(plane: ControlPlane) -> Iterator[Release]:
    release = Release(plane.kubeconfig, RELEASE, NAMESPACE)
    try:
        release.install(release_values({"tick": TICK}), timeout=int(TIMEOUT))
        scenario.wait_all_ready(plane, release, expected=5, timeout=TIMEOUT)
        autoscaling.wait_group_at(LocalCluster(plane), release, 1, timeout=TIMEOUT)
    except BaseException:
        print(diagnostics(plane))
        raise
    yield release
    release.uninstall(timeout=int(TIMEOUT))


def redis_client(plane: ControlPlane, release: Release) -> redis.Redis:
    """The release's Redis at its pod address, with the generated password."""
    (pod,) = release.pods(plane, f"{COMPONENT_LABEL}=redis")
    secret = release.one(plane, "secret", "redis")
    password = base64.b64decode(secret["data"]["redis-password"]).decode()
    return redis.Redis(
        host=pod["status"]["podIP"], port=REDIS_PORT, password=password, socket_timeout=10
    )


def wait_finished(plane: ControlPlane, release: Release, ids: list[str]) -> dict[str, Any]:
    """The tasks' final states, read through the API's current pod: an upgrade may have
    replaced the one the tasks were submitted to (when the chart's API settings changed)."""
    with scenario.api_client(api_base_url(plane, release), release.api_token(plane)) as api:
        return scenario.wait_finished(api, ids, timeout=TIMEOUT)


def test_scale_in_removes_idle_workers_before_busy_ones(
    plane: ControlPlane, release: Release
) -> None:
    cluster = LocalCluster(plane)
    client = redis_client(plane, release)
    events = rollouts.TaskEvents(client).start()
    try:
        with scenario.api_client(api_base_url(plane, release), release.api_token(plane)) as api:
            result = rollouts.run_scale_in(
                cluster,
                release,
                api,
                events,
                short_seconds=SHORT_SECONDS,
                long_seconds=LONG_SECONDS,
                timeout=TIMEOUT + LONG_SECONDS,
            )
            results = scenario.wait_finished(api, result.short_ids + result.long_ids, timeout=60)
        events.stop()
        print("worker pods, oldest first:", *result.report(), sep="\n  ")
        assert {r["state"] for r in results.values()} == {"SUCCESS"}, results
        # Four pods, and the HPA scaled in while the long tasks still ran, with busy and idle
        # pods in the group (normally each pod ran one task: two busy, two idle).
        assert result.peak_pods == 4, result.peak_pods
        assert result.deleted, "no scale-in while the long tasks ran"
        assert result.deleted[0].busy, result.deleted
        # Idle pods only were chosen, each with a pod-deletion-cost of 0 at that moment.
        assert not result.busy_chosen_over_idle(), result.busy_chosen_over_idle()
        assert not result.busy_deleted(), result.deleted
        assert {r.cost for r in result.deleted} == {0}, result.deleted
        # Nothing requeued at a shutdown deadline: every task started once, succeeded once.
        rollouts.check_each_ran_once(events, result.short_ids + result.long_ids)
    except BaseException:
        print(diagnostics(plane))
        raise
    finally:
        client.close()


def test_worker_upgrade_keeps_the_replica_count_the_hpa_chose(
    plane: ControlPlane, release: Release
) -> None:
    cluster = LocalCluster(plane)
    client = redis_client(plane, release)
    events = rollouts.TaskEvents(client).start()
    try:
        with scenario.api_client(api_base_url(plane, release), release.api_token(plane)) as api:
            ids = [
                scenario.submit(api, autoscaling.TASK, seconds=HELD_SECONDS) for _ in range(HELD)
            ]
            wait_until(
                lambda: autoscaling.spec_replicas(cluster, release) == HELD,
                timeout=TIMEOUT,
                interval=1,
                message=f"the HPA at {HELD} replicas",
            )
            deployment = release.worker_deployment(cluster)
            before = deployment["spec"]["template"]
            watch = rollouts.Watch(
                cluster,
                NAMESPACE,
                "deployments",
                f"{release.selector},{COMPONENT_LABEL}=worker",
            ).start()
            # A worker setting changes (an environment variable): the pods roll, the count
            # stays the HPA's (the chart renders no replicas field with autoscaling on).
            started = time.monotonic()
            release.upgrade(release_values({"tick": TICK}, mark="1"), timeout=int(TIMEOUT))
            upgraded = time.monotonic()
            recorded = watch.stop()
            after = release.worker_deployment(cluster)
            assert after["spec"]["template"] != before, "the upgrade did not change the pods"
            replicas = [
                (round(e.received - started, 1), e.object["spec"].get("replicas")) for e in recorded
            ]
            print(f"upgrade took {upgraded - started:.1f} s; Deployment replicas seen:", replicas)
            assert after["spec"]["replicas"] == HELD, after["spec"]
            assert all(count == HELD for _, count in replicas), replicas
        results = wait_finished(plane, release, ids)
        events.stop()
        assert {r["state"] for r in results.values()} == {"SUCCESS"}, results
        rollouts.check_each_ran_once(events, ids)
    except BaseException:
        print(diagnostics(plane))
        raise
    finally:
        client.close()


def test_worker_rollout_while_tasks_run_loses_and_repeats_nothing(
    plane: ControlPlane, release: Release
) -> None:
    cluster = LocalCluster(plane)
    client = redis_client(plane, release)
    events = rollouts.TaskEvents(client).start()
    pods = rollouts.Watch(
        cluster, NAMESPACE, "pods", f"{release.selector},{COMPONENT_LABEL}=worker"
    ).start()
    try:
        with scenario.api_client(api_base_url(plane, release), release.api_token(plane)) as api:
            ids = [
                scenario.submit(api, autoscaling.TASK, seconds=ROLLOUT_SECONDS)
                for _ in range(ROLLOUT_TASKS)
            ]
            wait_until(
                lambda: sum(1 for v in events.starts(ids).values() if v) >= 3,
                timeout=TIMEOUT,
                interval=0.5,
                message="tasks running",
            )
            release.upgrade(release_values({"tick": TICK}, mark="2"), timeout=int(TIMEOUT))
        results = wait_finished(plane, release, ids)
        recorded = pods.stop()
        events.stop()
        assert {r["state"] for r in results.values()} == {"SUCCESS"}, results
        starts = rollouts.check_each_ran_once(events, ids)
        # The rollout happened while tasks ran: some ran on pods of the old template, some on
        # the new one's.
        template = {e.name: e.object["metadata"]["labels"]["pod-template-hash"] for e in recorded}
        hashes = {template[started_by[0]] for started_by in starts.values()}
        print("templates that ran tasks:", hashes, "started by:", starts)
        assert len(hashes) == 2, (hashes, starts)
        drained = [
            (e.name, task)
            for e in rollouts.deletions(recorded)
            if (task := events.busy(e.received).get(e.name))
        ]
        print("pods removed while running a task (drained):", drained)
    except BaseException:
        print(diagnostics(plane))
        raise
    finally:
        client.close()


def test_beat_upgrade_recreates_one_beat_and_fires_each_entry_once(
    plane: ControlPlane, release: Release
) -> None:
    cluster = LocalCluster(plane)
    client = redis_client(plane, release)
    try:
        beat = release.one(cluster, "deployment", "beat")
        assert beat["spec"]["strategy"]["type"] == "Recreate", beat["spec"]["strategy"]
        # Beat has fired the first entry a few times already.
        wait_until(
            lambda: len(rollouts.firings(rollouts.beat_messages(client), 1)) >= 3,
            timeout=TIMEOUT,
            interval=0.5,
            message="beat firing",
        )
        watch = rollouts.Watch(
            cluster, NAMESPACE, "pods", f"{release.selector},{COMPONENT_LABEL}=beat"
        ).start()
        upgraded_at = time.time()
        # The schedule changes (an entry added), the workers' settings do not (the last mark).
        release.upgrade(
            release_values({"tick": TICK, "tock": TOCK}, mark="2"), timeout=int(TIMEOUT)
        )

        # The new beat runs the new schedule: both entries fire after the upgrade.
        def fired_after() -> bool:
            messages = rollouts.beat_messages(client)
            return all(
                len([t for t in rollouts.firings(messages, marker) if t > upgraded_at]) >= 3
                for marker in (1, 2)
            )

        wait_until(fired_after, timeout=TIMEOUT, interval=0.5, message="both entries firing")
        recorded = watch.stop()
        messages = rollouts.beat_messages(client)
        names = sorted({e.name for e in recorded})
        peak = rollouts.most_live_at_once(recorded)
        tick = rollouts.gaps(rollouts.firings(messages, 1))
        tock = rollouts.gaps(rollouts.firings(messages, 2))
        print("beat pods:", names, "most at once:", peak)
        print(
            "new beat pod Ready",
            rollouts.replacement_seconds(recorded),
            "s after the old one's deletion",
        )
        print("tick: longest gap", max(tick), "shortest", min(tick), "over", len(tick))
        print("tock gaps:", tock)
        # Recreate: the old pod replaced by a new one, never both alive at once.
        assert len(names) == 2, names
        assert peak[0] == 1, peak
        # No entry fired twice for one due time: consecutive firings at least most of an
        # interval apart (the new beat kept each entry's last run in Redis).
        assert min(tick) >= 2 * 0.75, tick
        assert min(tock) >= 3 * 0.75, tock
    except BaseException:
        print(diagnostics(plane))
        raise
    finally:
        client.close()
