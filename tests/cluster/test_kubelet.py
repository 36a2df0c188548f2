"""The process kubelet against the local control plane (issue 9, item 2): a Node that turns
Ready, a Deployment of redis-server and a pod of `celeriac exporter` that turn Ready and reach
each other by Service name, the EndpointSlice, a liveness failure restarting a container, and
deletion with grace (SIGTERM, then SIGKILL at the grace period, then the pod object removed)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from celeriac.testing import wait_until
from tests.cluster import netns
from tests.cluster.controlplane import ControlPlane
from tests.cluster.kubelet import Kubelet

pytestmark = [
    pytest.mark.cluster,
    # The agent's watch threads hold TLS connections that the garbage collector may close.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

NS = "kubelet-test"
NODE = "process-node"
TIMEOUT = 90.0
SECURE = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}
POD_COMMON = {
    "automountServiceAccountToken": False,
    "enableServiceLinks": False,
    "securityContext": {"fsGroup": 10001},
}


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    state = tmp_path_factory.mktemp("kubelet")
    with ControlPlane(state, keda=False) as plane:
        kubelet = Kubelet(str(plane.kubeconfig), NODE, plane.state_dir).start()
        try:
            plane.kubectl("create", "namespace", NS)
            wait_until(  # pods need it; the service account controller makes it
                lambda: plane.kubectl("-n", NS, "get", "serviceaccount", "default"),
                timeout=TIMEOUT,
                message="the namespace's default ServiceAccount",
            )
            yield plane
        finally:
            kubelet.stop()


def get(plane: ControlPlane, *args: str) -> Any:
    return json.loads(plane.kubectl("-n", NS, "get", *args, "-o", "json"))


def apply(plane: ControlPlane, *objects: dict[str, Any]) -> None:
    for obj in objects:
        obj.setdefault("metadata", {})["namespace"] = NS
    plane.apply(yaml.safe_dump_all(objects))


def condition(obj: dict[str, Any], kind: str) -> str:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item["type"] == kind:
            return str(item["status"])
    return ""


def ready_pod(plane: ControlPlane, selector: str) -> dict[str, Any] | None:
    for pod in get(plane, "pods", "-l", selector)["items"]:
        if condition(pod, "Ready") == "True" and not pod["metadata"].get("deletionTimestamp"):
            return pod  # type: ignore[no-any-return]
    return None


def container(name: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": f"{name}:test",
        "command": command,
        "securityContext": SECURE,
        **extra,
    }


def test_node_is_ready_with_a_lease(plane: ControlPlane) -> None:
    node = wait_until(
        lambda: (
            (n := json.loads(plane.kubectl("get", "node", NODE, "-o", "json")))
            and condition(n, "Ready") == "True"
            and n
        ),
        timeout=TIMEOUT,
        message="the Node Ready",
    )
    assert node["status"]["addresses"][0] == {"type": "InternalIP", "address": "10.231.0.1"}
    assert node["status"]["allocatable"]["cpu"] == "2"
    lease = json.loads(plane.kubectl("-n", "kube-node-lease", "get", "lease", NODE, "-o", "json"))
    assert lease["spec"]["holderIdentity"] == NODE


def test_redis_and_exporter_ready_and_reachable_by_service_name(plane: ControlPlane) -> None:
    ping = ["sh", "-c", "redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG"]
    redis = container(
        "redis",
        ["redis-server", "--port", "6379", "--dir", "/data", "--save", ""],
        ports=[{"name": "redis", "containerPort": 6379}],
        resources={"limits": {"cpu": "500m", "memory": "256Mi"}},
        readinessProbe={"exec": {"command": ping}, "periodSeconds": 1},
        volumeMounts=[{"name": "data", "mountPath": "/data"}],
    )
    labels = {"app": "redis"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "redis"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    **POD_COMMON,
                    "containers": [redis],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "redis"},
        "spec": {
            "selector": labels,
            "ports": [{"name": "redis", "port": 6379, "targetPort": "redis"}],
        },
    }
    exporter = container(
        "exporter",
        ["celeriac", "exporter"],
        env=[
            {"name": "CELERIAC_BROKER_URL", "value": f"redis://redis.{NS}:6379/0"},
            {"name": "CELERIAC_EXPORTER_HOST", "value": "0.0.0.0"},
            {"name": "CELERIAC_EXPORTER_PORT", "value": "9540"},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        ],
        ports=[{"name": "metrics", "containerPort": 9540}],
        resources={"limits": {"cpu": "300m", "memory": "256Mi"}},
        readinessProbe={"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 2},
        volumeMounts=[{"name": "tmp", "mountPath": "/tmp"}],
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "exporter", "labels": {"app": "exporter"}},
        "spec": {
            **POD_COMMON,
            "containers": [exporter],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }
    apply(plane, deployment, service, pod)

    redis_pod = wait_until(
        lambda: ready_pod(plane, "app=redis"), timeout=TIMEOUT, message="redis Ready"
    )
    address = redis_pod["status"]["podIP"]
    assert address.startswith("10.231.1.")

    def slice_ready() -> bool:
        slices = get(plane, "endpointslices", "-l", "kubernetes.io/service-name=redis")["items"]
        return any(
            e["addresses"] == [address] and e["conditions"]["ready"]
            for s in slices
            for e in s.get("endpoints") or []
        )

    wait_until(slice_ready, timeout=TIMEOUT, message="the EndpointSlice with redis ready")
    hosts = plane.state_dir / "hosts"
    wait_until(lambda: f"{address}\tredis.{NS}\n" in hosts.read_text(), message="hosts entry")

    exporter_pod = wait_until(
        lambda: ready_pod(plane, "app=exporter"), timeout=TIMEOUT, message="exporter Ready"
    )
    url = f"http://{exporter_pod['status']['podIP']}:9540/metrics"
    wait_until(
        lambda: "celeriac_redis_up 1" in urllib.request.urlopen(url, timeout=5).read().decode(),
        timeout=TIMEOUT,
        message="the exporter reaching redis by its Service name",
    )


def test_liveness_failure_restarts_the_container(plane: ControlPlane) -> None:
    probe = {
        "exec": {"command": ["sh", "-c", "test ! -e /state/unhealthy"]},
        "periodSeconds": 1,
        "failureThreshold": 2,
    }
    worker = container(
        "sleeper",
        ["sh", "-c", "while true; do sleep 0.5; done"],
        livenessProbe=probe,
        volumeMounts=[{"name": "state", "mountPath": "/state"}],
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleeper", "labels": {"app": "sleeper"}},
        "spec": {
            **POD_COMMON,
            "containers": [worker],
            "volumes": [{"name": "state", "emptyDir": {}}],
        },
    }
    apply(plane, pod)
    running = wait_until(lambda: ready_pod(plane, "app=sleeper"), timeout=TIMEOUT, message="Ready")
    state = plane.state_dir / "pods" / running["metadata"]["uid"] / "volumes" / "state"
    (state / "unhealthy").touch()

    def restarted() -> dict[str, Any] | None:
        status = get(plane, "pod", "sleeper")["status"]["containerStatuses"][0]
        return status if status["restartCount"] >= 1 else None

    status = wait_until(restarted, timeout=TIMEOUT, message="a restart after the liveness failure")
    (state / "unhealthy").unlink()
    assert "terminated" in status["lastState"]
    events = plane.kubectl(
        "-n", NS, "get", "events", "--field-selector", "involvedObject.name=sleeper"
    )
    assert "Unhealthy" in events
    assert "failed liveness probe, will be restarted" in events
    wait_until(lambda: ready_pod(plane, "app=sleeper"), timeout=TIMEOUT, message="Ready again")


@pytest.mark.parametrize(
    ("trap", "grace", "least", "most"), [("exit 0", 20, 0.0, 15.0), ("", 3, 3.0, 15.0)]
)
def test_deletion_with_grace(
    plane: ControlPlane, trap: str, grace: int, least: float, most: float
) -> None:
    """SIGTERM ends a pod that handles it at once; one that ignores it is killed at the grace
    period; then the pod object is gone and so are its netns and cgroups."""
    name = f"graceful-{grace}"
    script = f"trap '{trap}' TERM; while true; do sleep 0.2; done"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            **POD_COMMON,
            "terminationGracePeriodSeconds": grace,
            "containers": [container("main", ["sh", "-c", script])],
        },
    }
    apply(plane, pod)
    running = wait_until(lambda: ready_pod(plane, f"app={name}"), timeout=TIMEOUT, message="Ready")
    uid = running["metadata"]["uid"]
    started = time.monotonic()
    plane.kubectl("-n", NS, "delete", "pod", name, "--wait=false")
    wait_until(
        lambda: not get(plane, "pods", "-l", f"app={name}")["items"],
        timeout=TIMEOUT,
        message="the pod object removed",
    )
    elapsed = time.monotonic() - started
    assert least <= elapsed <= most
    netns_name, _ = netns.names(uid)
    assert not Path(f"/run/netns/{netns_name}").exists()
    assert not any(d.exists() for d in netns.cgroup_dirs(f"{uid}-main"))
