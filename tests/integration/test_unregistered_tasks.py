"""A worker never discards a task its app does not know: the message goes back to its queue for
a worker that knows it, or past the bound to the dead letters with the reason; a rolling deploy
that adds a task loses nothing; a lone unknown task does not spin the worker. Messages no worker
could run are dead-lettered at once. Real worker processes against a real Redis."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from fastapi.testclient import TestClient
from kombu import Exchange, Producer

from celeriac.api import ApiSettings
from celeriac.api import create_app as create_api
from celeriac.app import create_app
from celeriac.broker import dead_letters
from celeriac.broker.keys import UNACKED_KEY, priority_list_keys
from celeriac.exporter.collector import QUEUE_DEAD_LETTERS, create_registry
from celeriac.exporter.settings import ExporterSettings
from celeriac.settings import DEFAULT_PRIORITY_STEPS, Settings
from celeriac.testing import Child, wait_until
from celeriac.worker.unregistered import (
    RETRY_SECONDS,
    UNREGISTERED_DELIVERIES_HEADER,
    UNREGISTERED_SINCE_HEADER,
)
from tests.integration.apps.worker_tasks_v2 import NEW_TASK
from tests.integration.support.workers import runs, spawn_ready_worker, worker_env

pytestmark = pytest.mark.integration

Spawn = Callable[..., Child]
QUEUE = "default"
OLD_TASK = "tests.log_run"
OLD_APP = "tests.integration.apps.worker_tasks:app"
NEW_APP = "tests.integration.apps.worker_tasks_v2:app"
TOKEN = "unregistered-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    app = create_app("test-unregistered", Settings(broker_url=redis_url))
    yield app
    app.close()


def start_worker(
    spawn: Spawn, redis_url: str, tmp_path: Path, name: str, app: str, **settings: str
) -> Child:
    env = worker_env(redis_url, tmp_path, name, app=app, worker_hostname=f"{name}@test", **settings)
    return spawn_ready_worker(spawn, env, name)


def waiting_or_held(client: redis.Redis, task_id: str) -> dict[str, Any] | None:
    """The message of ``task_id`` as it is now, waiting in its queue or held by a worker."""
    raw: list[Any] = [
        json.loads(entry)[0] for entry in client.hvals(UNACKED_KEY)
    ]  # [message, exchange, routing key]
    for key in priority_list_keys(QUEUE, DEFAULT_PRIORITY_STEPS):
        raw.extend(json.loads(item) for item in client.lrange(key, 0, -1))
    for message in raw:
        if message["headers"].get("id") == task_id:
            found: dict[str, Any] = message
            return found
    return None


def unregistered_deliveries(client: redis.Redis, task_id: str) -> int:
    message = waiting_or_held(client, task_id)
    return 0 if message is None else int(message["headers"].get(UNREGISTERED_DELIVERIES_HEADER, 0))


def test_a_worker_that_lacks_the_task_puts_it_back_for_one_that_knows_it(
    spawn: Spawn, redis_url: str, redis_client: redis.Redis, producer: Celery, tmp_path: Path
) -> None:
    new_runs = tmp_path / "new.log"
    old = start_worker(spawn, redis_url, tmp_path, "old", OLD_APP)
    task_id = producer.send_task(NEW_TASK, kwargs={"path": str(new_runs)}, queue=QUEUE).id

    def put_back_twice() -> bool:
        old.check_alive()
        return unregistered_deliveries(redis_client, task_id) >= 2

    # Back in its queue (not discarded), again and again, while only the old worker runs.
    wait_until(put_back_twice, timeout=30, message="the old worker to put the task back")
    assert "discarded" not in old.output()
    start_worker(spawn, redis_url, tmp_path, "new", NEW_APP)
    wait_until(lambda: runs(new_runs), timeout=30, message="the new worker to run the task")
    assert runs(new_runs) == [task_id]
    assert dead_letters.list_dead_letters(redis_client) == ([], 0)
    # Celery would also have recorded a NotRegistered failure: the task ran instead.
    assert "NotRegistered" not in old.output()


def test_past_the_bound_it_is_a_dead_letter_listed_counted_and_replayable(
    spawn: Spawn, redis_url: str, redis_client: redis.Redis, producer: Celery, tmp_path: Path
) -> None:
    new_runs = tmp_path / "new.log"
    settings = Settings(broker_url=redis_url)
    old = start_worker(
        spawn, redis_url, tmp_path, "old", OLD_APP, worker_unregistered_task_seconds="2"
    )
    started = time.time()
    task_id = producer.send_task(NEW_TASK, kwargs={"path": str(new_runs)}, queue=QUEUE).id

    letter = wait_until(
        lambda: dead_letters.get(redis_client, task_id),
        timeout=30,
        message="the unknown task among the dead letters",
    )
    # Not before the bound, and after a few requeues (one per RETRY_SECONDS at most).
    assert letter.dead_lettered_at - started >= 2
    assert 2 <= letter.deliveries <= 2 / RETRY_SECONDS + 2
    assert (letter.queue, letter.task) == (QUEUE, NEW_TASK)
    assert letter.reason.startswith(f"unregistered task {NEW_TASK} on old@test:")
    # Stored as it was queued: a replay starts the clock afresh.
    assert UNREGISTERED_SINCE_HEADER not in json.loads(letter.message)["headers"]
    assert waiting_or_held(redis_client, task_id) is None

    with TestClient(create_api(ApiSettings(tokens=(TOKEN,), common=settings))) as api:
        listed = api.get("/v1/dead-letters", headers=AUTH).json()
        assert [(entry["id"], entry["reason"]) for entry in listed["dead_letters"]] == [
            (task_id, letter.reason)
        ]
        registry = create_registry(ExporterSettings(common=settings), redis_client)
        assert registry.get_sample_value(QUEUE_DEAD_LETTERS, {"queue": QUEUE}) == 1
        # Replayed once only workers that know it are left (the old one would set it aside
        # again 2 s after it first met it).
        old.stop()
        assert api.post(f"/v1/dead-letters/{task_id}/replay", headers=AUTH).status_code == 200
    start_worker(spawn, redis_url, tmp_path, "new", NEW_APP)
    wait_until(lambda: runs(new_runs), timeout=30, message="the replayed task to run")
    assert runs(new_runs) == [task_id]
    assert registry.get_sample_value(QUEUE_DEAD_LETTERS, {"queue": QUEUE}) == 0


def test_a_rolling_deploy_that_adds_a_task_loses_nothing(
    spawn: Spawn, redis_url: str, redis_client: redis.Redis, producer: Celery, tmp_path: Path
) -> None:
    old_runs, new_runs = tmp_path / "old.log", tmp_path / "new.log"
    submitted: list[str] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def submit() -> None:
        # Old and new tasks in turn, throughout the rollout, from a producer of its own.
        app = create_app("test-unregistered-rollout", Settings(broker_url=redis_url))
        try:
            while not stop.is_set():
                for name, path in ((OLD_TASK, old_runs), (NEW_TASK, new_runs)):
                    result = app.send_task(name, kwargs={"path": str(path)}, queue=QUEUE)
                    submitted.append(result.id)
                stop.wait(0.02)  # pacing, not synchronization: a steady flow of submits
        except BaseException as exc:
            failures.append(exc)
        finally:
            app.close()

    old = start_worker(spawn, redis_url, tmp_path, "old", OLD_APP)
    producer_thread = threading.Thread(target=submit, daemon=True)
    producer_thread.start()
    try:
        # Old and new tasks alternate: by its tenth old task the old worker met new ones.
        wait_until(
            lambda: len(runs(old_runs)) >= 10,
            timeout=30,
            message="the old worker alone to take tasks",
        )
        start_worker(spawn, redis_url, tmp_path, "new", NEW_APP)
        ran_before_stop = len(runs(new_runs))
        wait_until(
            lambda: len(runs(new_runs)) > ran_before_stop + 20,
            timeout=30,
            message="the new worker to run new tasks",
        )
        old.signal(signal.SIGTERM)  # the rollout ends: the old pod goes
        assert old.wait(timeout=60) == 0
        after_stop = len(submitted)
        wait_until(lambda: len(submitted) > after_stop + 40, timeout=30, message="more submits")
    finally:
        stop.set()
        producer_thread.join(timeout=30)
    assert not failures
    expected = set(submitted)

    def all_ran() -> bool:
        return set(runs(old_runs)) | set(runs(new_runs)) >= expected

    wait_until(all_ran, timeout=60, message="every submitted task to run")
    counts = Counter(runs(old_runs) + runs(new_runs))
    assert set(counts) == expected
    # No fault happened (no lost worker, no connection drop): each ran exactly once.
    assert [task for task, count in counts.items() if count != 1] == []
    assert dead_letters.list_dead_letters(redis_client) == ([], 0)
    assert "discarded" not in old.output()


def test_a_lone_unknown_task_does_not_spin_the_worker(
    spawn: Spawn, redis_url: str, redis_client: redis.Redis, producer: Celery, tmp_path: Path
) -> None:
    old = start_worker(spawn, redis_url, tmp_path, "old", OLD_APP)
    task_id = producer.send_task(NEW_TASK, kwargs={"path": "/dev/null"}, queue=QUEUE).id
    # The queue holds nothing else: a worker that put it back at once would fetch it straight
    # back, in a loop.
    wait_until(
        lambda: unregistered_deliveries(redis_client, task_id) >= 1,
        timeout=30,
        message="the first requeue",
    )
    window = 5 * RETRY_SECONDS
    before = unregistered_deliveries(redis_client, task_id)
    calls = command_calls(redis_client)
    started = time.monotonic()
    # Measuring a rate takes a window of time: this wait is the measurement, not a sync.
    wait_until(lambda: time.monotonic() - started >= window, timeout=window + 5)
    after = command_calls(redis_client)
    elapsed = time.monotonic() - started
    old.check_alive()
    requeues = unregistered_deliveries(redis_client, task_id) - before
    # Still going back to its queue (progress), at most once per RETRY_SECONDS.
    assert 1 <= requeues <= elapsed / RETRY_SECONDS + 1
    assert after["watch"] - calls["watch"] <= elapsed / RETRY_SECONDS + 1  # requeues
    # Fetches (one script each): each of the 2 pool slots' idle fetch once a second (its
    # doorbell wait), plus the fetch that takes the message again after each requeue; twice
    # that is the bound. Without the hold it is thousands per second.
    fetches = after["eval"] - calls["eval"]
    assert fetches / elapsed <= 2 * (2 + 1 / RETRY_SECONDS), f"{fetches} in {elapsed:.1f}s"
    # Every command, those the scripts run included: about 22 per requeue and fetch, under 15 a
    # second for an idle worker (fetches, stall check, registry); twice that is the bound.
    total = sum(after.values()) - sum(calls.values())
    assert total / elapsed <= 2 * (22 / RETRY_SECONDS + 15), f"{total} in {elapsed:.1f}s"


def command_calls(client: redis.Redis) -> Counter[str]:
    """Calls per Redis command so far (``INFO commandstats``), commands inside scripts too."""
    stats: dict[str, Any] = client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()})


def publish_raw(redis_url: str, body: Any, serializer: str, headers: dict[str, Any]) -> None:
    """A message on the queue from a plain kombu producer, as a misbehaving client sends it."""
    app = create_app("test-unregistered-raw", Settings(broker_url=redis_url))
    try:
        with app.connection_for_write() as connection:
            Producer(connection.channel()).publish(
                body,
                exchange=Exchange(QUEUE, type="direct"),
                routing_key=QUEUE,
                serializer=serializer,
                headers=headers,
                declare=[],
            )
    finally:
        app.close()


@pytest.mark.parametrize(
    ("body", "serializer", "headers", "reason"),
    [
        ({"no": "task"}, "json", {"id": "no-task-name"}, "not a task message"),
        ([[], {}, {}], "pickle", {"id": "pickled", "task": OLD_TASK}, "invalid task message"),
    ],
    ids=["no-task-name", "refused-content-type"],
)
def test_a_message_no_worker_could_run_is_a_dead_letter_at_once(
    spawn: Spawn,
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
    body: Any,
    serializer: str,
    headers: dict[str, Any],
    reason: str,
) -> None:
    start_worker(spawn, redis_url, tmp_path, "old", OLD_APP)
    publish_raw(redis_url, body, serializer, headers)
    page = wait_until(
        lambda: dead_letters.list_dead_letters(redis_client)[0],
        timeout=30,
        message="the message among the dead letters",
    )
    assert [(letter.queue, letter.deliveries) for letter in page] == [(QUEUE, 1)]
    assert page[0].reason.startswith(reason), page[0].reason
    assert page[0].reason.endswith("(on old@test)")
    assert redis_client.hlen(UNACKED_KEY) == 0
