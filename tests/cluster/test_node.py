"""A real node (issue 17, item 3): the kubelet of the control plane's release, containerd and
runc run the celeriac image as the chart asks, and kubectl logs and exec work as a user expects.
``make e2e`` (root; builds the node's binaries if not cached and needs ``make image``)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from celeriac.testing import wait_until
from celeriac.worker.settings import DEFAULT_READY_FILE
from tests.chart.render import deep_merge
from tests.cluster.conftest import TIMEOUT
from tests.cluster.infra.controlplane import (
    ADAPTER_PORT,
    APISERVER_PORT,
    ControlPlane,
    module_ports,
)
from tests.cluster.infra.local_cluster import api_base_url, tasks_succeeded
from tests.cluster.infra.node import CNI_PLUGINS, POD_RANGE, Node
from tests.cluster.infra.registry import Registry
from tests.image import build as image_build
from tests.scenarios import scenario
from tests.scenarios.scenario import NAMESPACE, Release
from tests.support import missing

pytestmark = [pytest.mark.cluster]

POD_TIMEOUT = 120.0
PULL_SECRET = "regcred"
CHECK = "celeriac --help >/dev/null"  # the image's own command runs


@pytest.fixture(scope="module")
def image() -> str:
    reference = image_build.image_tag()
    if not image_build.image_exists(reference):
        missing("the celeriac image", "build it with `make image` (root, podman)")
    return reference


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    ports = module_ports("CLUSTER", APISERVER_PORT, ADAPTER_PORT)
    with ControlPlane(tmp_path_factory.mktemp("controlplane"), keda=False, **ports) as plane:
        yield plane


@pytest.fixture(scope="module")
def registry(plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("registry"), plane.pki.ca) as registry:
        yield registry


@pytest.fixture(scope="module")
def node(
    plane: ControlPlane, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    if not (CNI_PLUGINS / "bridge").is_file():
        missing("Debian's CNI plugins", "apt-get install containernetworking-plugins")
    with Node(plane, tmp_path_factory.mktemp("node")) as node:
        node.load_image(image)
        yield node


def pod_json(plane: ControlPlane, name: str) -> Any:
    return json.loads(plane.kubectl("get", "pod", name, "-o", "json"))


def test_the_node_joins_ready_with_its_runtime(plane: ControlPlane, node: Node) -> None:
    info = json.loads(plane.kubectl("get", "node", node.name, "-o", "json"))
    status = info["status"]
    assert status["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://2.")
    assert status["nodeInfo"]["kubeletVersion"] == "v1.35.5"
    assert {"type": "InternalIP", "address": node.address} in status["addresses"]


def test_the_image_runs_as_the_chart_asks(plane: ControlPlane, node: Node, image: str) -> None:
    run_pod(
        plane,
        node,
        image,
        "celeriac-version",
        ["sh", "-c", f"id -u; {CHECK} && echo ok; sleep 3600"],
    )
    logs = wait_until(
        lambda: (out := plane.kubectl("logs", "celeriac-version")) and "ok" in out and out,
        timeout=POD_TIMEOUT,
        message="the pod's output",
    )
    assert logs.split() == ["10001", "ok"]
    status = pod_json(plane, "celeriac-version")["status"]
    assert status["podIP"] in [str(a) for a in POD_RANGE.hosts()]
    assert plane.kubectl("exec", "celeriac-version", "--", "id", "-u").strip() == "10001"
    touched = plane.kubectl("exec", "celeriac-version", "--", "sh", "-c", "touch /x 2>&1; true")
    assert "Read-only file system" in touched
    quota = plane.kubectl(
        "exec", "celeriac-version", "--", "cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
    )
    assert quota.strip() == "50000"


def pod_manifest(
    node: Node, image: str, name: str, command: list[str], pull: str = "Never", **spec: Any
) -> dict[str, Any]:
    """A pod of ``image`` on ``node``, locked down as the chart's are; ``spec``: more fields."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "nodeName": node.name,
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": pull,
                    "command": command,
                    "securityContext": {
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    # Small requests: the node has 2 CPUs for these pods and the chart's.
                    "resources": {
                        "requests": {"cpu": "10m", "memory": "32Mi"},
                        "limits": {"cpu": "500m", "memory": "256Mi"},
                    },
                }
            ],
            **spec,
        },
    }


