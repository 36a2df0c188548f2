"""Half-open connections: real sockets whose peer stops answering without closing.

Every connection goes through ``celeriac.testing.HalfOpenProxy``, which can stop forwarding
in both directions without closing either socket: to the client and to Redis this is exactly
a half-open connection (an expired NAT or conntrack entry, a load balancer that cut an idle
flow, a network blip), while new connections work. The transport must drop such a connection
within the socket timeout and consume again on a new one, losing nothing; a worker that cannot
come back must fail its liveness probe within the stall time.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import kombu
import pytest
import redis
from celery import Celery

from celeriac.app import create_app
from celeriac.broker import TRANSPORT, Transport
from celeriac.broker.poller import Poller
from celeriac.settings import Settings
from celeriac.testing import (
    Child,
    HalfOpenProxy,
    NewConnections,
    RedisServer,
    celeriac_command,
    wait_until,
)
from tests.integration.support import workers
from tests.support import REPO_ROOT

pytestmark = pytest.mark.integration

Spawn = Callable[..., Child]
QUEUE = "half-open"
TASKS_APP = "tests.integration.apps.worker_tasks:app"
# Short, so that the tests are quick; the default is 5 (README "Silent consumers" measures it).
SOCKET_TIMEOUT_SECONDS = 2.0
# The doorbell wait of a fetch (kombu's default brpop_timeout): a live Redis replies within it.
FETCH_WAIT_SECONDS = 1.0
# The bound: back within the socket timeout plus a few seconds of the fault.
RESUME_SECONDS = FETCH_WAIT_SECONDS + SOCKET_TIMEOUT_SECONDS + 5
STALL_SECONDS = 4


@pytest.fixture
def proxy(redis_server: RedisServer, redis_url: str) -> Iterator[HalfOpenProxy]:
    with HalfOpenProxy(redis_server.port) as proxy:
        yield proxy


# --- the transport alone: celeriac's versions of kombu's health-check tests -------------------


def consumer_connection(port: int) -> kombu.Connection:
    return kombu.Connection(
        f"redis://127.0.0.1:{port}/0",
        transport=TRANSPORT,
        transport_options={"socket_timeout": SOCKET_TIMEOUT_SECONDS},
    )


def start_consuming(conn: kombu.Connection, received: list[Any]) -> tuple[Any, kombu.Queue]:
    """A consumer with acknowledgements on ``QUEUE``, its fetch in flight (waiting on the
    doorbell)."""
    queue = kombu.Queue(QUEUE, kombu.Exchange(QUEUE), routing_key=QUEUE)
    channel: Any = conn.channel()
    consumer = kombu.Consumer(channel, [queue], accept=["json"])

    def on_message(body: Any, message: Any) -> None:
        received.append(body)
        message.ack()

    consumer.register_callback(on_message)
    consumer.consume()
    # The first fetch finds nothing; the next one waits on the doorbell first.
    for _ in range(2):
        drain(conn, 0.2)
    assert channel._in_poll
    return channel, queue


def drain(conn: kombu.Connection, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        conn.drain_events(timeout=seconds)


def drain_until(conn: kombu.Connection, received: list[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not received and time.monotonic() < deadline:
        drain(conn, 0.5)


def publish(url: str, queue: kombu.Queue, body: dict[str, str]) -> None:
    """Through celeriac's transport on a direct connection: the doorbell rings."""
    with kombu.Connection(url, transport=TRANSPORT) as conn:
        kombu.Producer(conn).publish(
            body, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue]
        )


def test_half_open_connection_dropped_and_consumption_resumes(
    proxy: HalfOpenProxy, redis_url: str, redis_client: redis.Redis
) -> None:
    """kombu's ``t/integration/test_redis.py::test_RedisBrpopHealthCheck::
    test_half_open_connection_dropped_and_consumption_resumes``, on celeriac's fetch: its
    reply is overdue, the connection is dropped, the next poll fetches on a new one.

    Harder than kombu's: the message is published while the fetch waits on the doorbell,
    so Redis runs the fetch script and its reply (the message) is lost with the connection;
    it must come back from Redis, not from the visibility timeout an hour later.
    """
    received: list[Any] = []
    with consumer_connection(proxy.port) as conn:
        channel, queue = start_consuming(conn, received)
        proxy.freeze()
        publish(redis_url, queue, {"msg": "recovered"})
        # The script ran on the server: the message is held, its reply lost.
        wait_until(lambda: redis_client.hlen("unacked") == 1, message="the lost fetch")
        started = time.monotonic()
        drain_until(conn, received, timeout=RESUME_SECONDS)
        assert received == [{"msg": "recovered"}]
        assert time.monotonic() - started < RESUME_SECONDS
        assert channel.client.connection._sock is not None  # a new connection
    assert redis_client.hlen("unacked") == 0


