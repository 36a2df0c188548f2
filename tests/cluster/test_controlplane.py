"""The local control plane (issue 9): built from the pinned sources, started as processes, and
acting as Kubernetes does: controllers create a Deployment's ReplicaSet and pod, the scheduler
marks the pod unschedulable (no node yet), KEDA's external metrics API is served through the
aggregation layer. ``make e2e`` (builds if not cached); root is needed for the bridge."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac.testing import wait_until
from tests.cluster.infra import network
from tests.cluster.infra.controlplane import (
    ADAPTER_PORT,
    APISERVER_PORT,
    EXTERNAL_METRICS_APISERVICE,
    ControlPlane,
    module_ports,
)

pytestmark = [
    pytest.mark.cluster,
]

CONTROLLER_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    # Another control plane on this machine (a developer's) holds 6443/7443: set
    # CELERIAC_CLUSTER_APISERVER_PORT / CELERIAC_CLUSTER_ADAPTER_PORT to run beside it.
    ports = module_ports("CLUSTER", APISERVER_PORT, ADAPTER_PORT)
    with ControlPlane(tmp_path_factory.mktemp("controlplane"), **ports) as plane:
        yield plane


def get_json(plane: ControlPlane, *args: str) -> Any:
    return json.loads(plane.kubectl("get", *args, "-o", "json"))


def test_apiserver_ready(plane: ControlPlane) -> None:
    assert plane.kubectl("get", "--raw", "/readyz") == "ok"
    assert plane.resolv_file.is_file()  # KEDA's operator's /etc/resolv.conf (a node's DNS)


def test_controllers_and_scheduler_act_on_a_deployment(plane: ControlPlane) -> None:
    plane.kubectl("create", "namespace", "cp-test")
    plane.kubectl("-n", "cp-test", "create", "deployment", "web", "--image=registry.invalid/web:1")

    replicasets = wait_until(
        lambda: get_json(plane, "-n", "cp-test", "replicasets", "-l", "app=web")["items"],
        timeout=CONTROLLER_TIMEOUT,
        message="the deployment controller's ReplicaSet",
    )
    assert replicasets[0]["metadata"]["ownerReferences"][0]["name"] == "web"

    def unschedulable_pod() -> dict[str, Any] | None:
        for pod in get_json(plane, "-n", "cp-test", "pods", "-l", "app=web")["items"]:
            for condition in pod["status"].get("conditions", []):
                if condition["type"] == "PodScheduled" and condition["reason"] == "Unschedulable":
                    return pod  # type: ignore[no-any-return]
        return None

    # The ReplicaSet controller made the pod; the scheduler tried it and found no node.
    pod = wait_until(unschedulable_pod, timeout=CONTROLLER_TIMEOUT, message="a pod, unschedulable")
    assert pod["status"]["phase"] == "Pending"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    # Service-account credentials per controller: the pod got the default service account.
    assert pod["spec"]["serviceAccountName"] == "default"


def test_keda_external_metrics_api_available(plane: ControlPlane) -> None:
    assert plane.apiservice_available(EXTERNAL_METRICS_APISERVICE)
    resources = json.loads(plane.kubectl("get", "--raw", "/apis/external.metrics.k8s.io/v1beta1"))
    assert resources["kind"] == "APIResourceList"
    assert resources["groupVersion"] == "external.metrics.k8s.io/v1beta1"
    crds = {c["metadata"]["name"] for c in get_json(plane, "crds")["items"]}
    assert {"scaledobjects.keda.sh", "triggerauthentications.keda.sh"} <= crds


def test_hpa_service_account_may_read_external_metrics(plane: ControlPlane) -> None:
    """What the HPA controller (its own service account credentials) asks before reading a
    ScaledObject's metric: KEDA's keda-hpa-controller-external-metrics binding allows it."""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system"],
            "resourceAttributes": {
                "group": "external.metrics.k8s.io",
                "resource": "s0-metric-api-backlog",
                "verb": "list",
                "namespace": "default",
            },
        },
    }
    answer = json.loads(plane.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review)))
    assert answer["status"]["allowed"] is True, answer["status"]


def test_logs_are_kept_per_component(plane: ControlPlane) -> None:
    logs = {p.stem for p in Path(plane.logs).glob("*.log")}
    assert {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} <= logs
    assert {"keda-operator", "keda-adapter"} <= logs


class MetricHandler(http.server.BaseHTTPRequestHandler):
    value = 7

    def do_GET(self) -> None:
        body = json.dumps({"value": self.value}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def metric_server() -> Iterator[int]:
    """A metrics endpoint on the bridge's host address (the tooling's own), on a free port."""
    server = http.server.ThreadingHTTPServer((network.HOST_IP, 0), MetricHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def test_keda_reads_a_metrics_api_through_the_aggregation_layer(
    plane: ControlPlane, metric_server: int
) -> None:
    """The whole external-metrics path: the operator reads a ScaledObject's metrics-api URL (a
    server on the host's bridge address: without a node there is no Service to name; the real
    node's modules reach the exporter by its Service name), and the value comes back through the
    adapter and the aggregation layer, and to the HPA KEDA made."""
    plane.kubectl("create", "namespace", "cp-keda")
    plane.kubectl("-n", "cp-keda", "create", "deployment", "target", "--image=registry.invalid/t:1")
    scaled_object = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "so", "namespace": "cp-keda"},
        "spec": {
            "scaleTargetRef": {"name": "target"},
            "pollingInterval": 5,
            "minReplicaCount": 1,
            "triggers": [
                {
                    "type": "metrics-api",
                    "metadata": {
                        "url": f"http://{network.HOST_IP}:{metric_server}/metric",
                        "valueLocation": "value",
                        "targetValue": "5",
                    },
                }
            ],
        },
    }
    plane.apply(json.dumps(scaled_object))

    def metric_names() -> list[str] | None:
        status = get_json(plane, "-n", "cp-keda", "scaledobject", "so").get("status", {})
        return status.get("externalMetricNames")  # type: ignore[no-any-return]

    (name,) = wait_until(metric_names, timeout=CONTROLLER_TIMEOUT, message="KEDA's metric name")
    path = (
        f"/apis/external.metrics.k8s.io/v1beta1/namespaces/cp-keda/{name}"
        "?labelSelector=scaledobject.keda.sh%2Fname%3Dso"
    )
    values = wait_until(
        lambda: json.loads(plane.kubectl("get", "--raw", path))["items"],
        timeout=CONTROLLER_TIMEOUT,
        message="the external metric's value",
    )
    assert values[0]["value"] == "7"

    def hpa_current_value() -> str | None:
        hpa = get_json(plane, "-n", "cp-keda", "hpa", "keda-hpa-so")
        for metric in hpa.get("status", {}).get("currentMetrics") or []:
            external = metric.get("external", {}).get("current", {})
            value = external.get("averageValue") or external.get("value")
            if value:
                return str(value)
        return None

    # The HPA controller reads it with its own credentials (default sync period: 15 s).
    assert wait_until(hpa_current_value, timeout=CONTROLLER_TIMEOUT, message="the HPA's metric")
