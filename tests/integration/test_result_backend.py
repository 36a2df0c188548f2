"""celeriac's result backend (one round trip per stored state) against a real Redis: what it
stores is exactly what Celery's Redis backend stores, and a SUCCESS is never overwritten."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
import redis
from celery import Celery, states
from celery.app.task import Context
from celery.utils import uuid

from celeriac.app import create_app
from celeriac.broker.backend import ResultBackend
from celeriac.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = create_app("test-backend", Settings(broker_url=redis_url, result_expires_seconds=600))
    yield app
    app.close()


def stored(client: redis.Redis, task_id: str) -> dict[str, object]:
    raw = client.get(f"celery-task-meta-{task_id}")
    assert raw is not None, f"no result stored for {task_id}"
    value: dict[str, object] = json.loads(raw)
    return value


def test_is_celeriacs_backend_and_stores_what_celery_reads(
    app: Celery, redis_client: redis.Redis
) -> None:
    assert isinstance(app.backend, ResultBackend)
    app.backend.store_result("t1", None, states.STARTED)
    assert stored(redis_client, "t1")["status"] == states.STARTED
    assert 590 <= int(redis_client.ttl("celery-task-meta-t1")) <= 600
    app.backend.store_result("t1", {"sum": 3}, states.SUCCESS)
    result = app.AsyncResult("t1")
    assert (result.state, result.result) == (states.SUCCESS, {"sum": 3})


def test_publishes_each_state_for_waiting_clients(app: Celery, redis_client: redis.Redis) -> None:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("celery-task-meta-t2")
    pubsub.get_message(timeout=1)
    app.backend.store_result("t2", 5, states.SUCCESS)
    message = pubsub.get_message(timeout=5)
    pubsub.close()
    assert message is not None
    assert json.loads(message["data"])["result"] == 5


@pytest.mark.parametrize(
    "existing",
    [
        None,  # Celery's own encoding: status first
        '{"result": 1, "status": "SUCCESS", "task_id": "t3"}',  # any other key order
    ],
)
def test_a_success_is_never_overwritten(
    app: Celery, redis_client: redis.Redis, existing: str | None
) -> None:
    # A duplicate run (lost worker, redelivery) must not turn a finished task back to STARTED
    # or FAILURE, as with Celery's own backend.
    if existing is None:
        app.backend.store_result("t3", 1, states.SUCCESS)
    else:
        redis_client.set("celery-task-meta-t3", existing)
    app.backend.store_result("t3", None, states.STARTED)
    app.backend.store_result("t3", ValueError("again"), states.FAILURE)
    assert stored(redis_client, "t3")["status"] == states.SUCCESS
    assert stored(redis_client, "t3")["result"] == 1


def test_a_result_that_looks_like_a_success_is_not_one(
    app: Celery, redis_client: redis.Redis
) -> None:
    app.backend.store_result("t4", {"status": "SUCCESS"}, states.RETRY)
    app.backend.store_result("t4", None, states.STARTED)
    assert stored(redis_client, "t4")["status"] == states.STARTED


def test_stores_after_redis_forgot_the_script(app: Celery, redis_client: redis.Redis) -> None:
    app.backend.store_result("t5", 1, states.STARTED)
    redis_client.script_flush()  # as after a Redis restart
    app.backend.store_result("t5", 2, states.SUCCESS)
    assert stored(redis_client, "t5")["result"] == 2


@pytest.mark.parametrize("reapplied", [False, True])
def test_a_chord_runs_its_body_when_a_header_task_finishes_before_the_size_is_stored(
    app: Celery, redis_client: redis.Redis, reapplied: bool
) -> None:
    # Celery publishes a chord's header tasks one by one and stores the chord's size only as it
    # publishes the last, so a fast worker can finish the first before. This is that order,
    # through Celery's own chord code: for a frozen chord applied a second time, whose first
    # run left its "done" marker (Celery's t/integration test_reapplying_frozen_chord...).
    queue = app.conf.task_default_queue
    body = app.signature("tests.chord_body", ignore_result=True)  # no result to wait for
    group_id = uuid()
    header_ids = [uuid(), uuid(), uuid()]
    header_result_args = (group_id, [app.AsyncResult(task_id) for task_id in header_ids])

    def run(parts_before_the_size: int) -> None:
        app.backend.apply_chord(header_result_args, body)
        for index, task_id in enumerate(header_ids):
            if index == parts_before_the_size:
                app.backend.set_chord_size(group_id, len(header_ids))
            request = Context(id=task_id, group=group_id, group_index=index, chord=body)
            app.backend.on_chord_part_return(request, states.SUCCESS, index)

    if reapplied:
        run(parts_before_the_size=0)
        assert redis_client.llen(queue) == 1, "the first run's body was not sent"
    run(parts_before_the_size=2)
    assert redis_client.llen(queue) == (2 if reapplied else 1), "the chord's body was not sent"
    message = json.loads(redis_client.lindex(queue, 0) or "{}")
    assert message["headers"]["task"] == "tests.chord_body"
    assert json.loads(base64.b64decode(message["body"]))[0] == [[0, 1, 2]]  # header's results
    # Celery's apply_chord subscribed to the header's results: unsubscribe while Redis runs.
    for result in header_result_args[1]:
        app.backend.remove_pending_result(result)
