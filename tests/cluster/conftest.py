"""The `cluster` tests need root (the bridge, network and mount namespaces, cgroups). Without it
they are skipped with the reason, or fail under CELERIAC_REQUIRE_TOOLS=1 (CI), never skipped
silently there."""

from __future__ import annotations

import os

import pytest

from tests.support import missing


@pytest.fixture(autouse=True)
def _root_for_cluster_tests(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("cluster") is not None and os.geteuid() != 0:
        missing("root", "run `make e2e` as root: the bridge, namespaces and cgroups need it")
