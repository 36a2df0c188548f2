"""Schemathesis against the API's own OpenAPI document, every check, on a real uvicorn server
with a real Redis: the document must say what the API does (statuses, bodies, headers)."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import jsonschema_rs
import pytest
import redis
import schemathesis
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from schemathesis import Case
from schemathesis.config import SchemathesisConfig

from celeriac.api import ApiSettings, create_app, idempotency
from celeriac.api.tracking import RESULT_PREFIX
from celeriac.settings import DEFAULT_APP, Settings
from celeriac.testing import free_port

pytestmark = pytest.mark.integration

TOKEN = "schema-test-token"
TASKS = ("celeriac.demo.add", "celeriac.demo.sleep")
QUEUES = ("default", "cpu")
SEED = 20_240_601
MAX_EXAMPLES = 30
# Far above a request's time with Redis up, far below a hang on an unreachable Redis.
DEADLINE_MILLISECONDS = 5_000
STOP_TIMEOUT_SECONDS = 10.0
MAX_BODY_BYTES = 4096


def _app(broker_url: str, app: str = DEFAULT_APP) -> FastAPI:
    settings = Settings(
        app=app,
        broker_url=broker_url,
        queues=QUEUES,
        visibility_timeout_seconds=600,
        redis_socket_timeout_seconds=2,
    )
    tasks = TASKS if app == DEFAULT_APP else None
    return create_app(
        ApiSettings(
            tokens=(TOKEN,), common=settings, allowed_tasks=tasks, max_body_bytes=MAX_BODY_BYTES
        )
    )


# Read at collection, before the test Redis runs: the document does not depend on where Redis
# is (the server fixture checks that it serves this same document).
DOCUMENT = _app("redis://127.0.0.1:1/0").openapi()
schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            "auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}}},
        }
    ),
)


@pytest.fixture
def api_url(redis_url: str) -> Iterator[str]:
    """The API served by uvicorn in a thread, on a socket bound before it starts: requests
    wait in the listen backlog until uvicorn accepts them, so nothing polls for readiness."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_app(redis_url), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        assert httpx.get(f"{url}/openapi.json").json() == DOCUMENT
        yield url
    finally:
        server.should_exit = True
        thread.join(STOP_TIMEOUT_SECONDS)
        listener.close()
    assert not thread.is_alive(), "uvicorn did not stop"


