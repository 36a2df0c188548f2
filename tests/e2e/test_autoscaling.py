"""The autoscaling burst on kind (issue 10, items 1 and 6): tests/scenarios/autoscaling.py's
``burst_scenario``, the one tests/cluster/test_autoscaling.py runs on the local control plane,
with the same values, tasks and assertions (replicas up to ceil(backlog / pool) capped by
maxReplicas, every task once by its result and by the workers' own counters, back to the
minimum). The timeline and figures go to the test's temporary directory (bench/results is
the local control plane's record: CELERIAC_RECORD_RESULTS is for that run).

What differs from the local control plane, on purpose and only here: KEDA installed from its
release manifest (the same version, 2.20.2) instead of built from source; kind's
controller-manager with the same default 15 s HPA sync; real pods from the image built from
this checkout, on two worker nodes; Redis on a claim of kind's default StorageClass; pods'
ports reached through `kubectl port-forward` (tests/e2e/kind.py) instead of their bridge
addresses; and a longer deadline for each step (pods pull and start slower than processes).

Runs under `make test-e2e` where Docker, kind and kubectl work (skipped with the reason
otherwise, failed under CELERIAC_REQUIRE_TOOLS=1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import TIMEOUT
from tests.e2e.kind import NAMESPACE, KindCluster
from tests.scenarios import autoscaling
from tests.scenarios.scenario import Release

pytestmark = pytest.mark.e2e

RELEASE = "burst"
# The local control plane's burst (tests/cluster/test_autoscaling.py): 72 x 2.5 s.
TASKS = 72
SECONDS = 2.5


def test_burst_scales_up_runs_each_task_once_and_scales_back(
    cluster: KindCluster, kind_layer: dict[str, Any], tmp_path: Path
) -> None:
    autoscaling.burst_scenario(
        cluster,
        Release(cluster.kubeconfig, RELEASE, NAMESPACE),
        kind_layer,
        tmp_path,
        tasks=TASKS,
        seconds=SECONDS,
        timeout=TIMEOUT,
    )
