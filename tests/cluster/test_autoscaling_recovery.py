"""Autoscaling on the local control plane (issue 10, items 3 and 4): scale to zero and back,
KEDA's fallback while the exporter is down, and a Redis pod deleted with tasks queued.

Its own control plane, on other ports than tests/cluster/test_autoscaling.py's (36443 and 37443;
CELERIAC_RECOVERY_APISERVER_PORT / CELERIAC_RECOVERY_ADAPTER_PORT), and a real node. The test
network (bridge celeriac0, the node at 10.231.0.10, pods in 10.233.0.0/24) is one per machine: never
run this beside another `make e2e`. The scenarios and their assertions are
tests/scenarios/recovery.py's (kind's tests/e2e/test_autoscaling_recovery.py runs them too); the
time from a submit to its result with the group at zero is printed and reported in the README.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.conftest import TIMEOUT
from tests.cluster.infra.controlplane import ControlPlane
from tests.cluster.infra.local_cluster import LocalCluster
from tests.cluster.infra.node import Node
from tests.scenarios import recovery
from tests.scenarios.scenario import NAMESPACE, Release

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture(scope="module")
def layer(cluster: tuple[ControlPlane, Node]) -> dict[str, Any]:
    """The cluster's values: the project's images on the node, Redis on a local volume."""
    return cluster[1].chart_values("zero", "held")


def test_scale_to_zero_and_back(plane: ControlPlane, layer: dict[str, Any]) -> None:
    recovery.zero_and_back_scenario(
        LocalCluster(plane, NAMESPACE, TIMEOUT),
        Release(plane.kubeconfig, "zero", NAMESPACE),
        layer,
        timeout=TIMEOUT,
    )


@pytest.fixture(scope="module")
def held(plane: ControlPlane, layer: dict[str, Any]) -> Iterator[Release]:
    """One release for the exporter and Redis tests (tests/scenarios/recovery.py install_held)."""
    release = Release(plane.kubeconfig, "held", NAMESPACE)
    recovery.install_held(LocalCluster(plane, NAMESPACE, TIMEOUT), release, layer, timeout=TIMEOUT)
    yield release
    release.uninstall(timeout=int(TIMEOUT))


def test_exporter_down_fallback_holds_replicas_then_scaling_resumes(
    plane: ControlPlane, held: Release
) -> None:
    recovery.exporter_down_scenario(LocalCluster(plane, NAMESPACE, TIMEOUT), held, timeout=TIMEOUT)


def test_redis_pod_deleted_keeps_queued_tasks_and_everything_recovers(
    plane: ControlPlane, held: Release
) -> None:
    recovery.redis_deleted_scenario(LocalCluster(plane, NAMESPACE, TIMEOUT), held, timeout=TIMEOUT)
