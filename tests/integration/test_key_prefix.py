"""Applications sharing one Redis database, each with its own key prefix
(``CELERIAC_BROKER_KEY_PREFIX``, kombu's ``global_keyprefix``): the transport, its readers and
stock kombu agree on where every key is."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from fastapi.testclient import TestClient
from kombu import Connection, Consumer, Exchange, Message, Producer, Queue

from celeriac import broker
from celeriac.api import ApiSettings
from celeriac.api import create_app as create_api
from celeriac.api.idempotency import HEADER
from celeriac.api.tracking import RECENT_KEY, RECORD_PREFIX
from celeriac.app import create_app
from celeriac.broker import dead_letters, read_backlog
from celeriac.exporter.collector import redis_client as exporter_client
from celeriac.exporter.settings import ExporterSettings
from celeriac.inspection.report import read_report
from celeriac.settings import DEFAULT_PRIORITY_STEPS, Settings
from celeriac.testing import Child, wait_until
from tests.integration.support.received import Received
from tests.integration.support.workers import spawn_ready_worker, worker_env

pytestmark = pytest.mark.integration

Spawn = Callable[..., Child]
QUEUE = "default"
PREFIX = "billing:"
OTHER_PREFIX = "reports:"
# Keys of Celery's result backend: kombu's global_keyprefix is the broker's alone.
RESULT_KEY = b"celery-task-meta-"


def prefixed_app(redis_url: str, prefix: str) -> Celery:
    return create_app(f"test-{prefix}", Settings(broker_url=redis_url, broker_key_prefix=prefix))


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    app = prefixed_app(redis_url, PREFIX)
    yield app
    app.close()


def consumer(app: Celery, received: Received) -> Connection:
    """A kombu consumer of QUEUE on celeriac's transport, as a worker's (prefetch 1)."""
    connection = app.connection_for_read(transport_options={"polling_interval": 0.5})
    channel = connection.channel()
    channel.basic_qos(0, 1, False)
    Consumer(channel, [Queue(QUEUE, routing_key=QUEUE)], callbacks=[received]).consume()
    return connection


def drain(connection: Connection, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        connection.drain_events(timeout=seconds)


def unprefixed_keys(client: redis.Redis, prefix: str) -> list[bytes]:
    """Keys outside ``prefix`` (results aside)."""
    return [
        key
        for key in client.scan_iter()
        if not key.startswith(prefix.encode()) and not key.startswith(RESULT_KEY)
    ]


def start_worker(spawn: Spawn, redis_url: str, tmp_path: Path, **settings: str) -> Child:
    env = worker_env(
        redis_url,
        tmp_path,
        "w",
        app="tests.integration.apps.worker_tasks:app",
        broker_key_prefix=PREFIX,
        worker_hostname="p@test",
        **settings,
    )
    return spawn_ready_worker(spawn, env, "worker")


def test_two_prefixes_on_one_database_do_not_see_each_others_tasks(
    redis_url: str, redis_client: redis.Redis
) -> None:
    billing, reports = prefixed_app(redis_url, PREFIX), prefixed_app(redis_url, OTHER_PREFIX)
    billing_received, reports_received = Received(), Received()
    billing_connection = consumer(billing, billing_received)
    reports_connection = consumer(reports, reports_received)
    try:
        billing.send_task("t.billing", queue=QUEUE)
        drain(reports_connection, 1.5)
        assert reports_received.messages == []
        drain(billing_connection, 5)
        assert [m.headers["task"] for m in billing_received.messages] == ["t.billing"]
        reports.send_task("t.reports", queue=QUEUE)
        drain(billing_connection, 1.5)
        drain(reports_connection, 5)
        assert [m.headers["task"] for m in billing_received.messages] == ["t.billing"]
        assert [m.headers["task"] for m in reports_received.messages] == ["t.reports"]
        for message in (*billing_received.messages, *reports_received.messages):
            message.ack()
        # Every key is one application's or the other's.
        outside = unprefixed_keys(redis_client, PREFIX)
        assert outside
        assert [key for key in outside if not key.startswith(OTHER_PREFIX.encode())] == []
    finally:
        billing_connection.release()
        reports_connection.release()
        billing.close()
        reports.close()


def test_a_task_round_trip_and_remote_control_with_a_prefix(
    spawn: Spawn, redis_url: str, redis_client: redis.Redis, producer: Celery, tmp_path: Path
) -> None:
    worker = start_worker(spawn, redis_url, tmp_path)
    result = producer.send_task("tests.pid", queue=QUEUE)
    assert isinstance(result.get(timeout=30), int)
    # Celery's remote control is a fanout (pub/sub): publisher and subscriber agree on the
    # prefixed channel.
    wait_until(
        lambda: producer.control.ping(destination=["p@test"], timeout=1),
        timeout=30,
        message="the worker answers broadcasts",
    )
    replies = producer.control.inspect(destination=["p@test"], timeout=10).active_queues()
    assert replies is not None, worker.output()
    assert [queue["name"] for queue in replies["p@test"]] == [QUEUE]
    keys = set(redis_client.scan_iter())
    assert f"{PREFIX}celeriac:workers".encode() in keys
    assert unprefixed_keys(redis_client, PREFIX) == [], worker.output()


def test_a_dead_letter_with_a_prefix_is_found_by_the_readers(
    spawn: Spawn, redis_url: str, redis_client: redis.Redis, producer: Celery, tmp_path: Path
) -> None:
    poison = producer.send_task(
        "tests.kill_own_process", kwargs={"path": str(tmp_path / "runs.log")}, queue=QUEUE
    ).id
    worker = start_worker(spawn, redis_url, tmp_path, max_lost_deliveries="1")
    settings = Settings(broker_url=redis_url, broker_key_prefix=PREFIX)
    reader = broker.broker_client(settings)
    try:

        def dead_lettered() -> bool:
            worker.check_alive()
            return dead_letters.get(reader, poison) is not None

        # Set aside by the fetch script, which gets the key names as arguments.
        wait_until(dead_lettered, timeout=60, message="the poison task among the dead letters")
        page, total = dead_letters.list_dead_letters(reader, queue=QUEUE)
        assert ([letter.id for letter in page], total) == ([poison], 1)
        # celeriac inspect's report.
        inspect_client = broker.polling_client(settings, 5, "test-inspect")
        try:
            report = read_report(inspect_client, (QUEUE,), (), DEFAULT_PRIORITY_STEPS)
        finally:
            inspect_client.close()
        assert report.queues[0].dead_letters == 1
        # Nothing of it outside the prefix.
        assert dead_letters.get(redis_client, poison) is None
        assert unprefixed_keys(redis_client, PREFIX) == [], worker.output()
    finally:
        reader.close()


def test_the_api_publishes_and_reads_prefixed_keys(
    redis_url: str, redis_client: redis.Redis
) -> None:
    token = "prefix-token"
    auth = {"Authorization": f"Bearer {token}"}
    settings = Settings(broker_url=redis_url, broker_key_prefix=PREFIX, max_lost_deliveries=1)
    app = create_app("test-prefix-api", settings)
    api = create_api(ApiSettings(tokens=(token,), common=settings))
    try:
        with TestClient(api) as client:
            # Twice: the second message comes from the template the first built, and with
            # an idempotency key (its key is the application's too).
            body = {"task": "celeriac.demo.add", "args": [1, 2]}
            assert client.post("/v1/tasks", json=body, headers=auth).status_code == 202
            once = {**auth, HEADER: "order-1"}
            assert client.post("/v1/tasks", json=body, headers=once).status_code == 202
            (queue,) = client.get("/v1/queues", headers=auth).json()["queues"]
            assert queue["waiting"] == 2
            # The first taken by a consumer that is lost (rejected, requeued) once: with a
            # limit of 1, the fetch that finds it again (after the second) sets it aside.
            received = Received()
            connection = consumer(app, received)
            try:
                drain(connection, 5)
                received.messages[0].reject(requeue=True)
                drain(connection, 5)
                received.messages[1].ack()
                drain(connection, 1.5)
            finally:
                connection.release()
            assert len(received.messages) == 2
            listed = client.get("/v1/dead-letters", headers=auth).json()
            assert listed["total"] == 1
            assert listed["dead_letters"][0]["id"] == received.messages[0].headers["id"]
        # The API's task records live beside the results, which have no prefix.
        records = (RECORD_PREFIX.encode(), RECENT_KEY.encode())
        outside = unprefixed_keys(redis_client, PREFIX)
        assert [key for key in outside if not key.startswith(records)] == []
    finally:
        app.close()


def test_the_exporter_counts_the_prefixed_queue(
    redis_url: str, redis_client: redis.Redis, producer: Celery
) -> None:
    for _ in range(3):
        producer.send_task("t.waits", queue=QUEUE)
    settings = ExporterSettings(common=Settings(broker_url=redis_url, broker_key_prefix=PREFIX))
    client = exporter_client(settings)
    try:
        assert read_backlog(client, [QUEUE], DEFAULT_PRIORITY_STEPS)[QUEUE].waiting == 3
    finally:
        client.close()
    # An unprefixed reader finds nothing: the prefix is what tells the applications apart.
    assert read_backlog(redis_client, [QUEUE], DEFAULT_PRIORITY_STEPS)[QUEUE].waiting == 0


def test_stock_kombu_and_celeriac_interoperate_with_the_same_prefix(
    redis_url: str, producer: Celery
) -> None:
    queue = Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE)
    options = {"global_keyprefix": PREFIX, "polling_interval": 0.5}
    # Stock kombu producer -> celeriac consumer.
    with Connection(redis_url, transport_options=options) as stock:
        Producer(stock.default_channel).publish(
            {"from": "kombu"}, exchange=queue.exchange, routing_key=QUEUE, declare=[queue]
        )
    received = Received()
    connection = consumer(producer, received)
    try:
        drain(connection, 5)
        assert [message.payload for message in received.messages] == [{"from": "kombu"}]
        received.messages[0].ack()
    finally:
        connection.release()
    # celeriac producer -> stock kombu consumer.
    producer.send_task("t.from_celeriac", queue=QUEUE)
    got: list[Message] = []
    with Connection(redis_url, transport_options=options) as stock:
        with Consumer(stock, [queue], callbacks=[lambda _body, m: got.append(m)]):
            drain(stock, 5)
        assert [message.headers["task"] for message in got] == ["t.from_celeriac"]
        got[0].ack()
