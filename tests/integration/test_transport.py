"""celeriac's transport against a real Redis: the atomic fetch, doorbells, lost replies."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection, Consumer, Exchange, Message, Queue
from kombu.asynchronous import Hub

from celeriac.app import create_app
from celeriac.broker import Channel, QueueBacklog, dead_letters, read_backlog
from celeriac.broker.keys import UNACKED_KEY, UNDELIVERABLE_KEY, in_flight_key, wake_key
from celeriac.settings import Settings
from celeriac.testing import wait_until
from tests.integration.support.received import Received

pytestmark = pytest.mark.integration

STEPS = (0, 3, 6, 9)
QUEUE = "default"


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    celery = create_app("test-transport", Settings(broker_url=redis_url))
    yield celery
    celery.close()


def consume(app: Celery, received: Received, wait_seconds: float = 1.0, **options: Any) -> Any:
    """A kombu consumer of QUEUE on celeriac's transport (as a worker's), prefetch 1."""
    connection = app.connection_for_read(
        transport_options={"polling_interval": wait_seconds, **options}
    )
    channel = connection.channel()
    channel.basic_qos(0, 1, False)
    consumer = Consumer(channel, [Queue(QUEUE, routing_key=QUEUE)], callbacks=[received])
    consumer.consume()
    return connection, channel


def drain_one(connection: Connection, received: Received, timeout: float) -> Message:
    before = len(received.messages)
    connection.drain_events(timeout=timeout)
    assert len(received.messages) == before + 1
    return received.messages[-1]


def test_a_fetch_records_the_message_as_held_in_the_same_step(
    app: Celery, redis_client: redis.Redis
) -> None:
    app.send_task("t.a", queue=QUEUE)
    received = Received()
    connection, channel = consume(app, received)
    try:
        assert isinstance(channel, Channel)
        redis_client.config_resetstat()
        message = drain_one(connection, received, timeout=5)
        stats = redis_client.info("commandstats")
        # One script pops and records (commandstats counts the commands a script runs too):
        # no BRPOP, and no HSET but the script's own.
        assert "cmdstat_brpop" not in stats
        assert stats["cmdstat_eval"]["calls"] == 1
        assert stats["cmdstat_hset"]["calls"] == 1
        assert redis_client.hexists(UNACKED_KEY, message.delivery_tag)
        assert redis_client.zscore(in_flight_key(QUEUE), message.delivery_tag) == 0
        assert read_backlog(redis_client, [QUEUE], STEPS)[QUEUE] == QueueBacklog(0, 1, 0)
        message.ack()
        assert read_backlog(redis_client, [QUEUE], STEPS)[QUEUE] == QueueBacklog(0, 0, 0)
        assert redis_client.hlen(UNACKED_KEY) == 0
    finally:
        connection.close()


def test_the_fetch_script_is_sent_once_then_run_by_its_digest(
    app: Celery, redis_client: redis.Redis
) -> None:
    """As kombu registers its scripts: a channel's first fetch sends the script, the next ones
    its SHA1 (EVALSHA); a node that lost it (SCRIPT FLUSH, a restart) gets it again."""
    received = Received()
    connection, _channel = consume(app, received)
    try:
        app.send_task("t.a", queue=QUEUE)
        drain_one(connection, received, timeout=5).ack()
        redis_client.config_resetstat()
        app.send_task("t.b", queue=QUEUE)
        drain_one(connection, received, timeout=5).ack()
        stats = redis_client.info("commandstats")
        assert "cmdstat_eval" not in stats
        assert stats["cmdstat_evalsha"]["calls"] >= 1
        redis_client.script_flush()
        app.send_task("t.c", queue=QUEUE)
        drain_one(connection, received, timeout=5).ack()
        assert [m.headers["task"] for m in received.messages] == ["t.a", "t.b", "t.c"]
    finally:
        connection.close()


def test_an_eta_task_fetched_is_scheduled_not_in_flight(
    app: Celery, redis_client: redis.Redis
) -> None:
    app.send_task("t.later", queue=QUEUE, countdown=600)
    received = Received()
    connection, _channel = consume(app, received)
    try:
        drain_one(connection, received, timeout=5)
        assert read_backlog(redis_client, [QUEUE], STEPS)[QUEUE] == QueueBacklog(0, 0, 1)
    finally:
        connection.close()


def test_an_idle_consumer_wakes_on_the_doorbell_not_its_poll(
    app: Celery, redis_client: redis.Redis
) -> None:
    received = Received()
    # A 30 s wait between fetches: only the doorbell can deliver within the deadline below.
    connection, _channel = consume(app, received, wait_seconds=30)
    try:
        with pytest.raises(TimeoutError):
            connection.drain_events(timeout=0.5)  # nothing there: the next fetch waits
        app.send_task("t.a", queue=QUEUE)
        drain_one(connection, received, timeout=10)
    finally:
        connection.close()
    # The fetch that found nothing deleted the doorbell tokens of taken messages.
    assert redis_client.llen(wake_key(QUEUE)) <= 1


def test_a_plain_kombu_producer_is_served_within_the_wait(
    app: Celery, redis_url: str, redis_client: redis.Redis
) -> None:
    received = Received()
    connection, _channel = consume(app, received, wait_seconds=0.2)
    try:
        with pytest.raises(TimeoutError):
            connection.drain_events(timeout=0.5)
        # Stock Celery publishing (kombu's own transport): no doorbell, no publish time.
        plain = Celery("plain", broker=redis_url)
        plain.conf.broker_transport_options = {"priority_steps": list(STEPS)}
        plain.send_task("t.plain", queue=QUEUE)
        plain.close()
        assert redis_client.llen(wake_key(QUEUE)) == 0
        drain_one(connection, received, timeout=5)
    finally:
        connection.close()


def test_a_lost_reply_puts_the_message_back(app: Celery, redis_client: redis.Redis) -> None:
    app.send_task("t.a", queue=QUEUE)
    received = Received()
    connection, channel = consume(app, received)
    try:
        # Send the fetch, let Redis run it, then lose the connection with the reply unread (as
        # when Redis dies or the network drops between running the script and the reply).
        channel.connection.cycle._register_BRPOP(channel)  # sends the fetch, as a worker's loop
        wait_until(lambda: redis_client.hlen(UNACKED_KEY) == 1, message="the fetch to run")
        channel.client.connection.disconnect()
        with pytest.raises(channel.connection_errors):
            channel._brpop_read()
        # Never lost: Redis holds it as in flight until someone puts it back ...
        assert redis_client.hlen(UNACKED_KEY) == 1
        assert not received.messages
        # ... which the next fetch, on a new connection, does before it fetches.
        message = drain_one(connection, received, timeout=5)
        assert message.delivery_info["redelivered"]
        message.ack()
        assert redis_client.hlen(UNACKED_KEY) == 0
        assert redis_client.zcard(in_flight_key(QUEUE)) == 0
    finally:
        connection.close()


def test_held_messages_a_refusing_master_cannot_take_back_are_put_back_later(
    app: Celery, redis_client: redis.Redis
) -> None:
    """A consumer's connection is lost while it holds a message, and the node it reaches to put
    the message back refuses writes (``NOREPLICAS``: a failover under way). The message is not
    left held until the visibility timeout: the next fetch that can write puts it back."""
    app.send_task("t.a", queue=QUEUE)
    received = Received()
    connection, _channel = consume(app, received)
    held = drain_one(connection, received, timeout=5)
    redis_client.config_set("min-replicas-to-write", 1)  # no replica: every write refused
    try:
        connection.close()  # puts back what it holds (kombu's restore on close)
        assert redis_client.hexists(UNACKED_KEY, held.delivery_tag)
    finally:
        redis_client.config_set("min-replicas-to-write", 0)
    received = Received()
    connection, _channel = consume(app, received)
    try:
        again = drain_one(connection, received, timeout=5)
        assert again.delivery_tag == held.delivery_tag
        assert again.delivery_info["redelivered"]
        again.ack()
        assert redis_client.hlen(UNACKED_KEY) == 0
    finally:
        connection.close()


def test_a_message_that_is_not_kombus_is_set_aside_not_lost(
    app: Celery, redis_client: redis.Redis
) -> None:
    redis_client.rpush(QUEUE, b'{"not": "a kombu message"}', b"not json at all")
    app.send_task("t.a", queue=QUEUE)
    received = Received()
    connection, _channel = consume(app, received)
    try:
        message = drain_one(connection, received, timeout=5)
        assert message.headers["task"] == "t.a"
    finally:
        connection.close()
    # Both kept, in the order they were taken.
    assert redis_client.lrange(UNDELIVERABLE_KEY, 0, -1) == [
        b'{"not": "a kombu message"}',
        b"not json at all",
    ]


def test_a_queue_consumed_without_acks_is_never_recorded_as_held(
    app: Celery, redis_client: redis.Redis
) -> None:
    # As Celery's reply queues (control replies to a worker running mingle): kombu only pops.
    app.send_task("t.reply", queue="replies")
    received = Received()
    connection = app.connection_for_read()
    try:
        consumer = Consumer(
            connection.channel(), [Queue("replies")], callbacks=[received], no_ack=True
        )
        consumer.consume()
        drain_one(connection, received, timeout=5)
        assert redis_client.hlen(UNACKED_KEY) == 0
        assert redis_client.zcard(in_flight_key("replies")) == 0
        assert redis_client.llen("replies") == 0
    finally:
        connection.close()


def test_an_ack_after_the_channel_closed_is_a_connection_error(
    app: Celery, redis_client: redis.Redis
) -> None:
    app.send_task("t.a", queue=QUEUE)
    received = Received()
    connection, _channel = consume(app, received)
    message = drain_one(connection, received, timeout=5)
    # As Celery does after a connection error while the task runs: kombu puts it back.
    connection.close()
    assert redis_client.llen(QUEUE) == 1
    assert redis_client.hlen(UNACKED_KEY) == 0
    # The task ends and acknowledges on the dead channel: an error Celery logs and survives
    # (kombu's own is an AttributeError, fatal to the worker).
    with pytest.raises(redis.ConnectionError):
        message.ack()


def test_messages_handed_back_on_a_connection_loss_are_never_dead_lettered(
    app: Celery, redis_client: redis.Redis
) -> None:
    """A worker whose connection drops while it runs a task hands the message back (Celery
    closes the channel; kombu restores what it held), directly or, when the node refuses writes,
    through the next fetch. Its process was not lost, so however many Redis restarts or
    failovers a task lives through, it is never set aside as a dead letter."""
    task_id = app.send_task("t.long", queue=QUEUE).id
    limit = 2
    for attempt in range(4):
        received = Received()
        connection, _channel = consume(app, received, max_lost_deliveries=limit)
        drain_one(connection, received, timeout=5)
        if attempt == 1:  # this hand-back is refused and goes through the next fetch instead
            redis_client.config_set("min-replicas-to-write", 1)
        try:
            connection.close()
        finally:
            redis_client.config_set("min-replicas-to-write", 0)
    assert dead_letters.get(redis_client, task_id) is None
    received = Received()
    connection, _channel = consume(app, received, max_lost_deliveries=limit)
    try:
        again = drain_one(connection, received, timeout=5)
        assert again.headers["id"] == task_id
        again.ack()
    finally:
        connection.close()


@pytest.mark.parametrize(("limit", "fetches_before_dead_letter"), [(2, 2), (0, None)])
def test_deliveries_that_never_finish_lead_to_the_dead_letters(
    app: Celery, redis_client: redis.Redis, limit: int, fetches_before_dead_letter: int | None
) -> None:
    task_id = app.send_task("t.poison", queue=QUEUE).id
    received = Received()
    connection, _channel = consume(app, received, max_lost_deliveries=limit)
    try:
        for _ in range(5):
            try:
                message = drain_one(connection, received, timeout=2)
            except TimeoutError:
                break
            # Its worker process is lost: Celery requeues it (reject-on-worker-lost).
            message.reject(requeue=True)
        fetched = len(received.messages)
    finally:
        connection.close()
    letter = dead_letters.get(redis_client, task_id)
    if fetches_before_dead_letter is None:  # 0: never dead-lettered
        assert fetched == 5
        assert letter is None
    else:
        assert fetched == fetches_before_dead_letter
        assert letter is not None
        assert letter.deliveries == limit
        assert redis_client.llen(QUEUE) == 0


def listen_address(channel: Channel) -> str:
    """The client address Redis sees for the channel's pub/sub (fanout) connection."""
    sock = channel.subclient.connection._sock
    assert sock is not None
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def test_a_killed_fanout_connection_is_a_connection_error_not_an_endless_wait(
    app: Celery, redis_client: redis.Redis
) -> None:
    # A worker's consumer: its task queue and a fanout queue (as Celery's remote-control
    # mailbox), on an event loop as Celery's (kombu's hub and the transport's poller).
    received = Received()
    connection = app.connection_for_read()
    hub = Hub()
    channel = connection.channel()
    assert isinstance(channel, Channel)
    channel.basic_qos(0, 1, False)
    control = Queue("control", Exchange("control", type="fanout"), auto_delete=True)
    Consumer(channel, [Queue(QUEUE, routing_key=QUEUE), control], callbacks=[received]).consume()
    connection.transport.register_with_event_loop(connection.connection, hub)
    loop = hub.create_loop()

    def subscribed() -> bool:
        next(loop)
        address = listen_address(channel)
        return any(
            info["addr"] == address and int(info["psub"]) == 1
            for info in redis_client.client_list()
        )

    wait_until(subscribed, timeout=10, message="the fanout queue subscribed")
    # Redis drops the pub/sub connection (a restart, CLIENT KILL, its output buffer limit).
    redis_client.client_kill_filter(addr=listen_address(channel))
    outcome: list[BaseException] = []

    def run_loop() -> None:
        try:
            while True:
                next(loop)
        except BaseException as exc:
            outcome.append(exc)

    # In a thread: redis-py's own read would wait for ever on a new, unsubscribed connection
    # (the worker stalled, taking nothing), and the test must fail, not hang.
    thread = threading.Thread(target=run_loop, name="event-loop", daemon=True)
    thread.start()
    wait_until(
        lambda: outcome,
        timeout=15,
        message="the event loop to end with a connection error (it waits in a read instead)",
    )
    thread.join()
    assert isinstance(outcome[0], channel.connection_errors), repr(outcome[0])
    connection.close()
    hub.close()

    # Reconnected as Celery's consumer does after a connection error, it takes messages again.
    app.send_task("t.a", queue=QUEUE)
    again = Received()
    connection, _channel = consume(app, again)
    try:
        assert drain_one(connection, again, timeout=5).headers["task"] == "t.a"
    finally:
        connection.close()
    assert not received.messages
