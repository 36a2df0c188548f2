"""Scale to zero and back, KEDA's fallback while the exporter is down, and a Redis pod deleted
with tasks queued, on kind (issue 10, items 3 and 4): tests/scenarios/recovery.py's scenarios, the
ones tests/cluster/test_autoscaling_recovery.py runs on the local control plane, with the same
values and assertions. What differs is listed in tests/e2e/test_autoscaling.py (KEDA from its
release manifest, real pods, ports through `kubectl port-forward`, longer deadlines); the
deleted Redis pod comes back on the same claim (kind's local-path volume, on the node it was
bound to).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import TIMEOUT
from tests.e2e.kind import NAMESPACE, KindCluster
from tests.scenarios import recovery
from tests.scenarios.scenario import Release

pytestmark = pytest.mark.e2e


def test_scale_to_zero_and_back(cluster: KindCluster, kind_layer: dict[str, Any]) -> None:
    recovery.zero_and_back_scenario(
        cluster, Release(cluster.kubeconfig, "zero", NAMESPACE), kind_layer, timeout=TIMEOUT
    )


@pytest.fixture(scope="module")
def held(cluster: KindCluster, kind_layer: dict[str, Any]) -> Iterator[Release]:
    """One release for the exporter and Redis tests (tests/scenarios/recovery.py install_held)."""
    release = Release(cluster.kubeconfig, "held", NAMESPACE)
    recovery.install_held(cluster, release, kind_layer, timeout=TIMEOUT)
    yield release
    release.uninstall(timeout=int(TIMEOUT))


def test_exporter_down_fallback_holds_replicas_then_scaling_resumes(
    cluster: KindCluster, held: Release
) -> None:
    recovery.exporter_down_scenario(cluster, held, timeout=TIMEOUT)


def test_redis_pod_deleted_keeps_queued_tasks_and_everything_recovers(
    cluster: KindCluster, held: Release
) -> None:
    recovery.redis_deleted_scenario(cluster, held, timeout=TIMEOUT)
