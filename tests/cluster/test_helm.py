"""`helm install` of charts/celeriac on the local cluster (issue 9, item 3; issue 17): the real
Helm engine (helm-python-sdk) against the real kube-apiserver (admission and validation applied),
KEDA's operator and adapter, and a real node (kubelet, containerd, runc, CNI, kube-proxy,
CoreDNS: tests/cluster/infra/node.py) running the project's images. The scenario is
tests/scenarios/scenario.py's, shared with the kind test.

Values: k8s/values-dev.yaml and tests/scenarios/values.yaml (KEDA on) as on kind, plus this
cluster's layer: the images loaded into the node, Redis on a claim bound to a local
PersistentVolume, and one worker replica, so that the pool checked is the only one. NetworkPolicies
are rendered and admitted (checked below) but not enforced: the node's CNI bridge plugin does not
enforce them.

One test, in order, since each step needs the one before: install, every pod Ready, KEDA's
ScaledObject Ready and its HPA reading the exporter's backlog (the operator reaching the
exporter's Service through the node's DNS and kube-proxy), `helm test`, a task through the API
Service run by the worker pod, the pool equal to the CPU limit (the container's own process
table), `helm upgrade` of the worker's CPU limit rolling the worker alone, the worker's
connections to Redis made half-open and tasks still run, `helm uninstall` leaving nothing but
the Redis claim the chart keeps on purpose.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest

from celeriac.testing import wait_until
from tests.chart.render import deep_merge
from tests.cluster.conftest import LOCAL_VALUES, TIMEOUT
from tests.cluster.infra.controlplane import ControlPlane
from tests.cluster.infra.local_cluster import api_base_url, diagnostics, tasks_succeeded
from tests.cluster.infra.node import Node
from tests.scenarios import scenario
from tests.scenarios.scenario import COMPONENT_LABEL, NAMESPACE, Release, condition, kubectl_json

pytestmark = [
    pytest.mark.cluster,
    # Helm's and kubernetes' clients hold TLS connections that the garbage collector may close.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

RELEASE = "smoke"
COMPONENTS = {"redis", "api", "beat", "exporter", "worker"}
# The upgrade: the worker's CPU limit 1 -> 2 (the node's cores: the worker caps its pool at the
# CPUs it may use). A pool of 1 before differs from Celery's own default (one per core).
UPGRADE_VALUES: dict[str, Any] = {"workers": {"default": {"resources": {"limits": {"cpu": "2"}}}}}


def by_component(pods: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {pod["metadata"]["labels"][COMPONENT_LABEL]: pod for pod in pods}
    assert set(found) == COMPONENTS, sorted(found)
    assert len(pods) == len(COMPONENTS), [pod["metadata"]["name"] for pod in pods]
    return found


def worker_pool(plane: ControlPlane, worker: dict[str, Any]) -> list[int]:
    """The worker container's pool processes, from its own process table (kubectl exec)."""
    return scenario.pool_processes(scenario.process_table(plane, worker))


def wait_pool(plane: ControlPlane, worker: dict[str, Any], size: int) -> list[int]:
    """Until the pool has ``size`` processes (forked once the worker starts consuming)."""

    def pool() -> list[int] | None:
        found = worker_pool(plane, worker)
        return found if len(found) == size else None

    return wait_until(pool, timeout=60, message=f"the worker's pool of {size}")


def run_task_on_worker(
    plane: ControlPlane, release: Release, worker: dict[str, Any], seconds: float
) -> None:
    """A task through the API Service, its result read back, and counted by the worker pod
    (the group's only one) as its first success."""
    task = "celeriac.demo.sleep"
    assert tasks_succeeded(worker, task) == 0
    token = release.api_token(plane)
    with scenario.api_client(api_base_url(plane, release, timeout=TIMEOUT), token) as api:
        status = scenario.run_task(api, task, timeout=TIMEOUT, seconds=seconds)
    assert status["state"] == "SUCCESS", status
    assert status["result"] == seconds
    wait_until(
        lambda: tasks_succeeded(worker, task) == 1,
        timeout=30,
        message=f"the worker pod counting {task} once",
    )


