"""A submit the API answered 202 survives a Redis process crash; one it answered 503 leaves nothing.

Real ``celeriac api`` processes and redis-server processes with an AOF (fsync every second, as
the chart's Redis). Redis is SIGKILLed (no shutdown, no final flush) and restarted from its
AOF. Redis writes the AOF to the operating system before it replies, so a process crash loses
nothing acknowledged; only a crash of the node (the OS page cache) can lose up to a second
with ``appendfsync everysec`` (the chart's README says what ``always`` costs).

What is checked in Redis afterwards, by reading it directly: the task messages in every
priority list of the queue, and the API's id records (``celeriac:api:task:<id>``). They must
pair up exactly: no record without its message (GET would report a task that never runs) and
no message without its record (a task the client was told failed, which runs anyway).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from celeriac.api.tracking import RECORD_PREFIX
from celeriac.broker.keys import priority_list_keys
from celeriac.testing import Child, RedisServer, celeriac_command, free_port, wait_until

pytestmark = pytest.mark.integration

TOKEN = "durability-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUEUE = "default"
PRIORITY_STEPS = (0, 3, 6, 9)
DEADLINE = 30.0
SOCKET_TIMEOUT_SECONDS = 2
# A 503 answers within about two socket timeouts (one retry), never waiting for Redis.
UNAVAILABLE_WITHIN_SECONDS = 2 * SOCKET_TIMEOUT_SECONDS + 1

Spawn = Callable[..., Child]


class AlwaysFsync(RedisServer):
    """A Redis with an AOF fsynced before every reply (``appendfsync always``), each start.

    With ``everysec`` a process crash loses nothing acknowledged only while the disk keeps up:
    when a background fsync is still running, Redis postpones writing its AOF buffer (up to
    2 s) and replies anyway, and a SIGKILL then loses what it acknowledged meanwhile. Seen
    here on a busy disk; ``test_everysec_loses_nothing_written_to_the_os`` covers everysec.
    """

    def __init__(self) -> None:
        super().__init__(appendonly=True)

    def start(self) -> AlwaysFsync:
        super().start()
        with self.client() as r:
            r.config_set("appendfsync", "always")
        return self


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    server = AlwaysFsync().start()
    yield server
    server.close()


@pytest.fixture
def durable_results() -> Iterator[RedisServer]:
    """A second Redis for results (and the API's id records), apart from the broker."""
    server = AlwaysFsync().start()
    yield server
    server.close()


@pytest.fixture
def everysec_redis() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True).start()
    yield server
    server.close()


@pytest.fixture
def client() -> Iterator[list[httpx.Client]]:
    made: list[httpx.Client] = []
    yield made
    for each in made:
        each.close()


def start_api(
    spawn: Spawn, clients: list[httpx.Client], broker: RedisServer, results: RedisServer | None
) -> httpx.Client:
    port = free_port()
    env = {
        "CELERIAC_BROKER_URL": broker.url(),
        "CELERIAC_API_TOKENS": TOKEN,
        "CELERIAC_REDIS_SOCKET_TIMEOUT_SECONDS": str(SOCKET_TIMEOUT_SECONDS),
        "CELERIAC_PRIORITY_STEPS": ",".join(map(str, PRIORITY_STEPS)),
    }
    if results is not None:
        env["CELERIAC_RESULT_BACKEND_URL"] = results.url()
    api = spawn(
        celeriac_command("api", "--host", "127.0.0.1", "--port", str(port)), env=env, name="api"
    )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15)
    clients.append(http)

    def ready() -> bool:
        api.check_alive()
        return http.get("/readyz").status_code == 200

    wait_until(ready, timeout=DEADLINE, message="celeriac api ready")
    return http


def post(http: httpx.Client, n: int) -> httpx.Response:
    # Priorities spread the messages over every priority list of the queue.
    body = {"task": "celeriac.demo.add", "args": [n, n], "priority": (n % 4) * 3}
    return http.post("/v1/tasks", json=body, headers=AUTH)


def submit(http: httpx.Client, n: int) -> str:
    response = post(http, n)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


def queued_ids(server: RedisServer) -> list[str]:
    """The id of every message waiting in the queue, from every priority list (duplicates kept)."""
    with server.client() as r:
        ids = []
        for key in priority_list_keys(QUEUE, PRIORITY_STEPS):
            ids += [json.loads(raw)["headers"]["id"] for raw in r.lrange(key, 0, -1)]
        return ids


def recorded_ids(server: RedisServer) -> set[str]:
    """Every id the API has a record of."""
    with server.client() as r:
        return {
            key.decode().removeprefix(RECORD_PREFIX)
            for key in r.scan_iter(match=f"{RECORD_PREFIX}*", count=1000)
        }


def assert_unavailable(response: httpx.Response, elapsed: float) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "5"
    assert response.json() == {"detail": "Redis is unavailable; retry later"}
    assert elapsed < UNAVAILABLE_WITHIN_SECONDS


def refused_during_outage(http: httpx.Client, count: int) -> None:
    for n in range(count):
        started = time.monotonic()
        response = post(http, n)
        assert_unavailable(response, time.monotonic() - started)


def wait_ready(http: httpx.Client) -> None:
    wait_until(
        lambda: http.get("/readyz").status_code == 200,
        timeout=DEADLINE,
        message="readyz after Redis restarted",
    )


def test_accepted_submits_survive_a_redis_sigkill(
    spawn: Spawn, client: list[httpx.Client], durable_redis: RedisServer
) -> None:
    http = start_api(spawn, client, durable_redis, None)
    accepted = [submit(http, n) for n in range(300)]
    # Killed as soon as the last 202 is read.
    durable_redis.kill()
    durable_redis.start()
    check_survived(http, durable_redis, accepted)


