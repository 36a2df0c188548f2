"""The local cluster as the tests and the shared scenarios reach it from the host: pods at their
addresses on the bridge (the pod range is routed to the node), the API through its Service's
ready endpoint, and what to print when a step fails."""

from __future__ import annotations

import base64

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from celeriac.testing import wait_until
from celeriac.worker.metrics import TASKS_SUCCEEDED
from celeriac.worker.settings import DEFAULT_METRICS_PORT as WORKER_METRICS_PORT
from tests.cluster.infra.controlplane import ControlPlane
from tests.scenarios.scenario import COMPONENT_LABEL, Obj, Release, container_port, kubectl_json


class LocalCluster:
    """The control plane, with pods reached at their bridge addresses from the host (the
    scenarios' cluster: tests/scenarios/autoscaling.py ScenarioCluster, rollouts.py
    RolloutCluster). ``namespace`` is what ``diagnostics`` lists; ``timeout`` bounds the wait
    for the API's endpoint."""

    def __init__(self, plane: ControlPlane, namespace: str, timeout: float) -> None:
        self.plane = plane
        self.namespace = namespace
        self.timeout = timeout

    def kubectl(self, *args: str) -> str:
        return self.plane.kubectl(*args)

    def kubectl_command(self, *args: str) -> list[str]:
        return [self.plane.kubectl_binary, "--kubeconfig", str(self.plane.kubeconfig), *args]

    def http_get(self, pod: Obj, port: int, path: str) -> str:
        response = httpx.get(f"http://{pod['status']['podIP']}:{port}{path}", timeout=2)
        response.raise_for_status()
        return response.text

    def api_url(self, release: Release) -> str:
        return api_base_url(self.plane, release, timeout=self.timeout)

    def redis_client(self, release: Release) -> redis.Redis:
        """The release's Redis at its pod address, with the generated password."""
        (pod,) = release.pods(self, f"{COMPONENT_LABEL}=redis")
        secret = release.one(self, "secret", "redis")
        password = base64.b64decode(secret["data"]["redis-password"]).decode()
        return redis.Redis(
            host=pod["status"]["podIP"],
            port=container_port(pod, "redis"),
            password=password,
            socket_timeout=10,
        )

    def diagnostics(self) -> str:
        return diagnostics(self.plane, self.namespace)


def diagnostics(plane: ControlPlane, namespace: str) -> str:
    sections = []
    for args in (
        ["get", "all,scaledobject,hpa,pvc", "-n", namespace, "-o", "wide"],
        ["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"],
    ):
        sections.append(f"$ kubectl {' '.join(args)}\n{plane.kubectl(*args, check=False)}")
    return "\n".join(sections)


def api_base_url(plane: ControlPlane, release: Release, *, timeout: float) -> str:
    """The API Service's ready endpoint, from its EndpointSlice: a pod address on the bridge."""
    service = release.one(plane, "service", "api")["metadata"]["name"]

    def endpoint() -> str | None:
        slices = kubectl_json(
            plane,
            "get",
            "endpointslices",
            "-n",
            release.namespace,
            "-l",
            f"kubernetes.io/service-name={service}",
        )["items"]
        for item in slices:
            port = next(p["port"] for p in item["ports"] if p["name"] == "http")
            for ready in item.get("endpoints") or []:
                if ready["conditions"].get("ready"):
                    return f"http://{ready['addresses'][0]}:{port}"
        return None

    return wait_until(endpoint, timeout=timeout, message=f"a ready endpoint of {service}")


def tasks_succeeded(worker: Obj, task: str) -> float:
    """The succeeded-task counter of ``task`` on the worker pod's metrics port."""
    url = f"http://{worker['status']['podIP']}:{WORKER_METRICS_PORT}/metrics"
    with httpx.Client(timeout=5) as client:
        text = client.get(url).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == TASKS_SUCCEEDED and sample.labels["task"] == task:
                return float(sample.value)
    return 0.0