def cut_connections(node: Node, pod: dict[str, Any], port: int) -> int:
    """Make each established TCP connection of ``pod`` to ``port`` half-open, as an expired NAT
    or conntrack entry does: its packets are dropped both ways, by port pair, inside the pod's
    own network namespace; new connections pass. Returns how many were cut."""
    pid = min(node.pod_pids(pod["metadata"]["uid"]))
    in_pod = ["nsenter", f"--net=/proc/{pid}/ns/net", "--"]
    listing = subprocess.run(
        [*in_pod, "ss", "-Htn", "state", "established"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cut = 0
    for line in listing.splitlines():
        local, peer = line.split()[2:4]
        local_port = local.rsplit(":", 1)[1]
        peer_address, peer_port = peer.rsplit(":", 1)
        if int(peer_port) != port:
            continue
        for rule in (
            ["OUTPUT", "--sport", local_port, "-d", peer_address, "--dport", peer_port],
            ["INPUT", "-s", peer_address, "--sport", peer_port, "--dport", local_port],
        ):
            iptables = [*in_pod, "iptables", "-I", rule[0], "-p", "tcp"]
            subprocess.run([*iptables, *rule[1:], "-j", "DROP"], check=True)
        cut += 1
    return cut


def test_install_test_upgrade_uninstall(cluster: tuple[ControlPlane, Node]) -> None:
    plane, node = cluster
    release = Release(plane.kubeconfig, RELEASE, NAMESPACE)
    layer = deep_merge(node.chart_values(RELEASE), LOCAL_VALUES)
    values = scenario.values(layer)
    try:
        release.install(values, timeout=int(TIMEOUT))

        # Every pod of the release Ready, one per component.
        pods = by_component(scenario.wait_all_ready(plane, release, expected=5, timeout=TIMEOUT))
        worker = pods["worker"]
        # Admitted, not enforced (the CNI bridge plugin does not): the API reached from the host
        # below would be refused by the default-deny policy on a cluster that enforced it.
        policies = kubectl_json(plane, "get", "networkpolicy", "-n", NAMESPACE)["items"]
        assert len(policies) >= 5
        claim = kubectl_json(plane, "get", "pvc", "-n", NAMESPACE, "-l", release.selector)
        assert [c["status"]["phase"] for c in claim["items"]] == ["Bound"]

        # KEDA: the ScaledObject Ready, and the HPA it made reads the exporter's backlog
        # through the external metrics API (ScalingActive only once a metric was read).
        scaled = release.one(plane, "scaledobject", "worker")
        wait_until(
            lambda: condition(release.one(plane, "scaledobject", "worker"), "Ready") == "True",
            timeout=TIMEOUT,
            message="the ScaledObject Ready",
        )
        hpa_name = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["name"]
        wait_until(
            lambda: (
                condition(
                    kubectl_json(plane, "get", "hpa", hpa_name, "-n", NAMESPACE), "ScalingActive"
                )
                == "True"
            ),
            timeout=TIMEOUT,
            message="KEDA's HPA reading the external metric",
        )

        # `helm test`: the test pod ran (the hook's last run) and passed.
        release.test(timeout=int(TIMEOUT))
        (hook,) = release.hooks()
        assert hook["last_run"]["phase"] == "Succeeded", hook["last_run"]

        run_task_on_worker(plane, release, worker, 0.2)
        limit = worker["spec"]["containers"][0]["resources"]["limits"]["cpu"]
        assert limit == "1"
        wait_pool(plane, worker, 1)

        # `helm upgrade`: the worker's CPU limit changes, so the worker rolls and nothing else.
        before = {c: p["metadata"]["uid"] for c, p in pods.items()}
        token = release.api_token(plane)
        release.upgrade(scenario.values(layer, UPGRADE_VALUES), timeout=int(TIMEOUT))
        pods = by_component(scenario.wait_all_ready(plane, release, expected=5, timeout=TIMEOUT))
        after = {c: p["metadata"]["uid"] for c, p in pods.items()}
        assert {c for c in COMPONENTS if before[c] != after[c]} == {"worker"}
        worker = pods["worker"]
        assert worker["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "2"
        wait_pool(plane, worker, 2)
        assert release.api_token(plane) == token  # the generated Secret kept across upgrades
        run_task_on_worker(plane, release, worker, 0.1)

        # Every connection of the worker pod to Redis half-open (issue 16): the worker takes
        # work again on new connections (or liveness restarts it), and nothing is lost.
        redis_port = scenario.container_port(pods["redis"], "redis")
        assert cut_connections(node, worker, redis_port) >= 2  # at least the fetch and the fanout
        cut_at = time.monotonic()
        with scenario.api_client(api_base_url(plane, release, timeout=TIMEOUT), token) as api:
            ids = [scenario.submit(api, "celeriac.demo.add", x=n, y=1) for n in range(10)]
            finished = scenario.wait_finished(api, ids, timeout=TIMEOUT)
        assert [finished[i]["result"] for i in ids] == [n + 1 for n in range(10)]
        restarts = release.one(plane, "pod", "worker")["status"]["containerStatuses"][0]
        print(
            f"half-open: 10 tasks done {time.monotonic() - cut_at:.1f} s after the cut, "
            f"worker restarts {restarts['restartCount']}"
        )
    except BaseException:
        print(diagnostics(plane, NAMESPACE))
        raise

    # `helm uninstall`: no pods, nothing of the release but the Redis claim, which the chart
    # keeps on purpose (charts/celeriac/README.md: delete it by its label when unwanted).
    release.uninstall(timeout=int(TIMEOUT))
    wait_until(
        lambda: not kubectl_json(plane, "get", "pods", "-n", NAMESPACE)["items"],
        timeout=TIMEOUT,
        message="every pod of the namespace gone",
    )
    assert namespace_objects(plane) == [f"PersistentVolumeClaim/data-{RELEASE}-celeriac-redis-0"]
    plane.kubectl("delete", "pvc", "-n", NAMESPACE, "-l", release.selector, "--wait=true")
    assert namespace_objects(plane) == []


# Made by Kubernetes in every namespace, not by the release.
NAMESPACE_DEFAULTS = {"ServiceAccount/default", "ConfigMap/kube-root-ca.crt"}


def namespace_objects(plane: ControlPlane) -> list[str]:
    """Every object left in the namespace (events and Kubernetes' own defaults aside)."""
    kinds = plane.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name").split()
    kinds = [k for k in kinds if k not in ("events", "events.events.k8s.io")]
    listed = kubectl_json(plane, "get", ",".join(kinds), "-n", NAMESPACE)["items"]
    names = {f"{obj['kind']}/{obj['metadata']['name']}" for obj in listed}
    return sorted(names - NAMESPACE_DEFAULTS)