def run_pod(
    plane: ControlPlane, node: Node, image: str, name: str, command: list[str], **spec: Any
) -> None:
    """``pod_manifest``'s pod, applied and waited for until it runs."""
    pod = pod_manifest(node, image, name, command, **spec)
    plane.kubectl("apply", "-f", "-", input=json.dumps(pod))
    wait_until(
        lambda: pod_json(plane, name)["status"].get("phase") == "Running",
        timeout=POD_TIMEOUT,
        message=f"pod {name} running",
    )


def test_a_service_answers_by_its_cluster_name(plane: ControlPlane, node: Node, image: str) -> None:
    """kube-proxy routes the Service's ClusterIP and CoreDNS resolves its name, from a pod."""
    run_pod(plane, node, image, "web", ["python3", "-m", "http.server", "8080"])
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    plane.kubectl("apply", "-f", "-", input=json.dumps(service))
    run_pod(plane, node, image, "client", ["sleep", "3600"])
    fetch = (
        "import urllib.request; print(urllib.request.urlopen("
        "'http://web.default.svc.cluster.local/', timeout=3).status)"
    )

    def answered() -> bool:
        out = plane.kubectl("exec", "client", "--", "python3", "-c", fetch, check=False)
        return out.strip() == "200"

    wait_until(answered, timeout=60, message="the Service answering by name")


@pytest.fixture(scope="module")
def release(plane: ControlPlane, node: Node, registry: Registry, image: str) -> Release:
    """The user's flow: the images in a private registry, `helm install` with the chart's
    ``image`` values and an ``imagePullSecrets`` entry (waiting for every object ready)."""
    node.trust_registry(registry.address, plane.pki.ca.cert)
    repository, tag = registry.push(image).rsplit(":", 1)
    redis_repository, redis_tag = registry.push(image_build.redis_image()).rsplit(":", 1)
    plane.kubectl("create", "namespace", NAMESPACE)
    create_pull_secret(plane, registry, NAMESPACE)
    release = Release(plane.kubeconfig, "real", NAMESPACE)
    release.install(
        scenario.values(
            {
                "image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"},
                "imagePullSecrets": [{"name": PULL_SECRET}],
                "redis": {
                    "image": {"repository": redis_repository, "tag": redis_tag},
                    "persistence": {"enabled": False},
                },
                "workerDefaults": {
                    "autoscaling": {"engine": "none", "replicas": 1},
                    # A hung worker ignores SIGTERM: the kubelet's restart waits this long.
                    "terminationGracePeriodSeconds": 15,
                },
            }
        ),
        timeout=int(POD_TIMEOUT * 2),
    )
    return release


def only_worker(plane: ControlPlane, release: Release) -> scenario.Obj:
    """The release's one worker pod."""
    (worker,) = release.pods(plane, f"{scenario.COMPONENT_LABEL}=worker")
    return worker


def worker_exec(plane: ControlPlane, release: Release, *command: str) -> str:
    """``kubectl exec`` in the release's one worker pod."""
    name = only_worker(plane, release)["metadata"]["name"]
    return plane.kubectl("exec", "-n", NAMESPACE, name, "--", *command)


def test_helm_install_runs_a_task_on_the_real_node(
    plane: ControlPlane, node: Node, release: Release
) -> None:
    """Every pod pulled and Ready under the real kubelet, a task sent through the API Service
    run by a worker container whose pool is its CPU limit, under tini."""
    pods = release.pods(plane)
    assert {pod["spec"]["nodeName"] for pod in pods} == {node.name}
    assert not scenario.not_ready(pods)
    with scenario.api_client(
        api_base_url(plane, release, timeout=TIMEOUT), release.api_token(plane)
    ) as api:
        status = scenario.run_task(api, "celeriac.demo.add", timeout=POD_TIMEOUT, x=2, y=3)
    assert status["state"] == "SUCCESS", status
    assert status["result"] == 5
    # The pool as the container sees it: CPU limit 1 (values-dev) on a node of 2 CPUs.
    table = scenario.process_table(plane, only_worker(plane, release))
    assert len(scenario.pool_processes(table)) == 1
    assert Path(table[1][1][0]).name == "tini", table[1]  # PID 1 forwards SIGTERM


