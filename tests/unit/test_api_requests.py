"""Requests the API refuses before reaching Redis: auth, validation, body size; open routes.

The app points at a port where nothing listens: a request that reached Redis would answer
503, so every status asserted here is decided by the API alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema_rs
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Message

from celeriac.api import ApiSettings, create_app
from celeriac.api.limits import BodySizeLimit
from celeriac.settings import Settings
from celeriac.testing import free_port

TOKEN = "unit-test-token"
OTHER_TOKEN = "second-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 1024
ADD = "celeriac.demo.add"


@pytest.fixture(scope="module")
def app() -> FastAPI:
    settings = Settings(
        broker_url=f"redis://127.0.0.1:{free_port()}/0",
        queues=("default", "cpu"),
        visibility_timeout_seconds=600,
        redis_socket_timeout_seconds=1,
    )
    return create_app(
        ApiSettings(tokens=(TOKEN, OTHER_TOKEN), common=settings, max_body_bytes=MAX_BODY)
    )


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def _in(seconds: float, *, aware: bool = True) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=seconds)
    return (moment if aware else moment.replace(tzinfo=None)).isoformat()


BAD_BODIES: list[tuple[str, Any, list[str | int], str]] = [
    # (case, JSON body, expected error location, fragment of the message)
    ("unknown task", {"task": "nope.nothing"}, ["body", "task"], "'nope.nothing' is not allowed"),
    ("celery's own task", {"task": "celery.backend_cleanup"}, ["body", "task"], "not allowed"),
    ("empty task name", {"task": ""}, ["body", "task"], "at least 1 character"),
    ("task not a string", {"task": 5}, ["body", "task"], "valid string"),
    ("missing task", {"args": [1, 2]}, ["body", "task"], "Field required"),
    ("args not a list", {"task": ADD, "args": "1,2"}, ["body", "args"], "valid list"),
    ("args an object", {"task": ADD, "args": {"x": 1}}, ["body", "args"], "valid list"),
    ("kwargs not an object", {"task": ADD, "kwargs": [1]}, ["body", "kwargs"], "dictionary"),
    ("queue not served", {"task": ADD, "queue": "gpu"}, ["body", "queue"], "'gpu' is not served"),
    ("queue not a string", {"task": ADD, "queue": 1}, ["body", "queue"], "valid string"),
    ("queue empty", {"task": ADD, "queue": ""}, ["body", "queue"], "at least 1 character"),
    (
        "negative countdown",
        {"task": ADD, "countdown": -1},
        ["body", "countdown"],
        "greater than or equal to 0",
    ),
    ("countdown as text", {"task": ADD, "countdown": "10"}, ["body", "countdown"], "number"),
    (
        "countdown past visibility timeout",
        {"task": ADD, "countdown": 600},
        ["body", "countdown"],
        "visibility timeout (600 s",
    ),
    (
        "eta without time zone",
        {"task": ADD, "eta": _in(60, aware=False)},
        ["body", "eta"],
        "timezone",
    ),
    ("eta not a time", {"task": ADD, "eta": "tomorrow"}, ["body", "eta"], "datetime"),
    ("eta as a number", {"task": ADD, "eta": 1900000000}, ["body", "eta"], "ISO-8601"),
    ("eta past visibility timeout", {"task": ADD, "eta": _in(3600)}, ["body", "eta"], "600 s"),
    (
        "countdown and eta",
        {"task": ADD, "countdown": 5, "eta": _in(60)},
        ["body"],
        "countdown or eta, not both",
    ),
    (
        "priority above 9",
        {"task": ADD, "priority": 10},
        ["body", "priority"],
        "less than or equal to 9",
    ),
    (
        "priority below 0",
        {"task": ADD, "priority": -1},
        ["body", "priority"],
        "greater than or equal to 0",
    ),
    ("priority as text", {"task": ADD, "priority": "5"}, ["body", "priority"], "valid integer"),
    ("priority a boolean", {"task": ADD, "priority": True}, ["body", "priority"], "integer"),
    ("priority a fraction", {"task": ADD, "priority": 1.5}, ["body", "priority"], "integer"),
    ("unknown field", {"task": ADD, "expires": 5}, ["body", "expires"], "Extra inputs"),
    ("body a list", [ADD], ["body"], "valid dictionary"),
]


@pytest.mark.parametrize(
    ("body", "location", "fragment"),
    [case[1:] for case in BAD_BODIES],
    ids=[case[0] for case in BAD_BODIES],
)
def test_bad_body_is_422_naming_the_field(
    client: TestClient, body: Any, location: list[str | int], fragment: str
) -> None:
    response = client.post("/v1/tasks", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    matching = [error for error in errors if error["loc"] == location]
    assert matching, errors
    assert fragment in matching[0]["msg"]
    assert set(matching[0]) == {"loc", "msg", "type"}  # the input is never echoed back


@pytest.mark.parametrize(
    ("content", "content_type", "error_type"),
    [
        (b'{"task": ', "application/json", "json_invalid"),
        (b'{"task": "x",}', "application/json", "json_invalid"),
        (b"", "application/json", "missing"),
        (b'{"task": "\xff"}', "application/json", "json_invalid"),  # not UTF-8: 422, not 400
        (b"task=celeriac.demo.add", "application/x-www-form-urlencoded", "model_attributes_type"),
    ],
)
def test_malformed_json_is_422(
    client: TestClient, content: bytes, content_type: str, error_type: str
) -> None:
    response = client.post(
        "/v1/tasks", content=content, headers={**AUTH, "Content-Type": content_type}
    )
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["type"] == error_type
    assert error["loc"][0] == "body"


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded"])
def test_json_without_json_content_type_says_so(
    client: TestClient, content_type: str | None
) -> None:
    headers = AUTH if content_type is None else {**AUTH, "Content-Type": content_type}
    response = client.post("/v1/tasks", content=b'{"task": "celeriac.demo.add"}', headers=headers)
    assert response.status_code == 422
    assert "Content-Type: application/json" in response.json()["detail"][0]["msg"]


def test_json_error_says_what_is_wrong(client: TestClient) -> None:
    response = client.post(
        "/v1/tasks", content=b'{"task": ', headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.json()["detail"][0]["msg"].startswith("JSON decode error: ")


def test_body_not_utf8_says_so(client: TestClient) -> None:
    response = client.post(
        "/v1/tasks",
        content=b'{"task": "\xff"}',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert (
        response.json()["detail"][0]["msg"] == "JSON decode error: the body is not UTF-8 (byte 10)"
    )


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/tasks/abc", "DELETE, GET"),  # two routes on one path: both methods
        ("OPTIONS", "/v1/tasks/abc", "DELETE, GET"),
        ("PUT", "/v1/tasks", "GET, POST"),
        ("POST", "/healthz", "GET"),
    ],
)
def test_405_allows_every_method_served_on_the_path(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path, headers=AUTH)
    assert response.status_code == 405
    assert response.headers["Allow"] == allow
    assert response.json() == {"detail": "Method Not Allowed"}


def test_document_says_what_delete_and_submit_accept(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    (terminate,) = [
        parameter
        for parameter in spec["paths"]["/v1/tasks/{task_id}"]["delete"]["parameters"]
        if parameter["name"] == "terminate"
    ]
    assert terminate["schema"]["const"] is False
    submit = jsonschema_rs.validator_for(spec["components"]["schemas"]["TaskRequest"])
    assert not submit.is_valid({"task": ADD, "countdown": 5, "eta": _in(60)})
    assert submit.is_valid({"task": ADD, "countdown": 5, "eta": None})
    assert submit.is_valid({"task": ADD, "countdown": None, "eta": _in(60)})


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/tasks"),
        ("GET", "/v1/tasks/abc"),
        ("DELETE", "/v1/tasks/abc"),
        ("GET", "/v1/queues"),
    ],
)
@pytest.mark.parametrize(
    ("authorization", "challenge"),
    [
        (None, "Bearer"),
        ("Basic dXNlcjpwYXNz", "Bearer"),
        ("Bearer", "Bearer"),
        ("Bearer wrong-token", 'Bearer error="invalid_token"'),
        (f"Bearer {TOKEN}x", 'Bearer error="invalid_token"'),
    ],
)
def test_v1_needs_a_valid_token(
    client: TestClient, method: str, path: str, authorization: str | None, challenge: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.request(method, path, headers=headers, json={"task": ADD})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == challenge
    assert isinstance(response.json()["detail"], str)


@pytest.mark.parametrize("token", [TOKEN, OTHER_TOKEN])
def test_every_configured_token_is_accepted(client: TestClient, token: str) -> None:
    # Past the token check, the bad id is what gets refused: the token was accepted.
    response = client.get("/v1/tasks/bad id", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "task_id"]


def test_terminate_is_refused(client: TestClient) -> None:
    response = client.delete("/v1/tasks/abc", params={"terminate": "true"}, headers=AUTH)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "terminate"]
    assert "not supported" in error["msg"]


def test_oversize_body_with_content_length_is_413(client: TestClient) -> None:
    body = b'{"task": "' + b"x" * MAX_BODY + b'"}'
    response = client.post("/v1/tasks", content=body, headers=AUTH)
    assert response.status_code == 413
    assert response.json() == {"detail": f"request body is larger than {MAX_BODY} bytes"}


def test_body_at_the_limit_passes_the_size_check(client: TestClient) -> None:
    body = b'{"task": "' + b"x" * (MAX_BODY - 14) + b'"}'
    assert len(body) == MAX_BODY - 2
    response = client.post("/v1/tasks", content=body.ljust(MAX_BODY), headers=AUTH)
    assert response.status_code == 422  # the task name is refused, not the size


def test_oversize_unauthenticated_body_is_refused_before_reading() -> None:
    """A 413 on Content-Length alone: the middleware never calls ``receive``."""
    messages = _run_limit(
        headers=[(b"content-length", str(MAX_BODY + 1).encode())],
        chunks=[],
    )
    assert messages[0]["status"] == 413


def test_chunked_body_is_counted_as_it_arrives() -> None:
    """No Content-Length (chunked): bytes are counted; reading stops past the limit."""
    chunks = [b"x" * 400] * 10
    received: list[int] = []
    messages = _run_limit(headers=[], chunks=chunks, received=received)
    assert messages[0]["status"] == 413
    assert len(received) == 3  # 1200 bytes > 1024: the other 7 chunks were never read


def test_chunked_body_under_the_limit_reaches_the_app_whole() -> None:
    chunks = [b"ab"] * 5
    seen: list[bytes] = []
    messages = _run_limit(headers=[], chunks=chunks, app_bodies=seen)
    assert messages[0]["status"] == 200
    assert seen == [b"ababababab"]


def _run_limit(
    *,
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes],
    received: list[int] | None = None,
    app_bodies: list[bytes] | None = None,
) -> list[Message]:
    """Drive the middleware as a server would, with a body sent in ``chunks``."""
    sent: list[Message] = []
    pending = list(chunks)

    async def receive() -> Message:
        if received is not None:
            received.append(1)
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: Message) -> None:
        sent.append(message)

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        if app_bodies is not None:
            app_bodies.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    scope = {"type": "http", "method": "POST", "path": "/v1/tasks", "headers": headers}
    asyncio.run(BodySizeLimit(inner, MAX_BODY)(scope, receive, send))
    return sent


def test_probes_and_docs_need_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "celeriac API"
    assert {"/v1/tasks", "/v1/tasks/{task_id}", "/v1/queues", "/healthz", "/readyz"} <= set(
        spec["paths"]
    )
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    post = spec["paths"]["/v1/tasks"]["post"]
    assert {"202", "401", "413", "422", "503"} <= set(post["responses"])
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_unknown_route_keeps_the_error_shape(client: TestClient) -> None:
    response = client.get("/v2/nothing")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


def test_unexpected_error_is_a_bare_500(app: FastAPI) -> None:
    def boom() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    app.add_api_route("/boom-for-test", boom)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        response = test_client.get("/boom-for-test")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}