def test_everysec_loses_nothing_written_to_the_os(
    spawn: Spawn, client: list[httpx.Client], everysec_redis: RedisServer
) -> None:
    """everysec: what Redis has written to the OS survives a crash of the process."""
    http = start_api(spawn, client, everysec_redis, None)
    accepted = [submit(http, n) for n in range(300)]
    with everysec_redis.client() as r:
        # Not yet written while a slow background fsync postpones the write (see AlwaysFsync).
        wait_until(
            lambda: r.info("persistence")["aof_buffer_length"] == 0,
            message="Redis's AOF buffer written to the OS",
        )
    everysec_redis.kill()
    everysec_redis.start()
    check_survived(http, everysec_redis, accepted)


def check_survived(http: httpx.Client, durable_redis: RedisServer, accepted: list[str]) -> None:

    queued = queued_ids(durable_redis)
    assert sorted(queued) == sorted(accepted)  # every message, each once
    assert recorded_ids(durable_redis) == set(accepted)
    with durable_redis.client() as r:
        # Spread over the priority lists, so each list was restored, not only the first.
        assert all(r.llen(key) == 75 for key in priority_list_keys(QUEUE, PRIORITY_STEPS))

    # The API's pooled connections died with Redis; it recovers without a restart.
    wait_ready(http)
    for task_id in accepted:
        response = http.get(f"/v1/tasks/{task_id}", headers=AUTH)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert (body["state"], body["task"], body["queue"]) == (
            "PENDING",
            "celeriac.demo.add",
            QUEUE,
        )
    submit(http, 0)  # and accepts again


def test_a_submit_during_the_outage_is_refused_and_leaves_nothing(
    spawn: Spawn, client: list[httpx.Client], durable_redis: RedisServer
) -> None:
    http = start_api(spawn, client, durable_redis, None)
    before = [submit(http, n) for n in range(20)]
    durable_redis.kill()

    refused_during_outage(http, 5)
    durable_redis.start()
    wait_ready(http)
    # The first submit after the outage is accepted: no API restart, no second try needed.
    after = submit(http, 99)

    accepted = {*before, after}
    assert sorted(queued_ids(durable_redis)) == sorted(accepted)
    assert recorded_ids(durable_redis) == accepted
    # Nothing else was left behind: every other key is kombu's binding or celeriac's doorbell.
    lists = priority_list_keys(QUEUE, PRIORITY_STEPS)
    with durable_redis.client() as r:
        others = [
            name
            for name in (key.decode() for key in r.scan_iter(count=1000))
            if not name.startswith(RECORD_PREFIX) and name not in lists
        ]
    assert others, "kombu's binding of the queue is expected"
    # Bindings, doorbells and the API's list of recent ids (GET /v1/tasks) only.
    allowed = ("_kombu.", "celeriac:wake:", "celeriac:api:recent")
    assert all(name.startswith(allowed) for name in others), others


def test_submits_while_redis_is_killed_pair_message_and_record(
    spawn: Spawn, client: list[httpx.Client], durable_redis: RedisServer
) -> None:
    """Four clients submit without pause while Redis is SIGKILLed under them."""
    http = start_api(spawn, client, durable_redis, None)
    accepted: list[str] = []
    statuses: list[int] = []
    stop = threading.Event()

    def keep_submitting(worker: int) -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            response = post(http, worker * 100_000 + n)
            statuses.append(response.status_code)
            if response.status_code == 202:
                accepted.append(response.json()["id"])
            else:
                assert response.status_code == 503, response.text

    with ThreadPoolExecutor(max_workers=4) as pool:
        running = [pool.submit(keep_submitting, worker) for worker in range(4)]
        try:
            wait_until(lambda: len(accepted) >= 100, timeout=DEADLINE, message="100 submits")
            durable_redis.kill()
            wait_until(lambda: 503 in statuses, timeout=DEADLINE, message="a 503 in the outage")
            durable_redis.start()
            restarted_at = len(statuses)
            # Accepted again, without an API restart.
            wait_until(
                lambda: Counter(statuses[restarted_at:])[202] >= 100,
                timeout=DEADLINE,
                message="100 submits accepted after Redis restarted",
            )
        finally:
            stop.set()
        for future in running:
            future.result()  # a client's own failure (an unexpected status) is raised here

    queued = queued_ids(durable_redis)
    recorded = recorded_ids(durable_redis)
    assert set(accepted) <= set(queued)  # nothing acknowledged is lost
    # A submit cut by the kill is written whole or not at all (MULTI/EXEC, and Redis drops a
    # transaction the AOF holds only part of); one whose reply was lost got a 503 but may be
    # there, whole: at least once, as any Celery producer.
    assert set(queued) == recorded


def test_separate_results_redis_no_record_without_message_nor_the_reverse(
    spawn: Spawn,
    client: list[httpx.Client],
    durable_redis: RedisServer,
    durable_results: RedisServer,
) -> None:
    """Results in another Redis: the record and the message cannot share a transaction."""
    http = start_api(spawn, client, durable_redis, durable_results)
    accepted = {submit(http, n) for n in range(20)}

    # Broker down, results up: the record written first is taken back.
    durable_redis.kill()
    refused_during_outage(http, 5)
    assert recorded_ids(durable_results) == accepted
    durable_redis.start()
    wait_ready(http)
    accepted.add(submit(http, 1))

    # Results down, broker up: nothing is published that the client could not look up.
    durable_results.kill()
    refused_during_outage(http, 5)
    durable_results.start()
    wait_ready(http)
    accepted.add(submit(http, 2))

    assert sorted(queued_ids(durable_redis)) == sorted(accepted)
    assert recorded_ids(durable_results) == accepted
    for task_id in accepted:
        assert http.get(f"/v1/tasks/{task_id}", headers=AUTH).status_code == 200
