"""The API against a real Redis: what a submission puts in the broker, what GET reads back from
Celery's real result backend, queue backlogs, readiness, and Redis going away and coming back."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.app.task import Context
from fastapi import FastAPI
from fastapi.testclient import TestClient

from celeriac.api import ApiSettings, create_app
from celeriac.api.tracking import RECORD_PREFIX
from celeriac.app import create_app as create_celery_app
from celeriac.settings import Settings
from celeriac.testing import RedisServer

pytestmark = [
    pytest.mark.integration,
    # Celery's Redis result backend (used here to write real results) still calls setex.
    pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning"),
]

TOKEN = "integration-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADD = "celeriac.demo.add"
RESULT_EXPIRES = 600
# A Redis that is down must be answered fast, not after a hung request.
UNAVAILABLE_DEADLINE_SECONDS = 3.0


def _settings(broker_url: str, result_url: str | None = None) -> Settings:
    return Settings(
        broker_url=broker_url,
        result_backend_url=result_url,
        queues=("default", "cpu"),
        result_expires_seconds=RESULT_EXPIRES,
        redis_socket_timeout_seconds=2,
    )


def _client(settings: Settings) -> TestClient:
    return TestClient(create_app(ApiSettings(tokens=(TOKEN,), common=settings)))


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return _settings(redis_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with _client(settings) as test_client:
        yield test_client


@pytest.fixture
def celery_app(settings: Settings) -> Iterator[Celery]:
    """A plain celeriac-configured Celery app: the result backend and broker as workers see them."""
    app = create_celery_app("test-api", settings)
    yield app
    app.close()


def _submit(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/tasks", json={"task": ADD, **body}, headers=AUTH)
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


def _queued(redis_client: redis.Redis, key: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in redis_client.lrange(key, 0, -1)]


def test_submit_puts_the_task_in_the_default_queue(
    client: TestClient, redis_client: redis.Redis
) -> None:
    response = client.post(
        "/v1/tasks", json={"task": ADD, "args": [1, 2], "kwargs": {}}, headers=AUTH
    )
    assert response.status_code == 202
    accepted = response.json()
    assert accepted == {"id": accepted["id"], "task": ADD, "queue": "default", "state": "PENDING"}
    assert response.headers["Location"] == f"/v1/tasks/{accepted['id']}"

    (message,) = _queued(redis_client, "default")
    assert message["headers"]["task"] == ADD
    assert message["headers"]["id"] == accepted["id"]
    assert message["headers"]["eta"] is None
    assert message["content-type"] == "application/json"
    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert (args, kwargs) == ([1, 2], {})
    # The API's record of the id lives as long as the result will.
    ttl = redis_client.ttl(RECORD_PREFIX + accepted["id"])
    assert RESULT_EXPIRES - 5 <= ttl <= RESULT_EXPIRES


def test_submit_options_reach_the_message(client: TestClient, redis_client: redis.Redis) -> None:
    prioritized = _submit(client, queue="cpu", priority=7, kwargs={"x": 1, "y": 2})
    (message,) = _queued(redis_client, "cpu\x06\x166")  # kombu's list for priorities 6-8
    assert message["headers"]["id"] == prioritized["id"]
    assert message["properties"]["priority"] == 7
    assert message["properties"]["delivery_info"]["routing_key"] == "cpu"
    assert json.loads(base64.b64decode(message["body"]))[1] == {"x": 1, "y": 2}

    before = datetime.now(UTC)
    delayed = _submit(client, args=[1, 1], countdown=120)
    # An ETA given in another zone is the same instant.
    soon = (before + timedelta(seconds=90)).astimezone(timezone(timedelta(hours=-5)))
    at_eta = _submit(client, args=[2, 2], eta=soon.isoformat())
    by_id = {m["headers"]["id"]: m for m in _queued(redis_client, "default")}
    countdown_eta = datetime.fromisoformat(by_id[delayed["id"]]["headers"]["eta"])
    assert before + timedelta(seconds=119) <= countdown_eta <= before + timedelta(seconds=125)
    assert datetime.fromisoformat(by_id[at_eta["id"]]["headers"]["eta"]) == soon
    # Delayed tasks keep their record for the delay plus the result expiry.
    assert redis_client.ttl(RECORD_PREFIX + delayed["id"]) > RESULT_EXPIRES + 100


def test_get_a_submitted_task_is_pending_with_name_and_queue(client: TestClient) -> None:
    accepted = _submit(client, queue="cpu")
    response = client.get(f"/v1/tasks/{accepted['id']}", headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert (body["state"], body["task"], body["queue"]) == ("PENDING", ADD, "cpu")
    assert body["result"] is None
    assert body["error"] is None


def test_never_submitted_id_is_404(client: TestClient) -> None:
    for method in ("GET", "DELETE"):
        response = client.request(method, "/v1/tasks/0f0f0f0f-never-seen", headers=AUTH)
        assert response.status_code == 404
        assert "unknown" in response.json()["detail"]


def test_finished_states_read_from_the_result_backend(
    client: TestClient, celery_app: Celery
) -> None:
    backend = celery_app.backend
    done = _submit(client, args=[1, 2])["id"]
    backend.mark_as_done(done, {"sum": 3, "parts": [1, 2]})
    failed = _submit(client)["id"]
    try:
        raise ValueError("bad input: 'x'")
    except ValueError as exc:
        backend.mark_as_failure(failed, exc, traceback="Traceback (most recent call last): ...")
    retrying = _submit(client)["id"]
    backend.mark_as_retry(retrying, RuntimeError("attempt 1 failed"), traceback="Traceback ...")
    started = _submit(client)["id"]
    backend.mark_as_started(started, pid=1234, hostname="celery@worker")
    revoked = _submit(client)["id"]
    backend.mark_as_revoked(revoked, reason="revoked")

    def status(task_id: str) -> dict[str, Any]:
        response = client.get(f"/v1/tasks/{task_id}", headers=AUTH)
        assert response.status_code == 200
        assert "Traceback" not in response.text
        body: dict[str, Any] = response.json()
        assert body["task"] == ADD
        return body

    success = status(done)
    assert (success["state"], success["result"], success["error"]) == (
        "SUCCESS",
        {"sum": 3, "parts": [1, 2]},
        None,
    )
    assert datetime.fromisoformat(success["finished_at"]).year >= 2024
    failure = status(failed)
    assert failure["state"] == "FAILURE"
    assert failure["error"] == {"type": "ValueError", "message": "bad input: 'x'"}
    assert failure["result"] is None
    retry = status(retrying)
    assert retry["state"] == "RETRY"
    assert retry["error"] == {"type": "RuntimeError", "message": "attempt 1 failed"}
    assert retry["finished_at"] is None
    running = status(started)
    assert (running["state"], running["result"], running["error"]) == ("STARTED", None, None)
    gone = status(revoked)
    assert gone["state"] == "REVOKED"
    assert gone["error"]["type"] == "TaskRevokedError"


def test_task_sent_by_another_producer_is_read_from_its_result(
    client: TestClient, celery_app: Celery
) -> None:
    """No API record, but a result with result_extended: name and queue come from Celery."""
    request = Context(
        id="from-beat-1",
        task="celeriac.demo.sleep",
        args=[],
        kwargs={},
        delivery_info={"routing_key": "cpu"},
        retries=2,
        hostname="celery@w",
    )
    celery_app.backend.store_result("from-beat-1", 1.0, "SUCCESS", request=request)
    body = client.get("/v1/tasks/from-beat-1", headers=AUTH).json()
    assert body["task"] == "celeriac.demo.sleep"
    assert body["queue"] == "cpu"
    assert body["retries"] == 2
    assert body["result"] == 1.0


def test_delete_answers_by_state(
    client: TestClient, celery_app: Celery, redis_client: redis.Redis
) -> None:
    pending = _submit(client, countdown=60)["id"]
    response = client.delete(f"/v1/tasks/{pending}", headers=AUTH)
    assert response.status_code == 202
    revoked_now = response.json()
    assert (revoked_now["state"], revoked_now["error"]["type"]) == ("REVOKED", "TaskRevokedError")
    assert datetime.fromisoformat(revoked_now["finished_at"]).tzinfo is not None
    # No worker has met it, so the result backend still has nothing: the API's record says it.
    assert not redis_client.exists(f"celery-task-meta-{pending}")
    assert client.get(f"/v1/tasks/{pending}", headers=AUTH).json() == revoked_now
    assert 0 < redis_client.ttl(RECORD_PREFIX + pending) <= RESULT_EXPIRES + 60
    listed = client.get("/v1/tasks", params={"state": "REVOKED"}, headers=AUTH).json()
    assert [task["id"] for task in listed["tasks"]] == [pending]
    # Again: nothing more to do, the same answer.
    again = client.delete(f"/v1/tasks/{pending}", headers=AUTH)
    assert (again.status_code, again.json()) == (202, revoked_now)
    # The worker meets it and stores Celery's REVOKED: the same state.
    celery_app.backend.mark_as_revoked(pending, reason="revoked")
    assert client.get(f"/v1/tasks/{pending}", headers=AUTH).json()["state"] == "REVOKED"

    # A worker that had not heard the revoke ran it after all: what it stored is the answer.
    missed = _submit(client)["id"]
    assert client.delete(f"/v1/tasks/{missed}", headers=AUTH).json()["state"] == "REVOKED"
    celery_app.backend.mark_as_done(missed, 3)
    assert client.get(f"/v1/tasks/{missed}", headers=AUTH).json()["state"] == "SUCCESS"

    # Running: the revoke is sent, the run finishes.
    running = _submit(client)["id"]
    celery_app.backend.mark_as_started(running, pid=1, hostname="celery@w")
    response = client.delete(f"/v1/tasks/{running}", headers=AUTH)
    assert (response.status_code, response.json()["state"]) == (202, "STARTED")
    assert client.get(f"/v1/tasks/{running}", headers=AUTH).json()["state"] == "STARTED"

    finished = _submit(client)["id"]
    celery_app.backend.mark_as_done(finished, 3)
    response = client.delete(f"/v1/tasks/{finished}", headers=AUTH)
    assert response.status_code == 409
    assert "already finished with SUCCESS" in response.json()["detail"]
    assert client.get(f"/v1/tasks/{finished}", headers=AUTH).json()["result"] == 3

    revoked = _submit(client)["id"]
    celery_app.backend.mark_as_revoked(revoked)
    response = client.delete(f"/v1/tasks/{revoked}", headers=AUTH)
    assert response.status_code == 202
    assert response.json()["state"] == "REVOKED"


def test_index_names_where_things_are(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    index = response.json()
    assert index["docs"] == "/docs"
    assert index["openapi"] == "/openapi.json"
    assert (index["tasks"], index["health"], index["ready"]) == ("/v1/tasks", "/healthz", "/readyz")
    # Every path it names answers (the resources with a token).
    for key in ("docs", "openapi", "tasks", "queues", "dead_letters", "health", "ready"):
        assert client.get(index[key], headers=AUTH).status_code == 200, key


def test_docs_are_served_by_the_api_itself(client: TestClient) -> None:
    """Swagger UI from this server, not a CDN: /docs works offline."""
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text
    assert "https://" not in page.text
    assert "'/openapi.json'" in page.text
    references = re.findall(r'(?:href|src)="([^"]+)"', page.text)
    assert len(references) == 3, references
    types = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",)}
    types[".png"] = ("image/png",)
    for reference in references:
        assert reference.startswith("/docs/"), reference
        asset = client.get(reference)
        assert asset.status_code == 200, reference
        assert asset.headers["content-type"].startswith(types[Path(reference).suffix]), reference
    assert "SwaggerUIBundle" in client.get(next(r for r in references if r.endswith(".js"))).text
    # Only what the page loads: not the package's demo page (it loads a remote document).
    assert client.get("/docs/assets/index.html").status_code == 404


def test_the_document_lists_the_queues_each_app_serves(redis_url: str) -> None:
    def queue_enums(app: FastAPI) -> list[list[str]]:
        document = app.openapi()
        field = document["components"]["schemas"]["TaskRequest"]["properties"]["queue"]
        (parameter,) = [
            p
            for p in document["paths"]["/v1/dead-letters"]["get"]["parameters"]
            if p["name"] == "queue"
        ]
        schemas = [*field["anyOf"], *parameter["schema"]["anyOf"]]
        return [schema["enum"] for schema in schemas if "enum" in schema]

    two = create_app(ApiSettings(tokens=(TOKEN,), common=_settings(redis_url)))
    only = Settings(broker_url=redis_url, queues=("only",), default_queue="only")
    one = create_app(ApiSettings(tokens=(TOKEN,), common=only))
    assert queue_enums(two) == [["default", "cpu"], ["default", "cpu"]]
    assert queue_enums(one) == [["only"], ["only"]]
    # What the server serves is /openapi.json, the same document.
    with TestClient(two) as client:
        assert client.get("/openapi.json").json() == two.openapi()
    assert "x-celeriac" not in json.dumps(two.openapi())


def test_queues_report_waiting_in_flight_and_scheduled(
    client: TestClient, celery_app: Celery, redis_client: redis.Redis
) -> None:
    for priority in (0, 0, 5, 9):
        _submit(client, priority=priority)
    _submit(client, countdown=300)
    _submit(client, queue="cpu", priority=3)
    with celery_app.connection_for_read() as conn:
        channel = conn.default_channel
        # A worker would take the two priority-0 tasks first, then the countdown one (also 0).
        held = [channel.basic_get("default", no_ack=False) for _ in range(3)]
        assert all(message is not None for message in held)
        assert redis_client.hlen("unacked") == 3
        response = client.get("/v1/queues", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {
        "queues": [
            {
                "name": "default",
                "waiting": 2,
                "in_flight": 2,
                "scheduled": 1,
                "backlog": 4,
                "dead_letters": 0,
            },
            {
                "name": "cpu",
                "waiting": 1,
                "in_flight": 0,
                "scheduled": 0,
                "backlog": 1,
                "dead_letters": 0,
            },
        ]
    }


def test_readyz_pings_redis(client: TestClient) -> None:
    response = client.get("/readyz")
    assert (response.status_code, response.json()) == (200, {"status": "ready"})


def _unavailable(client: TestClient, method: str, path: str, **kwargs: Any) -> None:
    started = time.monotonic()
    response = client.request(method, path, **kwargs)
    elapsed = time.monotonic() - started
    assert response.status_code == 503, (method, path, response.text)
    assert response.headers["Retry-After"] == "5"
    assert response.json() == {"detail": "Redis is unavailable; retry later"}
    assert elapsed < UNAVAILABLE_DEADLINE_SECONDS, (method, path, elapsed)


def test_redis_down_is_503_fast_and_the_api_recovers(own_redis: RedisServer) -> None:
    with _client(_settings(own_redis.url())) as client:
        before = _submit(client)["id"]
        assert client.get("/v1/queues", headers=AUTH).status_code == 200

        own_redis.stop()
        _unavailable(client, "POST", "/v1/tasks", json={"task": ADD}, headers=AUTH)
        _unavailable(client, "GET", f"/v1/tasks/{before}", headers=AUTH)
        _unavailable(client, "DELETE", f"/v1/tasks/{before}", headers=AUTH)
        _unavailable(client, "GET", "/v1/queues", headers=AUTH)
        _unavailable(client, "GET", "/readyz")
        assert client.get("/healthz").status_code == 200

        own_redis.start()
        # Same process, same pools: connections that died with Redis are replaced.
        assert client.get("/readyz").status_code == 200
        after = _submit(client)["id"]
        assert client.get(f"/v1/tasks/{after}", headers=AUTH).json()["state"] == "PENDING"
        assert client.get("/v1/queues", headers=AUTH).json()["queues"][0]["waiting"] == 1


def test_broker_down_with_results_up_is_503_and_leaves_no_record(
    own_redis: RedisServer, redis_url: str, redis_client: redis.Redis
) -> None:
    """The publish itself fails (the record was written first): bounded, and cleaned up."""
    with _client(_settings(own_redis.url(), result_url=redis_url)) as client:
        queued = _submit(client)["id"]
        own_redis.stop()
        _unavailable(client, "POST", "/v1/tasks", json={"task": ADD}, headers=AUTH)
        # The id is found (results are up) but the revoke broadcast needs the broker.
        _unavailable(client, "DELETE", f"/v1/tasks/{queued}", headers=AUTH)
        _unavailable(client, "GET", "/readyz")
        assert redis_client.keys(RECORD_PREFIX + "*") == [(RECORD_PREFIX + queued).encode()]
        own_redis.start()
        accepted = _submit(client)
        assert redis_client.exists(RECORD_PREFIX + accepted["id"])
        assert own_redis.client().llen("default") == 1  # the server restarted empty


def test_redis_with_a_password(tmp_path: Path) -> None:
    server = RedisServer(password="redis-pass-1").start()
    try:
        password_file = tmp_path / "password"
        password_file.write_text("redis-pass-1\n")
        settings = Settings.from_env(
            {
                "CELERIAC_BROKER_URL": f"redis://127.0.0.1:{server.port}/0",
                "CELERIAC_REDIS_PASSWORD_FILE": str(password_file),
            }
        )
        with _client(settings) as client:
            assert client.get("/readyz").status_code == 200
            task_id = _submit(client)["id"]
            assert client.get(f"/v1/tasks/{task_id}", headers=AUTH).json()["state"] == "PENDING"
            assert client.get("/v1/queues", headers=AUTH).json()["queues"][0]["waiting"] == 1
    finally:
        server.close()