def test_the_node_pulls_from_a_private_registry_with_a_pull_secret(
    plane: ControlPlane, node: Node, registry: Registry, image: str
) -> None:
    """As on a user's cluster: the image pushed to a registry with TLS and authentication; a pod
    with an ``imagePullSecrets`` entry pulls it, a pod without one is refused."""
    remote = registry.push(image)
    node.trust_registry(registry.address, plane.pki.ca.cert)
    create_pull_secret(plane, registry, "default")
    denied = pod_manifest(node, remote, "no-secret", ["true"], pull="Always")
    plane.kubectl("apply", "-f", "-", input=json.dumps(denied))
    run_pod(
        plane,
        node,
        remote,
        "pulled",
        ["sh", "-c", f"{CHECK} && echo ok; sleep 3600"],
        pull="Always",
        imagePullSecrets=[{"name": PULL_SECRET}],
    )
    assert "ok" in wait_until(
        lambda: plane.kubectl("logs", "pulled"), timeout=POD_TIMEOUT, message="its output"
    )

    def refused() -> str | None:
        waiting = pod_json(plane, "no-secret")["status"]["containerStatuses"][0]["state"]
        reason: str | None = waiting.get("waiting", {}).get("reason")
        return reason if reason in ("ErrImagePull", "ImagePullBackOff") else None

    wait_until(refused, timeout=POD_TIMEOUT, message="the pull without credentials refused")
    events = plane.kubectl("get", "events", "--field-selector", "involvedObject.name=no-secret")
    assert "authorization failed: no basic auth credentials" in events, events


def create_pull_secret(plane: ControlPlane, registry: Registry, namespace: str) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": PULL_SECRET, "namespace": namespace},
        "stringData": {".dockerconfigjson": registry.docker_config()},
    }
    plane.kubectl("apply", "-f", "-", input=json.dumps(secret))


def test_a_task_over_the_memory_limit_is_oom_killed_then_dead_lettered(
    plane: ControlPlane, release: Release
) -> None:
    """The kernel's OOM killer ends the pool process holding more than the worker container's
    memory limit (384Mi, values-dev); the task is delivered again each time and, after
    ``CELERIAC_MAX_LOST_DELIVERIES`` (3) lost deliveries, set aside as a dead letter. The
    worker itself stays up and keeps running tasks."""
    oom_before = oom_kills(plane, release)
    with scenario.api_client(
        api_base_url(plane, release, timeout=TIMEOUT), release.api_token(plane)
    ) as api:
        task_id = scenario.submit(api, "celeriac.demo.memory", megabytes=768)

        def dead_letter() -> dict[str, Any] | None:
            entries = api.get("/v1/dead-letters").json()["dead_letters"]
            return next((entry for entry in entries if entry["id"] == task_id), None)

        entry = wait_until(dead_letter, timeout=POD_TIMEOUT * 2, message="the dead letter")
        assert entry["task"] == "celeriac.demo.memory"
        assert entry["deliveries"] == 3, entry
        assert oom_kills(plane, release) - oom_before == 3
        status = scenario.run_task(api, "celeriac.demo.add", timeout=POD_TIMEOUT, x=1, y=1)
    assert status["state"] == "SUCCESS", status
    (worker,) = release.pods(plane, f"{scenario.COMPONENT_LABEL}=worker")
    assert worker["status"]["containerStatuses"][0]["restartCount"] == 0


