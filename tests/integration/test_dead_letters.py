"""Poison tasks: a task that kills its worker's process runs the configured number of times,
then waits among its queue's dead letters; the rest of the queue is not held up; replay runs it
again; discard forgets it. Real worker processes against a real Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from celeriac.app import create_app
from celeriac.broker import dead_letters, read_backlog
from celeriac.broker.keys import DELIVERIES_KEY, UNACKED_KEY
from celeriac.settings import DEFAULT_PRIORITY_STEPS, Settings
from celeriac.testing import Child, wait_until
from tests.integration.support.workers import runs, spawn_ready_worker, worker_env

pytestmark = pytest.mark.integration

Spawn = Callable[..., Child]
QUEUE = "default"


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    app = create_app("test-dead-letters", Settings(broker_url=redis_url))
    yield app
    app.close()


def start_worker(
    spawn: Spawn,
    redis_url: str,
    tmp_path: Path,
    app: str = "tests.integration.apps.worker_tasks:app",
    **settings: str,
) -> Child:
    env = worker_env(redis_url, tmp_path, "w", app=app, **settings)
    return spawn_ready_worker(spawn, env, "worker")


def test_a_task_that_kills_its_process_is_dead_lettered_after_three_runs(
    spawn: Spawn, redis_url: str, redis_client: redis.Redis, producer: Celery, tmp_path: Path
) -> None:
    poison_runs, other_runs = tmp_path / "poison.log", tmp_path / "others.log"
    poison = producer.send_task(
        "tests.kill_own_process", kwargs={"path": str(poison_runs)}, queue=QUEUE
    ).id
    others = {
        producer.send_task("tests.log_run", kwargs={"path": str(other_runs)}, queue=QUEUE).id
        for _ in range(20)
    }
    worker = start_worker(spawn, redis_url, tmp_path)

    def dead_lettered() -> bool:
        worker.check_alive()
        return dead_letters.get(redis_client, poison) is not None

    wait_until(dead_lettered, timeout=90, message="the poison task among the dead letters")
    wait_until(lambda: set(runs(other_runs)) >= others, timeout=60, message="the other tasks")
    # Exactly the default limit of lost deliveries, then never again on its own.
    assert runs(poison_runs) == [poison] * 3
    letter = dead_letters.get(redis_client, poison)
    assert letter is not None
    assert (letter.queue, letter.task, letter.deliveries) == (
        QUEUE,
        "tests.kill_own_process",
        3,
    )
    assert "lost" in letter.reason
    # Not held, not waiting, counted as a dead letter (what the exporter serves).
    assert read_backlog(redis_client, [QUEUE], DEFAULT_PRIORITY_STEPS)[QUEUE].dead_letters == 1
    assert redis_client.hlen(UNACKED_KEY) == 0
    assert not redis_client.hexists(DELIVERIES_KEY, poison)
    page, total = dead_letters.list_dead_letters(redis_client, queue=QUEUE)
    assert ([entry.id for entry in page], total) == ([poison], 1)

    # Replayed, it runs again (with a fresh count: three more runs before it is set aside).
    assert dead_letters.replay(redis_client, poison, DEFAULT_PRIORITY_STEPS) is not None
    assert dead_letters.get(redis_client, poison) is None
    wait_until(lambda: len(runs(poison_runs)) >= 4, timeout=60, message="the replayed run")
    wait_until(dead_lettered, timeout=90, message="dead-lettered again")
    assert len(runs(poison_runs)) == 6
    # Discarded, it is gone for good.
    assert dead_letters.discard(redis_client, poison) is not None
    assert dead_letters.list_dead_letters(redis_client) == ([], 0)
    assert read_backlog(redis_client, [QUEUE], DEFAULT_PRIORITY_STEPS)[QUEUE].dead_letters == 0


def test_the_demo_crash_task_ends_among_the_dead_letters(
    spawn: Spawn, redis_url: str, redis_client: redis.Redis, producer: Celery, tmp_path: Path
) -> None:
    """README's way to see dead letters and replay with the demo app alone."""
    crash = producer.send_task("celeriac.demo.crash", queue=QUEUE).id
    worker = start_worker(spawn, redis_url, tmp_path, app="celeriac.demo:app")

    def dead_lettered() -> bool:
        worker.check_alive()
        return dead_letters.get(redis_client, crash) is not None

    wait_until(dead_lettered, timeout=90, message="the crash task among the dead letters")
    letter = dead_letters.get(redis_client, crash)
    assert letter is not None
    assert (letter.task, letter.deliveries) == ("celeriac.demo.crash", 3)


def test_the_limit_is_a_setting(
    spawn: Spawn, redis_url: str, redis_client: redis.Redis, producer: Celery, tmp_path: Path
) -> None:
    poison_runs = tmp_path / "poison.log"
    poison = producer.send_task(
        "tests.kill_own_process", kwargs={"path": str(poison_runs)}, queue=QUEUE
    ).id
    worker = start_worker(spawn, redis_url, tmp_path, max_lost_deliveries="1")

    def dead_lettered() -> bool:
        worker.check_alive()
        return dead_letters.get(redis_client, poison) is not None

    wait_until(dead_lettered, timeout=60, message="the poison task among the dead letters")
    assert runs(poison_runs) == [poison]


def test_unknown_ids_are_none(redis_client: redis.Redis) -> None:
    assert dead_letters.get(redis_client, "nope") is None
    assert dead_letters.replay(redis_client, "nope", DEFAULT_PRIORITY_STEPS) is None
    assert dead_letters.discard(redis_client, "nope") is None
    assert redis_client.dbsize() == 0  # and nothing was written
