"""No task lost when Redis restarts or connections drop mid-delivery; workers survive it all.

Real redis-server processes with an AOF (fsync every second, as the chart's Redis) are
SIGKILLed and restarted from it, client connections are killed with CLIENT KILL, and workers are
SIGKILLed right after they fetched. Tasks append their id to a file, so runs are counted without
Redis. At-least-once: a task may run twice (its worker's connection died while it ran, so its
acknowledgement was lost, or Celery cancelled it on the connection loss and it was put back);
the tests count such duplicates and print them, and fail on any task that never ran.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from celeriac.app import create_app
from celeriac.broker.keys import UNACKED_KEY
from celeriac.settings import Settings
from celeriac.testing import Child, RedisServer, wait_until
from tests.integration.support.workers import runs as runs_of
from tests.integration.support.workers import spawn_ready_worker, worker_env

pytestmark = pytest.mark.integration

TASKS_APP = "tests.integration.apps.worker_tasks:app"
# Held messages of a killed worker come back after this; short, so a test need not wait long.
VISIBILITY_TIMEOUT_SECONDS = "10"
DRAIN_DEADLINE_SECONDS = 240

Spawn = Callable[..., Child]


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    # appendfsync always: with everysec Redis itself may drop acknowledged writes when it is
    # killed while an fsync is slow (README "Durability"); these tests are about the transport.
    server = RedisServer(appendonly=True, appendfsync="always").start()
    yield server
    server.close()


@pytest.fixture
def producer(durable_redis: RedisServer) -> Iterator[Celery]:
    app = create_app("test-faults-producer", Settings(broker_url=durable_redis.url()))
    yield app
    app.close()


def send(producer: Celery, runs: Path, count: int, seconds: float) -> set[str]:
    """Enqueue ``count`` tasks (acknowledged by Redis before any fault) and return their ids."""
    with producer.producer_or_acquire() as publisher:
        return {
            producer.send_task(
                "tests.log_run",
                kwargs={"path": str(runs), "seconds": seconds},
                queue="default",
                producer=publisher,
            ).id
            for _ in range(count)
        }


def start_worker(spawn: Spawn, url: str, tmp_path: Path, name: str) -> Child:
    env = worker_env(
        url,
        tmp_path,
        name,
        app=TASKS_APP,
        visibility_timeout_seconds=VISIBILITY_TIMEOUT_SECONDS,
        log_level="WARNING",
    )
    return spawn_ready_worker(spawn, env, name)


def wait_for_every_task(runs: Path, ids: set[str], workers: list[Child]) -> list[str]:
    def all_ran_or_a_worker_died() -> bool:
        return set(runs_of(runs)) >= ids or any(w.process.poll() is not None for w in workers)

    try:
        wait_until(
            all_ran_or_a_worker_died,
            timeout=DRAIN_DEADLINE_SECONDS,
            interval=0.2,
            message="every task to run",
        )
    except AssertionError as timed_out:
        # Counted at the deadline, not when the wait began.
        never = len(ids - set(runs_of(runs)))
        raise AssertionError(f"{timed_out} ({never} of {len(ids)} never ran)") from None
    for worker in workers:
        worker.check_alive()  # a worker that exited fails the test, with its log
    return runs_of(runs)


def kill_connections(server: RedisServer) -> None:
    """CLIENT KILL every connection but our own: workers, their pools, the producer's."""
    with server.client() as client:
        own = int(client.client_id())
        for info in client.client_list():
            if int(info["id"]) != own:
                client.client_kill_filter(_id=info["id"])


def report(label: str, ids: set[str], runs: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    duplicates = len(runs) - len(set(runs))
    with capsys.disabled():
        print(f"\n{label}: {len(ids)} tasks, 0 lost, {duplicates} ran twice (at-least-once)")


@pytest.mark.parametrize("seed", [1, 2])
def test_drain_through_redis_restarts_and_connection_kills_loses_nothing(
    seed: int,
    spawn: Spawn,
    durable_redis: RedisServer,
    producer: Celery,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs = tmp_path / "runs.log"
    ids = send(producer, runs, count=3000, seconds=0.01)
    url = durable_redis.url()
    workers = [start_worker(spawn, url, tmp_path, f"w{n}") for n in (1, 2)]
    # Ten SIGKILL-and-restarts of Redis and ten kills of every connection, at random moments
    # of the drain (the schedule is seeded, so a failure can be replayed).
    rng = random.Random(seed)
    faults = ["restart"] * 10 + ["disconnect"] * 10
    rng.shuffle(faults)
    for fault in faults:
        # The moment of the next fault, not a wait for anything: nothing is synchronized on it.
        time.sleep(rng.uniform(0.05, 0.6))
        if fault == "restart":
            durable_redis.kill()
            durable_redis.start()
        else:
            kill_connections(durable_redis)
    done = wait_for_every_task(runs, ids, workers)
    assert set(done) == ids
    with durable_redis.client() as client:
        wait_until(lambda: client.hlen(UNACKED_KEY) == 0, timeout=30, message="nothing held")
        assert client.llen("default") == 0
    report(f"seed {seed}", ids, done, capsys)


def test_workers_survive_twenty_redis_kills_in_a_row_and_consume_again(
    spawn: Spawn,
    durable_redis: RedisServer,
    producer: Celery,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs = tmp_path / "runs.log"
    url = durable_redis.url()
    workers = [start_worker(spawn, url, tmp_path, f"w{n}") for n in (1, 2)]
    ids = send(producer, runs, count=500, seconds=0.01)
    rng = random.Random(3)
    for _ in range(20):
        time.sleep(rng.uniform(0.02, 0.3))  # the fault schedule, as above
        durable_redis.kill()
        durable_redis.start()
    # Both workers still run, reconnect, and drain what was queued and a new burst.
    ids |= send(producer, runs, count=500, seconds=0.0)
    done = wait_for_every_task(runs, ids, workers)
    assert set(done) == ids
    report("twenty Redis kills", ids, done, capsys)


def test_a_worker_killed_right_after_a_fetch_loses_nothing(
    spawn: Spawn,
    durable_redis: RedisServer,
    producer: Celery,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs = tmp_path / "runs.log"
    url = durable_redis.url()
    ids = send(producer, runs, count=300, seconds=0.02)
    client: redis.Redis = durable_redis.client()
    try:
        for kill in range(5):
            held = int(client.hlen(UNACKED_KEY))
            worker = start_worker(spawn, url, tmp_path, f"victim{kill}")
            # The moment a fetch has taken a message, the whole worker dies (as an OOM kill or
            # a lost node would), before it can run, acknowledge or requeue anything.
            wait_until(
                lambda held=held: client.hlen(UNACKED_KEY) > held, timeout=30, interval=0.001
            )
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        survivor = start_worker(spawn, url, tmp_path, "survivor")
        # Held messages of the dead come back after the visibility timeout; all run.
        done = wait_for_every_task(runs, ids, [survivor])
    finally:
        client.close()
    assert set(done) == ids
    report("five workers SIGKILLed after a fetch", ids, done, capsys)