def oom_kills(plane: ControlPlane, release: Release) -> int:
    """The kernel's count of OOM kills in the worker container's memory cgroup (v1)."""
    control = worker_exec(plane, release, "cat", "/sys/fs/cgroup/memory/memory.oom_control")
    fields = dict(line.split() for line in control.splitlines())
    return int(fields["oom_kill"])


def test_a_hung_worker_is_restarted_by_its_liveness_probe(
    plane: ControlPlane, release: Release
) -> None:
    """The worker's main process stops (SIGSTOP: a hang), its heartbeat goes stale, the
    liveness probe fails and the kubelet restarts the container, which runs tasks again."""
    table = scenario.process_table(plane, only_worker(plane, release))
    main = table[scenario.pool_processes(table)[0]][0]
    stop = f"import os, signal; os.kill({main}, signal.SIGSTOP)"
    worker_exec(plane, release, "python", "-c", stop)

    def restarted() -> bool:
        (worker,) = release.pods(plane, f"{scenario.COMPONENT_LABEL}=worker")
        status = worker["status"]["containerStatuses"][0]
        return bool(status["restartCount"] >= 1 and status["ready"])

    # Stale after 30 s, three failed probes 10 s apart, 15 s of grace, the start again.
    wait_until(restarted, timeout=POD_TIMEOUT * 2, message="the worker restarted and ready")
    events = plane.kubectl("get", "events", "-n", NAMESPACE, "--field-selector", "reason=Unhealthy")
    assert "Liveness probe failed" in events, events
    with scenario.api_client(
        api_base_url(plane, release, timeout=TIMEOUT), release.api_token(plane)
    ) as api:
        status = scenario.run_task(api, "celeriac.demo.add", timeout=POD_TIMEOUT, x=3, y=4)
    assert status["state"] == "SUCCESS", status


