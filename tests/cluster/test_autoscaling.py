"""Autoscaling on the local control plane (issue 10, items 1 and 6): the chart's own ScaledObject,
the real KEDA operator and metrics adapter, the controller-manager's HPA (its default 15 s sync:
controlplane.py does not set --horizontal-pod-autoscaler-sync-period) and a real node running the
project's images (tests/cluster/infra/node.py).

The burst is tests/scenarios/autoscaling.py's (``burst_scenario``, which kind's
tests/e2e/test_autoscaling.py runs too): ``TASKS`` celeriac.demo.sleep tasks of ``SECONDS``
through the API; the replicas rise to ceil(backlog / pool) capped by maxReplicas, every task
finishes once (its result read back, and the workers' own success counters summing to the task
count), and the group returns to its minimum through the HPA's scale-down behavior (shortened
for the test: tests/scenarios/autoscaling.py). The timeline and figures (autoscaling-burst.csv,
autoscaling-burst-figures.csv and autoscaling-burst.png) go to the test's temporary directory, or
to bench/results with CELERIAC_RECORD_RESULTS=1. No assertion on timing: the figures are
reported.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.conftest import TIMEOUT
from tests.cluster.infra.controlplane import ControlPlane
from tests.cluster.infra.local_cluster import LocalCluster
from tests.cluster.infra.node import Node
from tests.scenarios import autoscaling
from tests.scenarios.scenario import NAMESPACE, Release

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

RELEASE = "burst"
# 72 x 2.5 s = 180 task-seconds; 6 replicas of pool 1 drain them ideally in 30 s.
TASKS = 72
SECONDS = 2.5


def test_burst_scales_up_runs_each_task_once_and_scales_back(
    cluster: tuple[ControlPlane, Node], tmp_path: Path
) -> None:
    plane, node = cluster
    autoscaling.burst_scenario(
        LocalCluster(plane, NAMESPACE, TIMEOUT),
        Release(plane.kubeconfig, RELEASE, NAMESPACE),
        node.chart_values(RELEASE),
        tmp_path,
        tasks=TASKS,
        seconds=SECONDS,
        timeout=TIMEOUT,
    )
