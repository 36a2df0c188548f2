"""The worker's pod-deletion-cost against the local control plane (issue 10, item 2): the chart's
own ServiceAccount, Role and RoleBinding applied to a real API server, a pod object, and the
worker's updater patching that pod with a token of the workers' ServiceAccount bound to the pod
(the TokenRequest API, as the kubelet mounts it): the annotation follows busy and idle, and the
token can do nothing else (another namespace, other verbs, other resources)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from celeriac.testing import wait_until
from celeriac.worker.deletion_cost import (
    ANNOTATION,
    CostPacer,
    DeletionCostUpdater,
    KubernetesPod,
)
from tests.cluster.infra.controlplane import ADAPTER_PORT, APISERVER_PORT, ControlPlane

pytestmark = [
    pytest.mark.cluster,
]

NS = "deletion-cost"
OTHER_NS = "deletion-cost-other"
POD = "celeriac-worker-default-5d8f7c9b4-x7k2p"
ACCOUNT = "celeriac-worker"
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(
        tmp_path_factory.mktemp("deletion-cost"),
        keda=False,
        apiserver_port=int(os.environ.get("CELERIAC_CLUSTER_APISERVER_PORT", APISERVER_PORT)),
        adapter_port=int(os.environ.get("CELERIAC_CLUSTER_ADAPTER_PORT", ADAPTER_PORT)),
    ) as plane:
        yield plane


def chart_rbac() -> list[dict[str, Any]]:
    """The ServiceAccount, Role and RoleBinding the chart renders for workers, into NS."""
    from tests.chart.render import render

    rendered = render({})
    objects = [
        rendered.get("ServiceAccount", ACCOUNT),
        rendered.get("Role", ACCOUNT),
        rendered.get("RoleBinding", ACCOUNT),
    ]
    text = yaml.safe_dump_all(objects).replace("namespace: tasks", f"namespace: {NS}")
    return list(yaml.safe_load_all(text))


def pod_object(name: str, namespace: str) -> dict[str, Any]:
    # Bound to a node that does not exist: no scheduler, no kubelet; the object is what counts.
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": "no-such-node",
            "serviceAccountName": ACCOUNT,
            "automountServiceAccountToken": False,
            "containers": [{"name": "worker", "image": "celeriac:0.1.0"}],
        },
    }


def annotation(plane: ControlPlane, namespace: str, name: str) -> str | None:
    pod = json.loads(plane.kubectl("-n", namespace, "get", "pod", name, "-o", "json"))
    value: str | None = (pod["metadata"].get("annotations") or {}).get(ANNOTATION)
    return value


def annotated_with(plane: ControlPlane, expected: str) -> Callable[[], bool]:
    return lambda: annotation(plane, NS, POD) == expected


@pytest.fixture(scope="module")
def worker_client(plane: ControlPlane) -> Any:
    """An ApiClient as the worker's pod has it: the pod-bound token of the workers' account."""
    from kubernetes import client

    for namespace in (NS, OTHER_NS):
        plane.kubectl("create", "namespace", namespace)
    plane.apply(yaml.safe_dump_all(chart_rbac()))
    other = pod_object("someone-else", OTHER_NS)
    other["spec"]["serviceAccountName"] = "default"
    wait_until(
        lambda: plane.kubectl("-n", OTHER_NS, "get", "serviceaccount", "default", check=False),
        timeout=TIMEOUT,
        message="the default ServiceAccount of the other namespace",
    )
    plane.apply(yaml.safe_dump_all([pod_object(POD, NS), other]))
    token = plane.kubectl(
        "-n",
        NS,
        "create",
        "token",
        ACCOUNT,
        "--bound-object-kind=Pod",
        f"--bound-object-name={POD}",
    ).strip()
    configuration = client.Configuration()
    configuration.host = plane.server
    configuration.ssl_ca_cert = str(plane.state_dir / "pki" / "ca.crt")
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(configuration)


def test_the_annotation_follows_busy_and_idle(plane: ControlPlane, worker_client: Any) -> None:
    assert annotation(plane, NS, POD) is None
    held = [0]
    pod = KubernetesPod(NS, POD, worker_client)
    updater = DeletionCostUpdater(lambda: held[0], pod, CostPacer(min_interval=0.2))
    updater.start()
    try:
        for busy in (0, 3, 1, 0):
            held[0] = busy
            wait_until(
                annotated_with(plane, str(busy)), timeout=TIMEOUT, message=f"annotation {busy}"
            )
        assert updater.pacer.failures == 0
        assert pod.read() == 0  # get: the worker reads its own pod
    finally:
        updater.stop()


def test_the_token_can_do_nothing_else(plane: ControlPlane, worker_client: Any) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(worker_client)
    body = {"metadata": {"annotations": {ANNOTATION: "5"}}}
    forbidden = [
        lambda: core.patch_namespaced_pod("someone-else", OTHER_NS, body),  # other namespace
        lambda: core.list_namespaced_pod(NS),  # list: not granted
        lambda: core.delete_namespaced_pod(POD, NS),  # delete: not granted
        lambda: core.list_namespaced_secret(NS),  # other resources
        lambda: core.read_namespaced_config_map("kube-root-ca.crt", NS),
    ]
    for call in forbidden:
        with pytest.raises(ApiException) as refused:
            call()
        assert refused.value.status == 403
    assert annotation(plane, OTHER_NS, "someone-else") is None
    assert json.loads(plane.kubectl("-n", NS, "get", "pod", POD, "-o", "json"))


def test_an_unreachable_api_is_retried_and_the_last_count_lands(
    plane: ControlPlane, worker_client: Any, tmp_path: Path
) -> None:
    """A client pointed at a closed port fails, the updater keeps retrying; pointed back at the
    API server (the same updater), the count of now lands."""
    from kubernetes import client

    broken = client.Configuration()
    broken.host = "https://127.0.0.1:1"
    broken.ssl_ca_cert = worker_client.configuration.ssl_ca_cert
    broken.api_key = worker_client.configuration.api_key
    good = KubernetesPod(NS, POD, worker_client)
    bad = KubernetesPod(NS, POD, client.ApiClient(broken))

    class Switch:
        target = bad

        def read(self) -> int | None:
            return self.target.read()

        def write(self, cost: int) -> None:
            self.target.write(cost)

    switch = Switch()
    held = [2]
    updater = DeletionCostUpdater(
        lambda: held[0], switch, CostPacer(min_interval=0.1, max_retry=0.5), poll=0.05
    )
    updater.start()
    try:
        wait_until(lambda: updater.pacer.failures >= 3, timeout=TIMEOUT, message="retries")
        held[0] = 4
        switch.target = good
        wait_until(lambda: annotation(plane, NS, POD) == "4", timeout=TIMEOUT, message="recovered")
        assert updater.pacer.failures == 0
    finally:
        updater.stop()
