"""Scale-in and rollouts on kind (issue 10, items 2 and 5): tests/scenarios/rollouts.py's four
scenarios, in order on one release, the ones tests/cluster/test_rollouts.py runs on the local
control plane, with the same values and assertions: idle workers removed first on scale-in,
`helm upgrade` keeping the HPA's replica count, a worker rollout while tasks run starting each
task once, a beat upgrade recreating one beat with no entry fired twice.

The records are the same: the API server's watch (`kubectl get --raw ...?watch=1`) and the
task states from the result backend's notifications, read here from Redis through `kubectl
port-forward` to its pod (tests/e2e/kind.py) instead of its bridge address. The pod-deletion
cost is set by the workers themselves through the API server, as on the local control plane.
What else differs is listed in tests/e2e/test_autoscaling.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import TIMEOUT
from tests.e2e.kind import NAMESPACE, KindCluster
from tests.scenarios import rollouts
from tests.scenarios.scenario import Release

pytestmark = pytest.mark.e2e

RELEASE = "rollout"


@pytest.fixture(scope="module")
def release(cluster: KindCluster, kind_layer: dict[str, Any]) -> Iterator[Release]:
    release = Release(cluster.kubeconfig, RELEASE, NAMESPACE)
    rollouts.install(cluster, release, kind_layer, timeout=TIMEOUT)
    yield release
    release.uninstall(timeout=int(TIMEOUT))


def test_scale_in_removes_idle_workers_before_busy_ones(
    cluster: KindCluster, release: Release
) -> None:
    rollouts.scale_in_scenario(cluster, release, timeout=TIMEOUT)


def test_worker_upgrade_keeps_the_replica_count_the_hpa_chose(
    cluster: KindCluster, kind_layer: dict[str, Any], release: Release
) -> None:
    rollouts.upgrade_keeps_replicas_scenario(cluster, release, kind_layer, timeout=TIMEOUT)


def test_worker_rollout_while_tasks_run_loses_and_repeats_nothing(
    cluster: KindCluster, kind_layer: dict[str, Any], release: Release
) -> None:
    rollouts.worker_rollout_scenario(cluster, release, kind_layer, timeout=TIMEOUT)


def test_beat_upgrade_recreates_one_beat_and_fires_each_entry_once(
    cluster: KindCluster, kind_layer: dict[str, Any], release: Release
) -> None:
    rollouts.beat_upgrade_scenario(cluster, release, kind_layer, timeout=TIMEOUT)
