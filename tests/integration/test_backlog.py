"""Backlog counting against known Redis contents: real Celery publishing, real kombu delivery."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from celery import Celery

from celeriac.app import create_app
from celeriac.broker import QueueBacklog, read_backlog
from celeriac.broker.keys import UNACKED_KEY, in_flight_key
from celeriac.broker.message import eta_score
from celeriac.settings import Settings
from celeriac.testing import RedisServer

pytestmark = pytest.mark.integration

STEPS = (0, 3, 6, 9)


@pytest.fixture
def celery_app(redis_url: str) -> Iterator[Celery]:
    settings = Settings(broker_url=redis_url, queues=("default", "cpu", "idle"))
    app = create_app("test-backlog", settings)
    yield app
    app.close()


def test_empty_redis_counts_zero(redis_client: redis.Redis) -> None:
    assert read_backlog(redis_client, ["default", "cpu"], STEPS) == {
        "default": QueueBacklog(0, 0, 0),
        "cpu": QueueBacklog(0, 0, 0),
    }


def test_counts_published_and_delivered_messages(
    celery_app: Celery, redis_client: redis.Redis
) -> None:
    # default: 3 at priority 0 (one of them countdown), 2 at priority 5 (list step 3),
    # 1 at priority 9; cpu: 2 at priority 7 (list step 6).
    for _ in range(2):
        celery_app.send_task("t.a", queue="default")
    celery_app.send_task("t.eta", queue="default", countdown=600)
    for _ in range(2):
        celery_app.send_task("t.b", queue="default", priority=5)
    celery_app.send_task("t.c", queue="default", priority=9)
    for _ in range(2):
        celery_app.send_task("t.d", queue="cpu", priority=7)

    assert redis_client.llen("default\x06\x163") == 2  # the layout we count is kombu's
    assert read_backlog(redis_client, ["default", "cpu", "idle"], STEPS) == {
        "default": QueueBacklog(waiting=6, in_flight=0, scheduled=0),
        "cpu": QueueBacklog(waiting=2, in_flight=0, scheduled=0),
        "idle": QueueBacklog(),
    }

    with celery_app.connection_for_read() as conn:
        channel = conn.default_channel
        # Delivery takes the highest priority first: the two plain tasks, then the countdown one.
        delivered = [channel.basic_get("default", no_ack=False) for _ in range(3)]
        delivered.append(channel.basic_get("cpu", no_ack=False))
        assert all(message is not None for message in delivered)
        assert redis_client.hlen(UNACKED_KEY) == 4
        counts = read_backlog(redis_client, ["default", "cpu", "idle"], STEPS)
        assert counts == {
            "default": QueueBacklog(waiting=3, in_flight=2, scheduled=1),
            "cpu": QueueBacklog(waiting=1, in_flight=1, scheduled=0),
            "idle": QueueBacklog(),
        }
        assert counts["default"].backlog == 5
        assert counts["cpu"].backlog == 2

        delivered[0].ack()
        assert read_backlog(redis_client, ["default"], STEPS)["default"] == QueueBacklog(3, 1, 1)


def test_eta_in_the_past_is_in_flight(celery_app: Celery, redis_client: redis.Redis) -> None:
    now = datetime.now(UTC)
    celery_app.send_task("t.future", queue="default", eta=now + timedelta(seconds=60))
    celery_app.send_task("t.past", queue="default", eta=now - timedelta(seconds=60))
    celery_app.send_task("t.later", queue="default", eta=now + timedelta(hours=1))
    celery_app.send_task("t.none", queue="default")
    with celery_app.connection_for_read() as conn:
        channel = conn.default_channel
        assert all(channel.basic_get("default", no_ack=False) for _ in range(4))
        assert read_backlog(redis_client, ["default"], STEPS, now=now) == {
            "default": QueueBacklog(waiting=0, in_flight=2, scheduled=2)
        }
        # The same messages two hours later: every ETA has passed.
        later = now + timedelta(hours=2)
        assert read_backlog(redis_client, ["default"], STEPS, now=later)["default"].in_flight == 4


def test_other_queues_are_not_counted(celery_app: Celery, redis_client: redis.Redis) -> None:
    celery_app.send_task("t.a", queue="cpu")
    celery_app.send_task("t.b", queue="default")
    with celery_app.connection_for_read() as conn:
        assert conn.default_channel.basic_get("cpu", no_ack=False) is not None
        assert read_backlog(redis_client, ["default"], STEPS) == {
            "default": QueueBacklog(waiting=1, in_flight=0, scheduled=0)
        }


def test_requeue_and_restore_leave_no_message_counted_as_held(
    celery_app: Celery, redis_client: redis.Redis
) -> None:
    for _ in range(3):
        celery_app.send_task("t.a", queue="default")
    with celery_app.connection_for_read() as conn:
        channel = conn.default_channel
        first, second, third = (channel.basic_get("default", no_ack=False) for _ in range(3))
        assert read_backlog(redis_client, ["default"], STEPS)["default"] == QueueBacklog(0, 3, 0)
        first.reject(requeue=True)
        second.reject(requeue=False)
        assert read_backlog(redis_client, ["default"], STEPS)["default"] == QueueBacklog(1, 1, 0)
        # The visibility-timeout sweep restores a dead worker's message by its unacked entry.
        channel.qos.restore_by_tag(third.delivery_tag)
        assert read_backlog(redis_client, ["default"], STEPS)["default"] == QueueBacklog(2, 0, 0)
        assert redis_client.hlen(UNACKED_KEY) == 0
        assert redis_client.zcard(in_flight_key("default")) == 0


def test_oldest_age_of_waiting_messages(celery_app: Celery, redis_client: redis.Redis) -> None:
    assert read_backlog(redis_client, ["default"], STEPS)["default"].oldest_age_seconds == 0.0
    celery_app.send_task("t.old", queue="default", priority=9)
    published = time.time()
    celery_app.send_task("t.new", queue="default", priority=0)
    later = datetime.fromtimestamp(published + 30, UTC)
    age = read_backlog(redis_client, ["default"], STEPS, now=later)["default"].oldest_age_seconds
    # The oldest message anywhere counts, not the next to run (the priority-0 one).
    assert age is not None
    assert 30 <= age < 31


def test_oldest_age_passes_over_eta_tasks_and_is_unknown_without_a_publish_time(
    celery_app: Celery, redis_client: redis.Redis
) -> None:
    celery_app.send_task("t.eta", queue="default", countdown=600)
    # Only an ETA task waits: its wait is deliberate, and what is behind it is not read.
    assert read_backlog(redis_client, ["default"], STEPS)["default"].oldest_age_seconds is None
    redis_client.delete("default")
    celery_app.send_task("t.plain", queue="default")
    assert read_backlog(redis_client, ["default"], STEPS)["default"].oldest_age_seconds is not None
    # A message from a producer that stamps no publish time: unknown, not a guess.
    redis_client.rpush("default\x06\x169", '{"headers": {"task": "t.foreign"}}')
    assert read_backlog(redis_client, ["default"], STEPS)["default"].oldest_age_seconds is None


def test_eta_scores() -> None:
    aware = datetime(2026, 1, 1, tzinfo=UTC)
    assert eta_score({"headers": {"eta": aware.isoformat()}}) == aware.timestamp()
    # Naive ETAs are UTC (Celery with enable_utc off).
    naive = aware.replace(tzinfo=None).isoformat()
    assert eta_score({"headers": {"eta": naive}}) == aware.timestamp()
    for unreadable in ({}, {"headers": None}, {"headers": {"eta": "tomorrow"}}):
        assert eta_score(unreadable) == 0.0


def test_custom_priority_steps_and_duplicate_queue_names(redis_client: redis.Redis) -> None:
    redis_client.lpush("q", "a", "b")
    redis_client.lpush("q\x06\x165", "c")
    redis_client.lpush("q\x06\x163", "not a step here")
    counts = read_backlog(redis_client, ["q", "q"], (0, 5))
    assert counts == {"q": QueueBacklog(waiting=3)}


def test_reads_in_one_pipeline(redis_client: redis.Redis) -> None:
    queues = [f"q{index}" for index in range(20)]
    before = _commands_processed(redis_client)
    read_backlog(redis_client, queues, STEPS)
    # MULTI + 20 x (4 LLEN + 4 LINDEX + 2 ZCOUNT + ZCARD) + EXEC, sent as one pipeline (INFO
    # itself counts once): a fixed number of reads per queue, whatever the number of messages.
    assert _commands_processed(redis_client) - before == 1 + 20 * (2 * len(STEPS) + 3) + 1 + 1


def test_redis_down_raises_redis_error(own_redis: RedisServer) -> None:
    client = redis.Redis.from_url(own_redis.url(), socket_connect_timeout=1, socket_timeout=1)
    try:
        own_redis.stop()
        with pytest.raises(redis.RedisError):
            read_backlog(client, ["default"], STEPS)
    finally:
        client.close()


def _commands_processed(client: redis.Redis) -> int:
    stats = client.info("stats")
    return int(stats["total_commands_processed"])
