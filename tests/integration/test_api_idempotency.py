"""``Idempotency-Key`` against a real Redis: concurrent retries against a real ``celeriac api``
process queue one message, the fast path and the FastAPI route answer alike, bad keys and
reused keys are 422s naming the header, and a 503 leaves no key behind."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from celeriac.api import ApiSettings, create_app
from celeriac.api.idempotency import KEY_PREFIX, REPLAYED_HEADER
from celeriac.api.tracking import RECENT_KEY, RECORD_PREFIX
from celeriac.settings import Settings
from celeriac.testing import Child, RedisServer, celeriac_command, free_port, wait_until

pytestmark = pytest.mark.integration

TOKEN = "idempotency-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADD = "celeriac.demo.add"
WINDOW = 600
# Sent through the FastAPI route: a JSON type the fast path leaves to FastAPI.
ROUTE_JSON = {"Content-Type": "application/x-celeriac+json"}
CONCURRENT = 32


def _settings(broker_url: str, result_url: str | None = None) -> Settings:
    return Settings(
        broker_url=broker_url, result_backend_url=result_url, redis_socket_timeout_seconds=2
    )


def _app_client(settings: Settings) -> TestClient:
    api = ApiSettings(tokens=(TOKEN,), common=settings, idempotency_window_seconds=WINDOW)
    return TestClient(create_app(api))


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    with _app_client(_settings(redis_url)) as test_client:
        yield test_client


def _post(
    client: TestClient | httpx.Client,
    key: str | None,
    body: dict[str, Any],
    *,
    route: bool = False,
) -> httpx.Response:
    headers = dict(AUTH)
    if key is not None:
        headers["Idempotency-Key"] = key
    if route:
        headers.update(ROUTE_JSON)
        return client.post("/v1/tasks", content=json.dumps(body), headers=headers)
    return client.post("/v1/tasks", json=body, headers=headers)


@pytest.mark.parametrize("route", [False, True], ids=["fast path", "route"])
def test_a_retry_with_the_key_answers_the_first_id_and_queues_nothing(
    client: TestClient, redis_client: redis.Redis, route: bool
) -> None:
    body = {"task": ADD, "args": [1, 2]}
    first = _post(client, "order-42", body, route=route)
    assert first.status_code == 202, first.text
    assert REPLAYED_HEADER not in first.headers
    task_id = first.json()["id"]

    for again_route in (False, True):
        again = _post(client, "order-42", body, route=again_route)
        assert again.status_code == 202, again.text
        assert again.json() == first.json()
        assert again.headers["Location"] == f"/v1/tasks/{task_id}"
        assert again.headers[REPLAYED_HEADER] == "true"

    assert redis_client.llen("default") == 1
    assert redis_client.exists(RECORD_PREFIX + task_id)
    assert WINDOW - 5 <= redis_client.ttl(KEY_PREFIX + "order-42") <= WINDOW
    # Another key, or none, is another submission.
    assert _post(client, "order-43", body).json()["id"] != task_id
    assert _post(client, None, body).json()["id"] != task_id
    assert redis_client.llen("default") == 3


@pytest.mark.parametrize("route", [False, True], ids=["fast path", "route"])
def test_a_key_reused_for_another_request_is_422_and_queues_nothing(
    client: TestClient, redis_client: redis.Redis, route: bool
) -> None:
    assert _post(client, "k1", {"task": ADD, "args": [1, 2]}).status_code == 202
    for other in (
        {"task": ADD, "args": [1, 3]},
        {"task": ADD, "args": [1, 2], "priority": 3},
        {"task": ADD, "args": [1, 2], "countdown": 5.0},
        {"task": "celeriac.demo.sleep", "args": [1, 2]},
    ):
        response = _post(client, "k1", other, route=route)
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["header", "Idempotency-Key"]
        assert "different request" in error["msg"]
    assert redis_client.llen("default") == 1
    # The queue resolved from the default counts as the same request.
    same = _post(client, "k1", {"task": ADD, "args": [1, 2], "queue": "default"}, route=route)
    assert same.status_code == 202
    assert same.headers[REPLAYED_HEADER] == "true"


@pytest.mark.parametrize(
    "key",
    [b"", b"has space", b"x" * 256, "caf\u00e9".encode(), b"semi;colon", b'quote"d'],
    ids=repr,
)
@pytest.mark.parametrize("route", [False, True], ids=["fast path", "route"])
def test_a_malformed_key_is_422_naming_the_header(
    client: TestClient, redis_client: redis.Redis, key: bytes, route: bool
) -> None:
    content_type = ROUTE_JSON["Content-Type"] if route else "application/json"
    headers = {
        b"Authorization": f"Bearer {TOKEN}".encode(),
        b"Content-Type": content_type.encode(),
        b"Idempotency-Key": key,
    }
    response = client.post("/v1/tasks", content=json.dumps({"task": ADD}), headers=headers)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["header", "Idempotency-Key"]
    assert "Traceback" not in response.text
    assert redis_client.llen("default") == 0
    assert not redis_client.keys(KEY_PREFIX + "*")


def test_the_longest_key_is_accepted(client: TestClient) -> None:
    key = "A0_.:+/=-" * 28 + "abc"  # 255 characters
    assert _post(client, key, {"task": ADD}).status_code == 202
    assert _post(client, key, {"task": ADD}).headers[REPLAYED_HEADER] == "true"


def test_results_in_another_redis_keep_only_the_first_record(redis_server: RedisServer) -> None:
    broker = redis_server.client(0)
    results = redis_server.client(1)
    broker.flushall()
    try:
        with _app_client(_settings(redis_server.url(0), redis_server.url(1))) as client:
            first = _post(client, "two-redis", {"task": ADD})
            again = _post(client, "two-redis", {"task": ADD})
            other = _post(client, "two-redis", {"task": ADD, "args": [9]})
        assert again.json()["id"] == first.json()["id"]
        assert other.status_code == 422
        assert broker.llen("default") == 1
        # The retry's own record and recent entry were taken back: only the first is known.
        assert [key.decode() for key in results.keys(RECORD_PREFIX + "*")] == [
            RECORD_PREFIX + first.json()["id"]
        ]
        assert [member.decode() for member in results.zrange(RECENT_KEY, 0, -1)] == [
            first.json()["id"]
        ]
    finally:
        broker.close()
        results.close()


def test_a_503_leaves_no_key_and_the_retry_queues(own_redis: RedisServer) -> None:
    with _app_client(_settings(own_redis.url())) as client:
        own_redis.stop()
        down = _post(client, "during-outage", {"task": ADD})
        assert down.status_code == 503, down.text
        own_redis.start()
        retried = _post(client, "during-outage", {"task": ADD})
        assert retried.status_code == 202, retried.text
        assert REPLAYED_HEADER not in retried.headers
    with own_redis.client() as check:
        assert check.llen("default") == 1
        assert check.exists(RECORD_PREFIX + retried.json()["id"])


def _start_api(spawn: Callable[..., Child], broker_url: str) -> httpx.Client:
    port = free_port()
    env = {
        "CELERIAC_BROKER_URL": broker_url,
        "CELERIAC_API_TOKENS": TOKEN,
        # Two processes: the retries race across processes, not only inside one event loop.
        "CELERIAC_API_WORKERS": "2",
    }
    command = celeriac_command("api", "--host", "127.0.0.1", "--port", str(port))
    child = spawn(command, env=env, name="api")
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        timeout=10,
        limits=httpx.Limits(max_connections=CONCURRENT),
    )

    def healthy() -> bool:
        child.check_alive()
        return client.get("/healthz").status_code == 200

    wait_until(healthy, timeout=30, message="celeriac api to answer /healthz")
    return client


@pytest.mark.parametrize("route", [False, True], ids=["fast path", "route"])
def test_concurrent_retries_against_a_real_server_queue_one_message(
    spawn: Callable[..., Child], redis_url: str, redis_client: redis.Redis, route: bool
) -> None:
    client = _start_api(spawn, redis_url)
    # Every request waits at the barrier, then all are sent at once, several rounds.
    start = threading.Barrier(CONCURRENT)

    def fire(key: str) -> httpx.Response:
        start.wait(timeout=30)
        return _post(client, key, {"task": ADD, "args": [4, 2]}, route=route)

    try:
        with ThreadPoolExecutor(CONCURRENT) as pool:
            for round_number in range(5):
                key = f"burst-{round_number}"
                responses = list(pool.map(fire, [key] * CONCURRENT))
                assert {r.status_code for r in responses} == {202}, [r.text for r in responses]
                assert len({r.json()["id"] for r in responses}) == 1
                assert len({r.headers["Location"] for r in responses}) == 1
                firsts = [r for r in responses if REPLAYED_HEADER not in r.headers]
                assert len(firsts) == 1
        assert redis_client.llen("default") == 5
    finally:
        client.close()