def test_half_open_connection_dropped_by_drain_events(proxy: HalfOpenProxy, redis_url: str) -> None:
    """kombu's ``..._dropped_by_drain_events``: without an event loop (no timers), an idle
    ``drain_events`` runs the check; the message published before the fault is consumed."""
    received: list[Any] = []
    with consumer_connection(proxy.port) as conn:
        channel, queue = start_consuming(conn, received)
        dead = channel.client.connection._sock
        proxy.freeze()
        # A plain kombu producer rings no doorbell: the message waits for the next fetch.
        with kombu.Connection(redis_url) as plain:
            kombu.Producer(plain).publish(
                {"msg": "recovered"}, exchange=queue.exchange, routing_key=queue.routing_key
            )
        drain_until(conn, received, timeout=RESUME_SECONDS)
        assert received == [{"msg": "recovered"}]
        assert channel.client.connection._sock not in (None, dead)  # a new connection


def test_live_connection_with_unread_reply_not_dropped(
    proxy: HalfOpenProxy, redis_url: str
) -> None:
    """kombu's ``test_live_connection_with_unread_reply_not_dropped``: a reply that arrived
    while the loop was busy keeps the socket, however overdue by the clock."""
    received: list[Any] = []
    with consumer_connection(proxy.port) as conn:
        channel, queue = start_consuming(conn, received)
        connection = channel.client.connection
        sock = connection._sock
        # The server answers the fetch (nothing found) and nobody reads it yet.
        sent_at = channel._brpop_sent_at
        wait_until(
            lambda: time.monotonic() - sent_at > FETCH_WAIT_SECONDS + SOCKET_TIMEOUT_SECONDS + 1,
            timeout=RESUME_SECONDS,
            message="the reply overdue by the clock",
        )
        cast(Poller, cast(Transport, conn.transport).cycle).check_connections()
        assert connection._sock is sock
        publish(redis_url, queue, {"msg": "alive"})
        drain_until(conn, received, timeout=RESUME_SECONDS)
    assert received == [{"msg": "alive"}]


# --- a worker: fetch, doorbell, fanout and result backend, main and pool processes ------------


def worker_env(url: str, tmp_path: Path) -> dict[str, str]:
    settings = {
        "app": TASKS_APP,
        "queues": QUEUE,
        "worker_hostname": "h@test",
        "worker_stall_seconds": str(STALL_SECONDS),
        "redis_socket_timeout_seconds": str(SOCKET_TIMEOUT_SECONDS),
    }
    return workers.worker_env(url, tmp_path, "h", **settings) | {"PYTHONPATH": str(REPO_ROOT)}


def probe(env: dict[str, str]) -> int:
    return subprocess.run(
        celeriac_command("probe", "worker"),
        env={**os.environ, **env},
        capture_output=True,
        timeout=30,
        check=False,
    ).returncode


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    # Directly to Redis: only the worker's connections go through the proxy.
    app = create_app("test-half-open-producer", Settings(broker_url=redis_url, queues=(QUEUE,)))
    yield app
    app.close()


def run_tasks(producer: Celery, count: int) -> list[Any]:
    return [producer.send_task("tests.record", queue=QUEUE) for _ in range(count)]


def all_succeeded(results: list[Any]) -> bool:
    return all(result.state == "SUCCESS" for result in results)


def assert_each_ran_once(client: redis.Redis, results: list[Any]) -> None:
    runs = [int(client.get(f"runs:{result.id}") or 0) for result in results]
    assert runs == [1] * len(results)


