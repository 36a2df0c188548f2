"""The chart's end-to-end scenario, shared by the kind test (tests/e2e/test_kind.py) and the local
control plane's (tests/cluster/test_helm.py): the same values, the same `helm install`, `helm
test`, `helm upgrade` and `helm uninstall` through the real Helm engine (helm-python-sdk), the
same readiness wait, the same task submitted through the API and read back, and the same pool
count. Only how a test reaches the API (kubectl port-forward on kind, the API pod's address on
the local bridge) and how it lists a worker's processes (kubectl exec on kind, /proc on the
local node) differ.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml

from celeriac.demo import ADD_TASK
from celeriac.testing import wait_until
from tests.chart.render import deep_merge
from tests.support import REPO_ROOT

CHART = REPO_ROOT / "charts" / "celeriac"
# k8s/values-dev.yaml (so that file is tested too), then the e2e layer: KEDA on.
VALUES_FILES = (REPO_ROOT / "k8s" / "values-dev.yaml", Path(__file__).with_name("values.yaml"))
GROUP = "default"
# The namespace the test releases go in, on kind and on the local node.
NAMESPACE = "celeriac"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"

Obj = dict[str, Any]


class Kubectl(Protocol):
    def kubectl(self, *args: str) -> str:
        """kubectl with the cluster's kubeconfig; its stdout (raises when it fails)."""
        ...


