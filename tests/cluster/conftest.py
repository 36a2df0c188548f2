"""The `cluster` tests need root (the bridge, network and mount namespaces, cgroups). Without it
they are skipped with the reason, or fail under CELERIAC_REQUIRE_TOOLS=1 (CI), never skipped
silently there. ``cluster`` and ``plane``: a module's own control plane and real node."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.infra.controlplane import ADAPTER_PORT, APISERVER_PORT, ControlPlane
from tests.cluster.infra.node import Node, module_cluster
from tests.support import missing

# How long one step of a scenario may take.
TIMEOUT = 180.0
# One worker replica, so that the pool checked is the only one (Redis on a claim and the
# images: Node.chart_values).
LOCAL_VALUES: dict[str, Any] = {
    "workerDefaults": {"autoscaling": {"minReplicas": 1, "maxReplicas": 1}},
}
# Modules with a control plane on ports of their own: module -> the CELERIAC_<prefix>_APISERVER_PORT
# / _ADAPTER_PORT prefix and the default ports. Others use CELERIAC_CLUSTER_* and 6443/7443.
CONTROL_PLANE_PORTS = {
    "test_autoscaling_recovery": ("RECOVERY", 36443, 37443),
    "test_rollouts": ("ROLLOUTS", 38443, 39443),
    "test_redis_sentinel": ("SENTINEL", 40443, 41443),
}


@pytest.fixture(autouse=True)
def _root_for_cluster_tests(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("cluster") is not None and os.geteuid() != 0:
        missing("root", "run `make e2e` as root: the bridge, namespaces and cgroups need it")


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ControlPlane, Node]]:
    """The module's own control plane and real node, on the module's ports in
    ``CONTROL_PLANE_PORTS`` (else the defaults), overridable through ``CELERIAC_<prefix>_*``."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    prefix, apiserver_port, adapter_port = CONTROL_PLANE_PORTS.get(
        name, ("CLUSTER", APISERVER_PORT, ADAPTER_PORT)
    )
    with module_cluster(
        tmp_path_factory.mktemp(name), prefix, apiserver_port, adapter_port
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def plane(cluster: tuple[ControlPlane, Node]) -> ControlPlane:
    return cluster[0]