def timestamp(text: str) -> float:
    """An RFC 3339 time of the API (``...Z``, with or without fractions) as a Unix time."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def scheduled_at(plane: ControlPlane, pod: str) -> float:
    """When the scheduler bound ``pod`` (its Scheduled event's eventTime, in microseconds)."""
    selector = f"involvedObject.name={pod},reason=Scheduled"
    found = plane.kubectl(
        "get", "events", "-n", NAMESPACE, "-o", "json", "--field-selector", selector
    )
    events = json.loads(found)["items"]
    return timestamp(events[0]["eventTime"])


def test_a_new_worker_pod_consumes_seconds_after_it_is_scheduled(
    plane: ControlPlane, release: Release
) -> None:
    """From the scheduler binding a new worker pod (its image on the node) to the worker
    consuming (its ready file, touched when the consumer starts: DEFAULT_READY_FILE), three
    times. Reported, not asserted (README "The image"): the worker process alone starts in
    about 0.5 s, so the rest is the pod around it."""
    deployment = release.one(plane, "deployment", "worker")["metadata"]["name"]
    selector = f"{scenario.COMPONENT_LABEL}=worker"

    def live_workers() -> list[dict[str, Any]]:
        pods = release.pods(plane, selector)
        return [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]

    figures = []
    for _ in range(3):
        (old,) = live_workers()
        plane.kubectl("scale", "-n", NAMESPACE, f"deployment/{deployment}", "--replicas=2")

        def new_ready(old_uid: str = old["metadata"]["uid"]) -> dict[str, Any] | None:
            for pod in live_workers():
                if pod["metadata"]["uid"] != old_uid and not scenario.not_ready([pod]):
                    return pod
            return None

        pod = wait_until(new_ready, timeout=POD_TIMEOUT, message="the new worker pod Ready")
        name = pod["metadata"]["name"]
        scheduled = scheduled_at(plane, name)
        started = timestamp(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
        stat = f"import os; print(os.stat({str(DEFAULT_READY_FILE)!r}).st_mtime)"
        consuming = float(plane.kubectl("exec", "-n", NAMESPACE, name, "--", "python", "-c", stat))
        assert scheduled < consuming
        figures.append((started - scheduled, consuming - scheduled))
        plane.kubectl("scale", "-n", NAMESPACE, f"deployment/{deployment}", "--replicas=1")
        wait_until(
            lambda: len(release.pods(plane, selector)) == 1,
            timeout=POD_TIMEOUT,
            message="one worker pod again",
        )
    print(
        "scheduled -> container started (1 s resolution) / worker consuming: "
        + ", ".join(f"{start:.0f} s / {consume:.1f} s" for start, consume in figures)
    )


OWN_TASKS = Path(__file__).resolve().parents[2] / "k8s" / "examples" / "own-tasks"


@pytest.fixture(scope="module")
def own_tasks_image(image: str) -> str:
    """k8s/examples/own-tasks built ``FROM`` the celeriac image, as its Dockerfile says."""
    reference = "localhost/mytasks:test"
    image_build.podman(
        "build",
        *image_build.common_build_options(),
        "--build-arg",
        f"CELERIAC_IMAGE={image}",
        "--tag",
        reference,
        str(OWN_TASKS),
        capture=True,
    )
    return reference


def test_your_own_tasks_image_from_celeriacs_runs_your_tasks(
    plane: ControlPlane, node: Node, registry: Registry, own_tasks_image: str
) -> None:
    """The user's flow (README "Your own tasks"): their tasks image built FROM celeriac's and
    pushed to their registry, `helm install` with the example's values file (its ``app``, its
    two worker groups); their tasks run through the API, each on the group of its queue."""
    namespace = "mytasks"
    repository, tag = registry.push(own_tasks_image).rsplit(":", 1)
    redis_repository, redis_tag = registry.push(image_build.redis_image()).rsplit(":", 1)
    plane.kubectl("create", "namespace", namespace)
    create_pull_secret(plane, registry, namespace)
    release = Release(plane.kubeconfig, "mytasks", namespace)
    fits_the_node = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1"}}
    values = deep_merge(
        yaml.safe_load((OWN_TASKS / "values.yaml").read_text()),
        {
            "image": {"repository": repository, "tag": tag},
            "imagePullSecrets": [{"name": PULL_SECRET}],
            "redis": {
                "image": {"repository": redis_repository, "tag": redis_tag},
                "persistence": {"enabled": False},
            },
            # This plane runs without KEDA; the cpu group asks for 2 CPUs, the whole node.
            "workerDefaults": {"autoscaling": {"engine": "none", "replicas": 1}},
            "workers": {"cpu": {"resources": fits_the_node}},
        },
    )
    release.install(values, timeout=int(POD_TIMEOUT * 2))
    try:
        workers = {
            pod["metadata"]["labels"]["celeriac.io/worker-group"]: pod
            for pod in release.pods(plane, f"{scenario.COMPONENT_LABEL}=worker")
        }
        assert set(workers) == {"default", "cpu"}
        with scenario.api_client(
            api_base_url(plane, release, timeout=TIMEOUT), release.api_token(plane)
        ) as api:
            words = scenario.run_task(
                api, "mytasks.word_count", timeout=POD_TIMEOUT, text="one two three"
            )
            response = api.post(
                "/v1/tasks", json={"task": "mytasks.fibonacci", "kwargs": {"n": 30}, "queue": "cpu"}
            )
            assert response.status_code == 202, response.text
            fibonacci_id = response.json()["id"]
            fibonacci = scenario.wait_finished(api, [fibonacci_id], timeout=POD_TIMEOUT)
            refused = api.post("/v1/tasks", json={"task": "celeriac.demo.add", "kwargs": {}})
        assert (words["state"], words["result"]) == ("SUCCESS", 3), words
        assert fibonacci[fibonacci_id]["result"] == 832040, fibonacci
        assert refused.status_code == 422, refused.text  # not in the values' allowedTasks
        # Each task ran on the group of its queue (the workers' own counters).
        for group, task in (("default", "mytasks.word_count"), ("cpu", "mytasks.fibonacci")):
            wait_until(
                lambda pod=workers[group], task=task: tasks_succeeded(pod, task) == 1,
                timeout=30,
                message=f"the {group} group counting {task} once",
            )
    finally:
        release.uninstall(timeout=int(POD_TIMEOUT))