def kubectl_json(cluster: Kubectl, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json"))


def values(*overrides: Mapping[str, Any]) -> dict[str, Any]:
    """values-dev.yaml, tests/scenarios/values.yaml, then each of ``overrides``, merged as Helm
    does."""
    merged: dict[str, Any] = {}
    for path in VALUES_FILES:
        merged = deep_merge(merged, yaml.safe_load(path.read_text()))
    for override in overrides:
        merged = deep_merge(merged, override)
    return merged


@dataclass(frozen=True)
class Release:
    """One release of charts/celeriac, driven through helm-python-sdk."""

    kubeconfig: Path
    name: str
    namespace: str

    def _config(self) -> Any:
        import helm_python as helm

        return helm.Config(kubeconfig_path=self.kubeconfig, namespace=self.namespace)

    def install(self, release_values: Mapping[str, Any], *, timeout: int = 600) -> Obj:
        """`helm install --create-namespace --wait` (kstatus watcher: every object ready)."""
        with self._config() as config:
            result: Obj = config.install(
                CHART,
                self.name,
                dict(release_values),
                namespace=self.namespace,
                create_namespace=True,
                wait="watcher",
                timeout=timeout,
            )
        return result

    def upgrade(self, release_values: Mapping[str, Any], *, timeout: int = 600) -> Obj:
        with self._config() as config:
            result: Obj = config.upgrade(
                CHART,
                self.name,
                dict(release_values),
                namespace=self.namespace,
                wait="watcher",
                timeout=timeout,
            )
        return result

    def test(self, *, timeout: int = 300) -> Obj:
        """`helm test`: raises HelmReleaseError when the test pod fails (its logs: ``kubectl
        logs`` of the hook's pod)."""
        with self._config() as config:
            result: Obj = config.test(self.name, timeout=timeout)
        return result

    def hooks(self) -> list[Obj]:
        """The stored release's hooks with their last run (`helm get hooks`)."""
        with self._config() as config:
            hooks: list[Obj] = config.get_all(self.name)["hooks"]
        return hooks

    def uninstall(self, *, timeout: int = 300) -> Obj:
        with self._config() as config:
            result: Obj = config.uninstall(self.name, wait="watcher", timeout=timeout)
        return result

    @property
    def selector(self) -> str:
        return f"{INSTANCE_LABEL}={self.name}"

    def pods(self, cluster: Kubectl, *selectors: str) -> list[Obj]:
        selector = ",".join([self.selector, *selectors])
        items: list[Obj] = kubectl_json(
            cluster, "get", "pods", "-n", self.namespace, "-l", selector
        )["items"]
        return items

    def one(self, cluster: Kubectl, kind: str, component: str, *selectors: str) -> Obj:
        """The one object of ``kind`` of ``component`` in this release (fails on 0 or 2)."""
        selector = ",".join([self.selector, f"{COMPONENT_LABEL}={component}", *selectors])
        items = kubectl_json(cluster, "get", kind, "-n", self.namespace, "-l", selector)["items"]
        assert len(items) == 1, f"expected one {kind} of {component}, found {len(items)}"
        found: Obj = items[0]
        return found

    def api_token(self, cluster: Kubectl) -> str:
        """The first token of the API's generated Secret (never printed)."""
        secret = self.one(cluster, "secret", "api")
        return base64.b64decode(secret["data"]["tokens"]).decode().split()[0]

    def worker_deployment(self, cluster: Kubectl) -> Obj:
        return self.one(cluster, "deployment", "worker", f"celeriac.io/worker-group={GROUP}")


def container_port(pod: Obj, name: str) -> int:
    """The port named ``name`` of one of ``pod``'s containers (the chart's: http, redis...)."""
    for container in pod["spec"]["containers"]:
        for port in container.get("ports") or []:
            if port.get("name") == name:
                return int(port["containerPort"])
    raise AssertionError(f"no port named {name} in pod {pod['metadata']['name']}")


def condition(obj: Obj, kind: str) -> str:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item["type"] == kind:
            return str(item["status"])
    return ""


def not_ready(pods: Iterable[Obj]) -> list[str]:
    """Names of the pods that are not Ready or are going away."""
    return [
        pod["metadata"]["name"]
        for pod in pods
        if condition(pod, "Ready") != "True" or pod["metadata"].get("deletionTimestamp")
    ]


def wait_all_ready(
    cluster: Kubectl, release: Release, *, expected: int, timeout: float = 300
) -> list[Obj]:
    """Until the release has exactly ``expected`` pods, every one Ready and none terminating."""
    last: list[str] = []

    def ready() -> list[Obj] | None:
        nonlocal last
        pods = [p for p in release.pods(cluster) if p["status"].get("phase") != "Succeeded"]
        last = [f"{p['metadata']['name']} {p['status'].get('phase')}" for p in pods]
        return pods if len(pods) == expected and not not_ready(pods) else None

    try:
        return wait_until(ready, timeout=timeout, interval=1, message=f"{expected} pods Ready")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; pods: {last}") from None


def api_client(base_url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


FINISHED = ("SUCCESS", "FAILURE", "REVOKED")


def submit(api: httpx.Client, task: str, **kwargs: Any) -> str:
    response = api.post("/v1/tasks", json={"task": task, "kwargs": kwargs})
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


def wait_finished(api: httpx.Client, ids: Sequence[str], *, timeout: float) -> dict[str, Obj]:
    """Poll every id until each has ended; returns id -> its final status (not retried)."""
    pending, finished = set(ids), {}

    def all_finished() -> bool:
        for task_id in sorted(pending):
            status = api.get(f"/v1/tasks/{task_id}").json()
            if status["state"] in FINISHED:
                finished[task_id] = status
                pending.discard(task_id)
        return not pending

    wait_until(all_finished, timeout=timeout, interval=1, message=f"{len(ids)} tasks to finish")
    return finished


def run_task(api: httpx.Client, task: str, *, timeout: float = 120, **kwargs: Any) -> Obj:
    """Submit ``task`` through the API and wait for its final status."""
    task_id = submit(api, task, **kwargs)
    return wait_finished(api, [task_id], timeout=timeout)[task_id]


# -- the worker's pool ------------------------------------------------------------------------

# Lists the processes it can see as "pid ppid argv..." lines, run in a pod's container by
# process_table (`kubectl exec ... python -c`).
_PROCESS_TABLE_SCRIPT = """
import os
for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
    if int(pid) == os.getpid():  # this script: its argv has newlines
        continue
    try:
        stat = open(f"/proc/{pid}/stat").read()
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
    except OSError:
        continue
    ppid = stat.rsplit(")", 1)[1].split()[1]
    print(pid, ppid, *(a.decode(errors="replace") for a in argv if a))
"""


def _parse_process_table(text: str) -> dict[int, tuple[int, list[str]]]:
    table = {}
    for line in text.splitlines():
        pid, ppid, *argv = line.split()
        table[int(pid)] = (int(ppid), argv)
    return table


def process_table(cluster: Kubectl, pod: Obj) -> dict[int, tuple[int, list[str]]]:
    """pid -> (ppid, argv) of the processes ``pod``'s container sees (``kubectl exec``)."""
    name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
    command = ["python", "-c", _PROCESS_TABLE_SCRIPT]
    return _parse_process_table(cluster.kubectl("exec", "-n", namespace, name, "--", *command))


def pool_processes(table: Mapping[int, tuple[int, list[str]]]) -> list[int]:
    """The pool of the worker in ``table``: the children of the main `celeriac worker` process
    (the one whose parent is not a `celeriac worker` itself)."""

    def is_worker(argv: list[str]) -> bool:
        """`[python] .../celeriac worker` (not `celeriac probe worker`, not tini)."""
        for index, arg in enumerate(argv[:2]):
            if Path(arg).name == "celeriac":
                return argv[index + 1 : index + 2] == ["worker"]
        return False

    workers = {pid for pid, (_, argv) in table.items() if is_worker(argv)}
    mains = [pid for pid in workers if table[pid][0] not in workers]
    assert len(mains) == 1, f"expected one main worker process, found {mains} in {dict(table)}"
    return sorted(pid for pid, (ppid, _) in table.items() if ppid == mains[0])


# -- a steady stream of submits --------------------------------------------------------------


@dataclass
class Submitter:
    """Submits `celeriac.demo.add(n, 0)` through the API every 50 ms from a thread and records
    each answer: (seconds since ``start``, status code or the exception's name, id if 202)."""

    api: httpx.Client
    answers: list[tuple[float, int | str, str | None]] = field(default_factory=list)
    numbers: dict[str, int] = field(default_factory=dict)  # accepted id -> its n
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    started: float = 0.0

    def start(self) -> Submitter:
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="submitter", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            sent = time.monotonic() - self.started
            try:
                response = self.api.post(
                    "/v1/tasks", json={"task": ADD_TASK, "kwargs": {"x": n, "y": 0}}
                )
            except httpx.HTTPError as exc:
                self.answers.append((sent, type(exc).__name__, None))
                continue
            task_id = response.json()["id"] if response.status_code == 202 else None
            if task_id:
                self.numbers[task_id] = n
            self.answers.append((sent, response.status_code, task_id))
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)

    def accepted(self) -> list[str]:
        return [task_id for _, _, task_id in list(self.answers) if task_id]

    def accepted_since(self, moment: float) -> int:
        return sum(1 for sent, code, _ in list(self.answers) if code == 202 and sent >= moment)