# One server and one clean Redis per operation, shared by its examples: the API keeps no state
# between requests, and keys left by one example are what the next one should meet.
@schema.parametrize()
@hypothesis.settings(
    deadline=DEADLINE_MILLISECONDS,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
def test_api_matches_its_openapi_document(case: Case, api_url: str) -> None:
    _name_what_this_deployment_serves(case)
    case.call_and_validate(base_url=api_url)


def _name_what_this_deployment_serves(case: Case) -> None:
    """A task this deployment accepts, where the document allows any name, and an
    Idempotency-Key not used before.

    The allow-list is configuration, not schema (a name outside it is the documented 422); the
    queues are in the document (an enum per app), so generated queues are served ones. Only a
    schema-valid name is replaced, by another schema-valid one, so a case still expects
    acceptance or rejection exactly as generated.
    """
    key = (case.headers or {}).get(idempotency.HEADER)
    if key is not None and idempotency.valid_key(key):
        # A key is state: one reused across examples for another body is the documented 422.
        case.headers[idempotency.HEADER] = uuid.uuid4().hex
    if not isinstance(case.body, dict) or "task" not in case.body:
        return
    task = DOCUMENT["components"]["schemas"]["TaskRequest"]["properties"]["task"]
    if jsonschema_rs.validator_for(task).is_valid(case.body["task"]):
        case.body["task"] = TASKS[1]


AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {**AUTH, "Content-Type": "application/json"}
UNKNOWN = "/v1/tasks/never-submitted"
FINISHED = "/v1/tasks/finished-task"
OVERSIZE = {"content": b"x" * (MAX_BODY_BYTES + 1)}
NO_TOKEN: dict[str, Any] = {"headers": {}}
TASK_OPERATIONS = [("GET", "/v1/tasks/{task_id}"), ("DELETE", "/v1/tasks/{task_id}")]
# (method, template, a path of an unknown dead letter, a path with an invalid id)
DEAD_LETTER_OPERATIONS = [
    (
        "POST",
        "/v1/dead-letters/{letter_id}/replay",
        "/v1/dead-letters/unknown/replay",
        "/v1/dead-letters/-x/replay",
    ),
    ("DELETE", "/v1/dead-letters/{letter_id}", "/v1/dead-letters/unknown", "/v1/dead-letters/-x"),
]
# Every error each operation can answer, provoked for real: (method, path template, path,
# request options, Redis reachable, status).
PROVOKED: list[tuple[str, str, str, dict[str, Any], bool, int]] = [
    ("POST", "/v1/tasks", "/v1/tasks", NO_TOKEN, True, 401),
    ("POST", "/v1/tasks", "/v1/tasks", OVERSIZE, True, 413),
    ("POST", "/v1/tasks", "/v1/tasks", {"json": {"task": TASKS[0], "priority": 10}}, True, 422),
    # Nested deeper than Python's JSON parser goes: 422 like other malformed JSON, not 400.
    ("POST", "/v1/tasks", "/v1/tasks", {"content": b"[" * 2000, "headers": JSON}, True, 422),
    ("POST", "/v1/tasks", "/v1/tasks", {"json": {"task": TASKS[0]}}, False, 503),
    # A malformed Idempotency-Key: 422 naming the header.
    (
        "POST",
        "/v1/tasks",
        "/v1/tasks",
        {"json": {"task": TASKS[0]}, "headers": {**AUTH, "Idempotency-Key": "a b"}},
        True,
        422,
    ),
    *[(method, template, UNKNOWN, NO_TOKEN, True, 401) for method, template in TASK_OPERATIONS],
    *[(method, template, UNKNOWN, OVERSIZE, True, 413) for method, template in TASK_OPERATIONS],
    *[(method, template, UNKNOWN, {}, True, 404) for method, template in TASK_OPERATIONS],
    *[(method, template, "/v1/tasks/-x", {}, True, 422) for method, template in TASK_OPERATIONS],
    *[(method, template, UNKNOWN, {}, False, 503) for method, template in TASK_OPERATIONS],
    ("DELETE", "/v1/tasks/{task_id}", FINISHED, {}, True, 409),
    ("DELETE", "/v1/tasks/{task_id}", UNKNOWN, {"params": {"terminate": "true"}}, True, 422),
    ("GET", "/v1/tasks", "/v1/tasks", NO_TOKEN, True, 401),
    ("GET", "/v1/tasks", "/v1/tasks", OVERSIZE, True, 413),
    ("GET", "/v1/tasks", "/v1/tasks", {"params": {"limit": 0}}, True, 422),
    ("GET", "/v1/tasks", "/v1/tasks", {}, False, 503),
    ("GET", "/v1/queues", "/v1/queues", NO_TOKEN, True, 401),
    ("GET", "/v1/queues", "/v1/queues", OVERSIZE, True, 413),
    ("GET", "/v1/queues", "/v1/queues", {}, False, 503),
    ("GET", "/v1/dead-letters", "/v1/dead-letters", NO_TOKEN, True, 401),
    ("GET", "/v1/dead-letters", "/v1/dead-letters", OVERSIZE, True, 413),
    ("GET", "/v1/dead-letters", "/v1/dead-letters", {"params": {"limit": 0}}, True, 422),
    ("GET", "/v1/dead-letters", "/v1/dead-letters", {}, False, 503),
    *[
        (method, template, path, NO_TOKEN, True, 401)
        for method, template, path, _ in DEAD_LETTER_OPERATIONS
    ],
    *[
        (method, template, path, OVERSIZE, True, 413)
        for method, template, path, _ in DEAD_LETTER_OPERATIONS
    ],
    *[
        (method, template, path, {}, True, 404)
        for method, template, path, _ in DEAD_LETTER_OPERATIONS
    ],
    *[
        (method, template, bad, {}, True, 422)
        for method, template, _, bad in DEAD_LETTER_OPERATIONS
    ],
    *[
        (method, template, path, {}, False, 503)
        for method, template, path, _ in DEAD_LETTER_OPERATIONS
    ],
    ("GET", "/v1/dead-letters", "/v1/dead-letters", {"params": {"queue": "nope"}}, True, 422),
    ("GET", "/", "/", OVERSIZE, True, 413),
    ("GET", "/healthz", "/healthz", OVERSIZE, True, 413),
    ("GET", "/readyz", "/readyz", OVERSIZE, True, 413),
    ("GET", "/readyz", "/readyz", {}, False, 503),
]
# Given by an app whose results are not in Redis (tests/integration/apps/results_elsewhere.py).
RESULTS_ELSEWHERE = "tests.integration.apps.results_elsewhere:app"
PROVOKED_WITH_RESULTS_ELSEWHERE = [("GET", "/v1/tasks", "/v1/tasks", {}, True, 501)]


@pytest.mark.parametrize(
    ("method", "template", "path", "options", "redis_up", "status", "app"),
    [
        *[(*case, DEFAULT_APP) for case in PROVOKED],
        *[(*case, RESULTS_ELSEWHERE) for case in PROVOKED_WITH_RESULTS_ELSEWHERE],
    ],
    ids=[f"{case[0]} {case[2]} {case[5]}" for case in PROVOKED + PROVOKED_WITH_RESULTS_ELSEWHERE],
)
def test_each_error_an_operation_gives_is_declared(
    redis_url: str,
    redis_client: redis.Redis,
    method: str,
    template: str,
    path: str,
    options: dict[str, Any],
    redis_up: bool,
    status: int,
    app: str,
) -> None:
    broker_url = redis_url if redis_up else f"redis://127.0.0.1:{free_port()}/0"
    finished = {"status": "SUCCESS", "result": 3, "task_id": "finished-task"}
    redis_client.set(RESULT_PREFIX + "finished-task", json.dumps(finished))
    with TestClient(_app(broker_url, app)) as client:
        response = client.request(method, path, **{"headers": AUTH, **options})
    assert response.status_code == status, response.text
    assert str(status) in DOCUMENT["paths"][template][method.lower()]["responses"]


def test_no_operation_declares_an_error_it_cannot_give() -> None:
    provoked: dict[tuple[str, str], set[str]] = {}
    for method, template, _path, _options, _redis_up, status in [
        *PROVOKED,
        *PROVOKED_WITH_RESULTS_ELSEWHERE,
    ]:
        provoked.setdefault((method.lower(), template), set()).add(str(status))
    declared = {
        (method, template): {status for status in operation["responses"] if status >= "4"}
        for template, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
    }
    assert declared == provoked
