"""A kind cluster as the shared scenarios see it (tests/scenarios/scenario.py, autoscaling.py,
recovery.py, rollouts.py): kubectl with the cluster's own kubeconfig, and a pod's port reached
through `kubectl port-forward`, which works on any cluster, with or without a network plugin
that enforces the chart's NetworkPolicies (a forward enters the pod's network namespace; a
request proxied by the API server comes from a node address, which the default-deny policy
refuses).

One forward per pod and port, started when first needed and kept while it lives: the burst reads
every worker pod's metrics about once a second, so a kubectl per request would not keep up.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import redis

from celeriac.testing import Child, free_port, wait_until
from tests.scenarios.scenario import (
    COMPONENT_LABEL,
    NAMESPACE,
    Obj,
    Release,
    condition,
    container_port,
)
from tests.support import missing, require_tool

KEDA_VERSION = "2.20.2"
KEDA_MANIFEST = (
    f"https://github.com/kedacore/keda/releases/download/v{KEDA_VERSION}/keda-{KEDA_VERSION}.yaml"
)
KEDA_NAMESPACE = "keda"
# kubectl port-forward prints this line once it listens.
FORWARD_READY = "Forwarding from 127.0.0.1:{port} ->"
FORWARD_START_TIMEOUT_SECONDS = 15.0
HTTP_TIMEOUT_SECONDS = 5.0
# The values layer of every release the kind tests install besides the image: Redis on a
# PersistentVolumeClaim (kind's default StorageClass, local-path), as the local control plane's
# tests/cluster/test_helm.py LOCAL_VALUES, so queued tasks survive a Redis pod's deletion.
REDIS_ON_A_CLAIM: dict[str, Any] = {"redis": {"persistence": {"enabled": True, "size": "1Gi"}}}


def require_prerequisites() -> None:
    """Skip (or fail, under CELERIAC_REQUIRE_TOOLS) unless Docker, kind and kubectl work here."""
    require_tool("docker", "install Docker Engine: https://docs.docker.com/engine/install/")
    require_tool("kind", "go install sigs.k8s.io/kind@latest, or brew install kind")
    require_tool("kubectl", "https://kubernetes.io/docs/tasks/tools/, or brew install kubectl")
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        missing("a working Docker engine", "start it (`docker info` timed out)")
    if info.returncode != 0:
        first_line = (info.stderr.strip().splitlines() or ["no output"])[0]
        missing("a working Docker engine", f"start it (`docker info`: {first_line})")
    if importlib.util.find_spec("helm_python") is None:
        missing("helm-python-sdk", "make install (the chart extra, from uv.lock)")


def run(args: Sequence[str], *, timeout: float = 300, stdin: str | None = None) -> str:
    """Run a command; fail with its stderr when it fails."""
    result = subprocess.run(
        list(args), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise AssertionError(
            f"`{' '.join(args)}` exited {result.returncode}: {result.stderr.strip()[-2000:]}"
        )
    return result.stdout


class KindCluster:
    """A kind cluster: kubectl with its kubeconfig; pods' ports through kubectl port-forward
    (logs in ``logs``). ``close`` stops every forward."""

    def __init__(self, name: str, kubeconfig: Path, logs: Path, kubectl: str = "kubectl") -> None:
        self.name = name
        self.kubeconfig = kubeconfig
        self.logs = logs
        self.kubectl_binary = kubectl
        # (namespace, pod uid, port) -> the forward and its local port.
        self._forwards: dict[tuple[str, str, int], tuple[Child, int]] = {}

    def kubectl_command(self, *args: str) -> list[str]:
        return [self.kubectl_binary, "--kubeconfig", str(self.kubeconfig), *args]

    def kubectl(self, *args: str, timeout: float = 300) -> str:
        return run(self.kubectl_command(*args), timeout=timeout)

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json"))

    # -- pods' ports ---------------------------------------------------------------------------

    def local_port(self, pod: Obj, port: int) -> int:
        """A port on 127.0.0.1 forwarded to ``pod``'s ``port``; ConnectionError when the pod
        is not running or the forward cannot start (the scenarios count that as unreachable)."""
        meta = pod["metadata"]
        key = (str(meta["namespace"]), str(meta["uid"]), port)
        found = self._forwards.get(key)
        if found is not None:
            child, local = found
            if child.process.poll() is None:
                return local
            # The forward ended (the pod's container restarted or the pod went away).
            del self._forwards[key]
            child.stop()
        phase = (pod.get("status") or {}).get("phase")
        if phase != "Running" or meta.get("deletionTimestamp"):
            raise ConnectionError(f"pod {meta['name']} is {phase}, terminating or gone")
        local = free_port()
        child = Child(
            self.kubectl_command(
                "port-forward",
                "-n",
                str(meta["namespace"]),
                "--address",
                "127.0.0.1",
                f"pod/{meta['name']}",
                f"{local}:{port}",
            ),
            log_path=self.logs / f"port-forward-{meta['name']}-{port}.log",
        )

        def started() -> str | None:
            if child.process.poll() is not None:
                return "exited"
            return "listening" if FORWARD_READY.format(port=local) in child.output() else None

        try:
            state = wait_until(
                started,
                timeout=FORWARD_START_TIMEOUT_SECONDS,
                interval=0.1,
                message=f"kubectl port-forward to {meta['name']}:{port}",
            )
        except AssertionError as exc:
            child.stop()
            raise ConnectionError(str(exc)) from None
        if state == "exited":
            child.stop()
            raise ConnectionError(
                f"kubectl port-forward to {meta['name']}:{port} exited: {child.output()[-500:]}"
            )
        self._forwards[key] = (child, local)
        return local

    def http_get(self, pod: Obj, port: int, path: str) -> str:
        local = self.local_port(pod, port)
        response = httpx.get(f"http://127.0.0.1:{local}{path}", timeout=HTTP_TIMEOUT_SECONDS)
        response.raise_for_status()
        return response.text

    def api_url(self, release: Release, *, timeout: float = 120) -> str:
        """The API of ``release`` at a Ready pod, forwarded (a new pod after a rollout gets a
        forward of its own), like the local control plane's EndpointSlice address."""

        def ready() -> Obj | None:
            for pod in release.pods(self, f"{COMPONENT_LABEL}=api"):
                if condition(pod, "Ready") == "True" and not pod["metadata"].get(
                    "deletionTimestamp"
                ):
                    return pod
            return None

        pod = wait_until(ready, timeout=timeout, interval=1, message="a Ready API pod")
        return f"http://127.0.0.1:{self.local_port(pod, container_port(pod, 'http'))}"

    def redis_client(self, release: Release) -> redis.Redis:
        """The release's Redis through a forward to its pod, with the generated password."""
        (pod,) = release.pods(self, f"{COMPONENT_LABEL}=redis")
        secret = release.one(self, "secret", "redis")
        password = base64.b64decode(secret["data"]["redis-password"]).decode()
        return redis.Redis(
            host="127.0.0.1",
            port=self.local_port(pod, container_port(pod, "redis")),
            password=password,
            socket_timeout=10,
        )

    def close(self) -> None:
        forwards = list(self._forwards.values())
        self._forwards.clear()
        for child, _ in forwards:
            child.terminate()
        for child, _ in forwards:
            child.stop()

    # -- when a test fails ----------------------------------------------------------------------

    def diagnostics(self, namespace: str = NAMESPACE) -> str:
        """What to look at when a test fails: objects, autoscaler state, recent events."""
        sections = []
        for args in (
            ["get", "all,scaledobject,hpa,pvc", "-n", namespace, "-o", "wide"],
            ["describe", "scaledobject", "-n", namespace],
            ["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"],
            ["logs", "-n", KEDA_NAMESPACE, "deployment/keda-operator", "--tail=40"],
            ["logs", "-n", namespace, "-l", f"{COMPONENT_LABEL}=worker", "--tail=20"],
        ):
            try:
                output = self.kubectl(*args, timeout=60)
            except (AssertionError, subprocess.TimeoutExpired) as exc:
                output = str(exc)
            sections.append(f"$ kubectl {' '.join(args)}\n{output}")
        return "\n".join(sections)