def test_worker_resumes_on_new_connections_and_loses_nothing(
    spawn: Spawn,
    proxy: HalfOpenProxy,
    redis_client: redis.Redis,
    producer: Celery,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every connection of the worker (main and pool processes: fetch, doorbell wait, fanout,
    acks, result backend) goes half-open at once: it takes work again, stores results and
    answers remote control within the socket timeout plus a few seconds, and runs every task
    once; its probe passes throughout."""
    env = worker_env(f"redis://127.0.0.1:{proxy.port}/0", tmp_path)
    worker = workers.spawn_ready_worker(spawn, env, "h")
    # Warm: pool processes hold result-backend connections, the fanout is subscribed.
    warm = run_tasks(producer, 5)
    wait_until(lambda: all_succeeded(warm), timeout=30, message="the warm-up tasks")
    assert proxy.freeze() > 0
    frozen_at = time.monotonic()
    results = run_tasks(producer, 10)
    wait_until(
        lambda: all_succeeded(results),
        timeout=RESUME_SECONDS + SOCKET_TIMEOUT_SECONDS,
        message=f"every task run after the fault; log:\n{worker.output()[-3000:]}",
    )
    resumed = time.monotonic() - frozen_at
    assert_each_ran_once(redis_client, warm + results)
    assert redis_client.hlen("unacked") == 0
    # The fanout (remote control) resubscribed on a new connection.
    replies = wait_until(
        lambda: producer.control.ping(destination=["h@test"], timeout=1),
        timeout=RESUME_SECONDS,
        message=f"a reply to remote control; log:\n{worker.output()[-3000:]}",
    )
    assert replies == [{"h@test": {"ok": "pong"}}]
    assert probe(env) == 0
    assert "the connection is half-open; dropping it" in worker.output()
    with capsys.disabled():
        print(f"\nhalf-open: every task done {resumed:.1f}s after the fault")


def stall_check_port(client: redis.Redis) -> int:
    """The port the worker's stall check connects from (to Redis: the proxy's side)."""
    for info in client.client_list():
        if info.get("name") == "celeriac-worker-stall-check":
            return int(str(info["addr"]).rsplit(":", 1)[1])
    raise AssertionError("no stall-check connection")


@pytest.mark.parametrize("new", ["freeze", "refuse"])
def test_probe_fails_while_the_consumer_cannot_come_back_and_passes_once_it_does(
    new: NewConnections,
    spawn: Spawn,
    proxy: HalfOpenProxy,
    redis_client: redis.Redis,
    producer: Celery,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Redis answers the stall check but no connection of the consumer, old or new: new ones
    half-open too (the transport's poller drops and retries them, the consumer still says it
    consumes) or refused (Celery's consumer loses its connection and retries for ever, no
    longer "consuming"). Either way the probe fails within the stall time. Once the network
    heals the worker consumes, runs every task once and its probe passes."""
    env = worker_env(f"redis://127.0.0.1:{proxy.port}/0", tmp_path)
    worker = workers.spawn_ready_worker(spawn, env, "h")
    warm = run_tasks(producer, 2)
    wait_until(lambda: all_succeeded(warm), timeout=30, message="the warm-up tasks")
    spare = wait_until(lambda: stall_check_port(redis_client), message="the stall check")
    proxy.freeze(spare={spare}, new=new)
    frozen_at = time.monotonic()
    results = run_tasks(producer, 4)
    wait_until(
        lambda: probe(env) == 1,
        timeout=STALL_SECONDS + RESUME_SECONDS,
        message=f"the probe to fail; log:\n{worker.output()[-3000:]}",
    )
    failed_after = time.monotonic() - frozen_at
    assert "consumer stalled, liveness fails from now" in worker.output()
    proxy.thaw()
    wait_until(
        lambda: all_succeeded(results),
        timeout=60,
        message=f"every task run after the network healed; log:\n{worker.output()[-3000:]}",
    )
    assert_each_ran_once(redis_client, warm + results)
    wait_until(lambda: probe(env) == 0, timeout=30, message="the probe to pass again")
    with capsys.disabled():
        print(f"\nhalf-open, new connections {new}: probe failed {failed_after:.1f}s after")
