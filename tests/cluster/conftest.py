"""The `cluster` tests need root (the bridge, network and mount namespaces, cgroups). Without it
they are skipped with the reason, or fail under CELERIAC_REQUIRE_TOOLS=1 (CI), never skipped
silently there. ``cluster`` and ``plane``: a module's own control plane and real node."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.cluster.infra.controlplane import ADAPTER_PORT, APISERVER_PORT, ControlPlane
from tests.cluster.infra.node import Node, module_cluster
from tests.support import missing


@pytest.fixture(autouse=True)
def _root_for_cluster_tests(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("cluster") is not None and os.geteuid() != 0:
        missing("root", "run `make e2e` as root: the bridge, namespaces and cgroups need it")


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ControlPlane, Node]]:
    """The module's own control plane and real node, on the module's ``APISERVER_PORT`` and
    ``ADAPTER_PORT`` (else the defaults), overridable through ``CELERIAC_<PORTS_ENV>_*``."""
    module = request.module
    with module_cluster(
        tmp_path_factory.mktemp(module.__name__.rsplit(".", 1)[-1]),
        getattr(module, "PORTS_ENV", "CLUSTER"),
        getattr(module, "APISERVER_PORT", APISERVER_PORT),
        getattr(module, "ADAPTER_PORT", ADAPTER_PORT),
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def plane(cluster: tuple[ControlPlane, Node]) -> ControlPlane:
    return cluster[0]
