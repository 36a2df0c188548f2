"""``/v1/dead-letters`` against a real Redis: messages dead-lettered by the real transport."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from fastapi.testclient import TestClient
from kombu import Consumer, Message, Queue

from celeriac.api import ApiSettings, create_app
from celeriac.app import create_app as create_celery_app
from celeriac.broker.keys import priority_list_key
from celeriac.settings import DEFAULT_PRIORITY_STEPS, Settings

pytestmark = pytest.mark.integration

TOKEN = "dead-letters-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADD = "celeriac.demo.add"


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(broker_url=redis_url, queues=("default", "cpu"), max_lost_deliveries=1)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(ApiSettings(tokens=(TOKEN,), common=settings))) as test_client:
        yield test_client


@pytest.fixture
def celery_app(settings: Settings) -> Iterator[Celery]:
    app = create_celery_app("test-api-dead-letters", settings)
    yield app
    app.close()


def dead_letter(app: Celery, queue: str, priority: int = 0) -> str:
    """Send a task and lose its worker once (limit 1): the next fetch sets it aside."""
    task_id: str = app.send_task(
        "celeriac.demo.add", args=[1, 2], queue=queue, priority=priority
    ).id
    received: list[Message] = []

    def on_message(body: Any, message: Message) -> None:
        received.append(message)

    with app.connection_for_read() as connection:
        channel = connection.channel()
        channel.basic_qos(0, 1, False)
        Consumer(channel, [Queue(queue, routing_key=queue)], callbacks=[on_message]).consume()
        connection.drain_events(timeout=5)
        received[0].reject(requeue=True)  # the worker was lost: Celery requeues it
        with pytest.raises(TimeoutError):  # the next fetch dead-letters it: nothing delivered
            connection.drain_events(timeout=1.5)
    return task_id


def test_list_replay_and_discard(
    client: TestClient, celery_app: Celery, redis_client: redis.Redis
) -> None:
    first = dead_letter(celery_app, "default")
    second = dead_letter(celery_app, "cpu", priority=9)

    listed = client.get("/v1/dead-letters", headers=AUTH)
    assert listed.status_code == 200
    body = listed.json()
    assert [entry["id"] for entry in body["dead_letters"]] == [second, first]  # newest first
    assert body["total"] == 2
    entry = body["dead_letters"][1]
    assert (entry["queue"], entry["task"], entry["deliveries"]) == (
        "default",
        "celeriac.demo.add",
        1,
    )
    by_queue = client.get("/v1/dead-letters", params={"queue": "cpu"}, headers=AUTH).json()
    assert [entry["id"] for entry in by_queue["dead_letters"]] == [second]
    page = client.get("/v1/dead-letters", params={"offset": 1, "limit": 1}, headers=AUTH).json()
    assert ([e["id"] for e in page["dead_letters"]], page["total"]) == ([first], 2)
    queues = {q["name"]: q for q in client.get("/v1/queues", headers=AUTH).json()["queues"]}
    assert (queues["default"]["dead_letters"], queues["cpu"]["dead_letters"]) == (1, 1)

    # Replay: back on its own priority list, as it was queued.
    replayed = client.post(f"/v1/dead-letters/{second}/replay", headers=AUTH)
    assert replayed.status_code == 200
    assert replayed.json()["id"] == second
    assert redis_client.llen(priority_list_key("cpu", 9, DEFAULT_PRIORITY_STEPS)) == 1
    assert client.post(f"/v1/dead-letters/{second}/replay", headers=AUTH).status_code == 404

    assert client.delete(f"/v1/dead-letters/{first}", headers=AUTH).status_code == 204
    assert client.delete(f"/v1/dead-letters/{first}", headers=AUTH).status_code == 404
    assert client.get("/v1/dead-letters", headers=AUTH).json()["total"] == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"offset": -1}, "offset"),
        ({"queue": "bad queue"}, "queue"),
    ],
)
def test_bad_parameters_are_422_naming_them(
    client: TestClient, params: dict[str, Any], field: str
) -> None:
    response = client.get("/v1/dead-letters", params=params, headers=AUTH)
    assert response.status_code == 422
    assert field in str(response.json()["detail"])


def test_a_queue_not_served_is_422_naming_the_served_ones(client: TestClient) -> None:
    """As ``POST /v1/tasks`` answers for the same queue."""
    listed = client.get("/v1/dead-letters", params={"queue": "nope"}, headers=AUTH)
    submitted = client.post("/v1/tasks", json={"task": ADD, "queue": "nope"}, headers=AUTH)
    for response, location in ((listed, ["query", "queue"]), (submitted, ["body", "queue"])):
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == location
        assert error["msg"] == "queue 'nope' is not served here; use one of default, cpu"
    served = client.get("/v1/dead-letters", params={"queue": "cpu"}, headers=AUTH)
    assert served.status_code == 200


def test_a_token_is_needed(client: TestClient) -> None:
    assert client.get("/v1/dead-letters").status_code == 401
    assert client.post("/v1/dead-letters/x/replay").status_code == 401
