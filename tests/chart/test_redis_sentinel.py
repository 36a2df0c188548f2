"""The chart's Redis start-up scripts (ConfigMap start-redis.sh, start-sentinel.sh, ha.sh), run as
rendered against real redis-server processes: three "pods" on 127.0.0.1-3, each a redis-server
and a sentinel started by the scripts. Only what a pod provides is filled in: each pod's own
directories for the mounted paths, its loopback address for its DNS name, free ports, and a
bind to that address (in a pod each process has the pod's network to itself)."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celeriac.local.redis_server import find_redis_server
from celeriac.testing import wait_until
from tests.chart.render import render

pytestmark = [pytest.mark.chart, pytest.mark.integration]

PASSWORD = "s3cret-for-the-test"
MASTER = "celeriac"
PODS = 3
ADDRESSES = [f"127.0.0.{i + 1}" for i in range(PODS)]


def free_port_on_every_address() -> int:
    """A port free on every pod address, below the ephemeral range (an outgoing connection from
    one pod to another must not already hold it)."""
    while True:
        port = random.randrange(20000, 32000)
        try:
            for address in ADDRESSES:
                with socket.socket() as probe:
                    probe.bind((address, port))
        except OSError:
            continue
        return port


class Pod:
    """One Redis pod: its directories, its scripts and its two processes."""

    def __init__(self, root: Path, ordinal: int, data: dict[str, str], ports: tuple[int, int]):
        self.ordinal = ordinal
        self.address = ADDRESSES[ordinal]
        self.redis_port, self.sentinel_port = ports
        self.dir = root / f"celeriac-redis-{ordinal}"
        for sub in ("config", "auth", "tmp", "sentinel", "data"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "auth" / "password").write_text(PASSWORD, encoding="utf-8")
        head = data["ha.sh"]
        for name, value in {
            "HOSTS": " ".join(ADDRESSES),
            "REDIS_PORT": str(self.redis_port),
            "SENTINEL_PORT": str(self.sentinel_port),
            "PASSWORD_FILE": str(self.dir / "auth" / "password"),
            "CONFIG_DIR": str(self.dir / "config"),
            "RUN_DIR": str(self.dir / "tmp"),
            "SENTINEL_DIR": str(self.dir / "sentinel"),
        }.items():
            head, count = re.subn(rf"(?m)^{name}=.*$", f"{name}='{value}'", head)
            assert count == 1, name
        config = data["redis.conf"].replace("bind * -::*", f"bind {self.address}")
        config = config.replace("dir /data", f"dir {self.dir / 'data'}")
        sentinel = data["start-sentinel.sh"].replace(
            'sentinel.conf" --sentinel', f'sentinel.conf" --sentinel --bind {self.address}'
        )
        assert f"--bind {self.address}" in sentinel
        files = {
            "ha.sh": head,
            "redis.conf": config,
            "start-redis.sh": data["start-redis.sh"],
            "start-sentinel.sh": sentinel,
        }
        for name, text in files.items():
            (self.dir / "config" / name).write_text(text, encoding="utf-8")
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, container: str, bin_dir: Path) -> None:
        env = {
            **os.environ,
            "POD_NAME": f"celeriac-redis-{self.ordinal}",
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
        }
        with (self.dir / f"{container}.log").open("ab") as log:
            self.processes[container] = subprocess.Popen(
                ["sh", str(self.dir / "config" / f"start-{container}.sh")],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self, container: str) -> None:
        process = self.processes.pop(container)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def redis(self, *command: object) -> Any:
        """One command to this pod's redis-server (a fresh connection, closed after)."""
        return self._ask(self.redis_port, command)

    def sentinel(self, *command: object) -> Any:
        """One command to this pod's sentinel."""
        return self._ask(self.sentinel_port, command)

    def _ask(self, port: int, command: tuple[object, ...]) -> Any:
        with redis.Redis(self.address, port, password=PASSWORD, socket_timeout=2) as client:
            return client.execute_command(*command)

    def master_seen_by_sentinel(self) -> str | None:
        reply = self.sentinel("SENTINEL", "get-master-addr-by-name", MASTER)
        return reply[0].decode() if reply else None

    def log(self, container: str) -> str:
        return (self.dir / f"{container}.log").read_text(encoding="utf-8", errors="replace")


def role(pod: Pod) -> tuple[str, str | None]:
    """("master", None), or ("slave", the master's address once the link is up)."""
    info = pod.redis("INFO", "replication")
    if info["role"] == "master":
        return "master", None
    return "slave", str(info["master_host"]) if info["master_link_status"] == "up" else None


