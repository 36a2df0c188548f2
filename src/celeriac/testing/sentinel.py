"""Redis with Sentinel on loopback, in the topology the chart runs."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import redis

from celeriac.local.redis_server import find_redis_server
from celeriac.testing.ports import free_port
from celeriac.testing.redis_server import REDIS_START_TIMEOUT_SECONDS, RedisServer
from celeriac.testing.waits import wait_until

SENTINEL_MASTER = "celeriac"
# The redis.conf directives the chart gives each Redis node with Sentinel on (its defaults;
# tests/chart/test_facts.py holds the rendered chart to them), so tests run the same topology:
# - a master refuses writes while no replica is in sync (a master cut off from its replicas
#   stops accepting writes the failover would discard);
# - a (re)started replica syncs at once: diskless (the master streams its snapshot to the
#   socket) without the 5 s ``repl-diskless-sync-delay`` Redis waits by default for more
#   replicas to share one transfer. With ``min-replicas-to-write`` that delay is an outage:
#   during a failover the new master refuses every write until the returning node has synced.
HA_NODE_CONFIG: tuple[tuple[str, str], ...] = (
    ("min-replicas-to-write", "1"),
    ("min-replicas-max-lag", "10"),
    ("repl-diskless-sync", "yes"),
    ("repl-diskless-sync-delay", "0"),
)


def ha_node_args(config: Sequence[tuple[str, str]] = HA_NODE_CONFIG) -> tuple[str, ...]:
    """``config`` as redis-server arguments (``--name value`` ...)."""
    return tuple(arg for name, value in config for arg in (f"--{name}", value))


class SentinelGroup:
    """Redis with Sentinel on loopback: a master, its replicas and sentinels, real processes.

    Sentinel is the same redis-server binary in sentinel mode (``--sentinel``), so this needs
    nothing beyond ``RedisServer``. Every node and sentinel takes ``password``; the replicas
    replicate from the first node. ``down_after_ms`` is how long a sentinel waits before it
    calls the master down (the failover starts a quorum later).
    """

    def __init__(
        self,
        password: str | None = None,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        node_args: Sequence[str] = (),
        appendfsync: str = "everysec",
    ) -> None:
        self.password = password
        self.master_name = SENTINEL_MASTER
        self.nodes = [
            RedisServer(
                password, appendonly=True, appendfsync=appendfsync, extra_args=tuple(node_args)
            )
            for _ in range(1 + replicas)
        ]
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.extra_args += ("--replicaof", "127.0.0.1", str(first.port))
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.dir = Path(tempfile.mkdtemp(prefix="celeriac-sentinel-"))
        self.sentinels: list[subprocess.Popen[bytes] | None] = [None] * sentinels

    def url(self, db: int = 0) -> str:
        """kombu's form, without the password (celeriac adds it from CELERIAC_REDIS_PASSWORD)."""
        return ";".join(f"sentinel://127.0.0.1:{port}/{db}" for port in self.sentinel_ports)

    def start(self) -> SentinelGroup:
        for node in self.nodes:
            node.start()
        master = self.nodes[0]
        for index, port in enumerate(self.sentinel_ports):
            self._start_sentinel(index, port, master.port)
        replicas = len(self.nodes) - 1
        wait_until(
            lambda: self._master_reports(replicas),
            timeout=REDIS_START_TIMEOUT_SECONDS * 2,
            message=f"sentinels seeing the master with {replicas} replicas",
        )
        return self

    def _start_sentinel(self, index: int, port: int, master_port: int) -> None:
        name = self.master_name
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {self.dir}",
            f"sentinel monitor {name} 127.0.0.1 {master_port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.password:
            lines += [f"sentinel auth-pass {name} {self.password}", f"requirepass {self.password}"]
        config = self.dir / f"sentinel-{index}.conf"
        config.write_text("\n".join(lines) + "\n")
        binary = str(find_redis_server())
        self.sentinels[index] = subprocess.Popen(
            [binary, str(config), "--sentinel", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )

    def sentinel_client(self, index: int = 0) -> redis.Redis:
        return redis.Redis(
            port=self.sentinel_ports[index], password=self.password, socket_timeout=2
        )

    def master_address(self) -> tuple[str, int]:
        """The master's address as the sentinels report it (all must agree)."""
        addresses = set()
        for index, process in enumerate(self.sentinels):
            if process is None or process.poll() is not None:
                continue
            with self.sentinel_client(index) as client:
                host, port = client.sentinel_get_master_addr_by_name(self.master_name)
            addresses.add((str(host), int(port)))
        if len(addresses) != 1:
            raise AssertionError(f"sentinels disagree on the master: {sorted(addresses)}")
        return addresses.pop()

    def master(self) -> RedisServer:
        _host, port = self.master_address()
        return next(node for node in self.nodes if node.port == port)

    def _master_reports(self, replicas: int) -> bool:
        master = self.master()
        with master.client() as client:
            info = client.info("replication")
        online = [
            value
            for key, value in info.items()
            if key.startswith("slave")
            and isinstance(value, dict)
            and value.get("state") == "online"
        ]
        if info.get("role") != "master" or len(online) < replicas:
            return False
        for index in range(len(self.sentinel_ports)):
            with self.sentinel_client(index) as client:
                state = client.sentinel_master(self.master_name)
            if int(state["num-other-sentinels"]) < len(self.sentinel_ports) - 1:
                return False
            if int(state["num-slaves"]) < replicas:
                return False
        return True

    def wait_for_failover(self, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Until the sentinels name another node master and it accepts writes; that node."""

        def promoted() -> RedisServer | None:
            master = self.master()
            if master is old:
                return None
            with master.client() as client:
                return master if client.info("replication").get("role") == "master" else None

        return wait_until(promoted, timeout=timeout, message="a failover to a new master")

    def wait_until_replicating(self, node: RedisServer, timeout: float = 30.0) -> None:
        """Until ``node`` (restarted) is a replica of the current master with its link up."""

        def replicating() -> bool:
            with node.client() as client:
                info = client.info("replication")
            return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")

        wait_until(replicating, timeout=timeout, message=f"node {node.port} replicating")

    def close(self) -> None:
        for process in self.sentinels:
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=10)
        for node in self.nodes:
            node.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SentinelGroup:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
