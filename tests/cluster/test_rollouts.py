"""Scale-in and rollouts on the local control plane (issue 10, items 2 and 5): idle workers go
first on scale-in, `helm upgrade` rolls beat with Recreate (never two beats, no entry fired
twice), keeps the replica count the HPA chose, and rolls workers while tasks run without losing
or repeating one.

Its own control plane, on other ports than the other cluster modules' (38443 and 39443;
CELERIAC_ROLLOUTS_APISERVER_PORT / CELERIAC_ROLLOUTS_ADAPTER_PORT) and a real node. The test
network is one per machine: never run this beside another `make e2e`. One release for the four
tests (in order); its values, the scenarios and their assertions are tests/scenarios/rollouts.py's
(kind's tests/e2e/test_rollouts.py runs them too): pool 1 per worker pod, at most 4 replicas,
the scale-down shortened (20 s window), a grace period of 60 s (55 s for running tasks), beat
firing an entry every 2 s into a queue no worker consumes.

What is asserted comes from exact records (tests/scenarios/rollouts.py): the API server's watch of
the pods and Deployments, and the task states the workers store (STARTED with the pod, then
SUCCESS) from the result backend's notifications, read from the Redis pod's address. The
duplicate rule: a task may run twice only when it was requeued at a shutdown deadline; every
task here is shorter than that deadline, so each must start exactly once and succeed once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.conftest import TIMEOUT
from tests.cluster.infra.controlplane import ControlPlane
from tests.cluster.infra.local_cluster import LocalCluster
from tests.cluster.infra.node import Node
from tests.scenarios import rollouts
from tests.scenarios.scenario import NAMESPACE, Release

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

RELEASE = "rollout"


@pytest.fixture(scope="module")
def layer(cluster: tuple[ControlPlane, Node]) -> dict[str, Any]:
    """The cluster's values: the project's images on the node, Redis on a local volume."""
    return cluster[1].chart_values(RELEASE)


@pytest.fixture(scope="module")
def release(plane: ControlPlane, layer: dict[str, Any]) -> Iterator[Release]:
    release = Release(plane.kubeconfig, RELEASE, NAMESPACE)
    rollouts.install(LocalCluster(plane, NAMESPACE, TIMEOUT), release, layer, timeout=TIMEOUT)
    yield release
    release.uninstall(timeout=int(TIMEOUT))


def test_scale_in_removes_idle_workers_before_busy_ones(
    plane: ControlPlane, release: Release
) -> None:
    rollouts.scale_in_scenario(LocalCluster(plane, NAMESPACE, TIMEOUT), release, timeout=TIMEOUT)


def test_worker_upgrade_keeps_the_replica_count_the_hpa_chose(
    plane: ControlPlane, layer: dict[str, Any], release: Release
) -> None:
    rollouts.upgrade_keeps_replicas_scenario(
        LocalCluster(plane, NAMESPACE, TIMEOUT), release, layer, timeout=TIMEOUT
    )


def test_worker_rollout_while_tasks_run_loses_and_repeats_nothing(
    plane: ControlPlane, layer: dict[str, Any], release: Release
) -> None:
    rollouts.worker_rollout_scenario(
        LocalCluster(plane, NAMESPACE, TIMEOUT), release, layer, timeout=TIMEOUT
    )


def test_beat_upgrade_recreates_one_beat_and_fires_each_entry_once(
    plane: ControlPlane, layer: dict[str, Any], release: Release
) -> None:
    rollouts.beat_upgrade_scenario(
        LocalCluster(plane, NAMESPACE, TIMEOUT), release, layer, timeout=TIMEOUT
    )