def last_start(pod: Pod) -> str:
    """How the pod's redis start-up script last started it."""
    return [line for line in pod.log("redis").splitlines() if line.startswith("starting as")][-1]


@pytest.fixture
def bin_dir() -> Path:
    """Where redis-server and redis-cli are (the scripts call them by name)."""
    server = find_redis_server()
    if not (server.parent / "redis-cli").exists():
        pytest.skip("no redis-cli next to redis-server")
    return server.parent


@pytest.fixture
def pods(tmp_path: Path, bin_dir: Path) -> Iterator[list[Pod]]:
    rendered = render(
        {
            "redis": {
                "sentinel": {
                    "enabled": True,
                    "downAfterMilliseconds": 3000,
                    "failoverTimeoutMilliseconds": 6000,
                }
            }
        }
    )
    data = rendered.get("ConfigMap", "celeriac-redis")["data"]
    ports = (free_port_on_every_address(), free_port_on_every_address())
    group = [Pod(tmp_path, i, data, ports) for i in range(PODS)]
    try:
        yield group
    finally:
        for pod in group:
            for container in list(pod.processes):
                pod.kill(container)


def start_pod(pod: Pod, bin_dir: Path) -> None:
    pod.start("sentinel", bin_dir)
    pod.start("redis", bin_dir)
    wait_until(lambda: pod.redis("PING"), message=f"redis of pod {pod.ordinal}")
    wait_until(lambda: pod.sentinel("PING"), message=f"sentinel of pod {pod.ordinal}")


def test_bootstrap_failover_and_restart_as_a_replica(pods: list[Pod], bin_dir: Path) -> None:
    # As OrderedReady starts them: pod 0, then 1, then 2.
    for pod in pods:
        start_pod(pod, bin_dir)
    first = ADDRESSES[0]
    assert role(pods[0]) == ("master", None)
    for pod in pods[1:]:
        wait_until(lambda pod=pod: role(pod) == ("slave", first), message="replica of pod 0")
    for pod in pods:
        assert wait_until(lambda pod=pod: pod.master_seen_by_sentinel()) == first
        # Every sentinel found the two others (same ids across restarts: myid).
        wait_until(
            lambda pod=pod: len(pod.sentinel("SENTINEL", "sentinels", MASTER)) == PODS - 1,
            timeout=15,
            message="sentinels discover each other",
        )
    # One connection: WAIT counts the replicas that have this connection's writes.
    with redis.Redis(first, pods[0].redis_port, password=PASSWORD) as master:
        master.set("task", "kept")
        assert master.execute_command("WAIT", 2, 2000) == 2

    # Pod 0 is lost (both containers): the two sentinels left promote a replica.
    pods[0].kill("redis")
    pods[0].kill("sentinel")
    new_master = wait_until(
        lambda: (
            pods[1].master_seen_by_sentinel() not in (None, first)
            and pods[1].master_seen_by_sentinel()
        ),
        # Down after 3 s, then an election; a split vote retries after twice the failover
        # timeout (12 s), as Sentinel documents: a loaded machine can need two rounds.
        timeout=60,
        message="failover",
    )
    promoted = pods[ADDRESSES.index(new_master)]
    wait_until(lambda: role(promoted) == ("master", None), message="promoted replica")

    # Pod 0 comes back: its scripts ask the other sentinels and it joins as a replica.
    start_pod(pods[0], bin_dir)
    wait_until(lambda: role(pods[0]) == ("slave", new_master), timeout=20, message="pod 0 replica")
    assert last_start(pods[0]) == f"starting as a replica of {new_master} {promoted.redis_port}"
    assert pods[0].redis("GET", "task") == b"kept"
    assert wait_until(lambda: pods[0].master_seen_by_sentinel() == new_master, timeout=20)
    conf = (pods[0].dir / "sentinel" / "sentinel.conf").read_text(encoding="utf-8")
    assert "sentinel monitor celeriac" in conf
    assert PASSWORD in conf  # in the pod's emptyDir only, never in the rendered objects

    # The master's redis restarts before the sentinels notice: it waits for the failover
    # instead of starting as a master with a stale data set.
    promoted.kill("redis")
    promoted.start("redis", bin_dir)
    wait_until(lambda: promoted.redis("PING"), timeout=30, message="old master back")
    wait_until(
        lambda: role(promoted)[0] == "slave" and role(promoted)[1] is not None,
        timeout=20,
        message="old master back as a replica",
    )
    assert last_start(promoted).startswith("starting as a replica of 127.0.0.")
    assert last_start(promoted) != f"starting as a replica of {new_master} {promoted.redis_port}"
