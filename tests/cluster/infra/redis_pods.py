"""The release's Redis pods with Sentinel, asked directly at their pod addresses (routed to the
node) with the generated password: which pod the sentinels name master, each pod's role, and
whether they all agree. test_redis_sentinel.py and soak.py share it."""

from __future__ import annotations

import base64
from typing import Any

import redis

from tests.cluster.infra.controlplane import ControlPlane
from tests.scenarios import scenario
from tests.scenarios.scenario import COMPONENT_LABEL, Obj, Release

# The chart's defaults with redis.sentinel.enabled.
REDIS_PORT = 6379
SENTINEL_PORT = 26379
MASTER_NAME = "celeriac"  # redis.sentinel.masterName
REDIS_PODS = 3  # redis.replicas


class RedisPods:
    """The release's Redis pods, reached at their addresses with the generated password."""

    def __init__(self, plane: ControlPlane, release: Release) -> None:
        self.plane = plane
        self.release = release
        secret = release.one(plane, "secret", "redis")
        self.password = base64.b64decode(secret["data"]["redis-password"]).decode()

    def pods(self) -> dict[str, Obj]:
        """Pod name -> pod, of the pods that have an address and are not going away."""
        return {
            pod["metadata"]["name"]: pod
            for pod in self.release.pods(self.plane, f"{COMPONENT_LABEL}=redis")
            if pod["status"].get("podIP") and not pod["metadata"].get("deletionTimestamp")
        }

    def ask(self, pod: Obj, port: int, *command: object) -> Any:
        """One command to the pod's redis-server or sentinel (a fresh connection)."""
        with redis.Redis(
            pod["status"]["podIP"], port, password=self.password, socket_timeout=2
        ) as client:
            return client.execute_command(*command)

    def master_named_by(self, pod: Obj) -> str | None:
        """The pod the sentinel of ``pod`` names master (its name: the first label of the
        headless Service's name it answers), None when it knows none."""
        reply = self.ask(pod, SENTINEL_PORT, "SENTINEL", "get-master-addr-by-name", MASTER_NAME)
        if not reply:
            return None
        host: str = reply[0].decode()
        port = int(reply[1])
        assert port == REDIS_PORT, reply
        return host.split(".", 1)[0]

    def role(self, pod: Obj) -> tuple[str, str | None]:
        """("master", None), or ("slave", the master's pod name once the link is up)."""
        info = self.ask(pod, REDIS_PORT, "INFO", "replication")
        if isinstance(info, bytes):
            info = dict(
                line.split(":", 1)
                for line in info.decode().splitlines()
                if ":" in line and not line.startswith("#")
            )
        if info["role"] == "master":
            return "master", None
        up = info["master_link_status"] == "up"
        return "slave", str(info["master_host"]).split(".", 1)[0] if up else None

    def master(self) -> Obj:
        """The pod the sentinels name master (the first sentinel that answers)."""
        pods = self.pods()
        for pod in pods.values():
            try:
                name = self.master_named_by(pod)
            except redis.RedisError:
                continue
            if name in pods:
                return pods[name]
        raise RuntimeError("no sentinel names a master")

    def settled(self) -> str | None:
        """The master's pod name when every pod is up, every sentinel names it and knows the
        others, it is master and every other pod replicates it with the link up."""
        pods = self.pods()
        if len(pods) != REDIS_PODS or scenario.not_ready(pods.values()):
            return None
        named = {self.master_named_by(pod) for pod in pods.values()}
        if len(named) != 1 or None in named:
            return None
        (master,) = named
        assert master is not None
        for name, pod in pods.items():
            sentinels = self.ask(pod, SENTINEL_PORT, "SENTINEL", "sentinels", MASTER_NAME)
            expected = ("master", None) if name == master else ("slave", master)
            if len(sentinels) != REDIS_PODS - 1 or self.role(pod) != expected:
                return None
        return master
