"""``POST /v1/tasks`` for well-formed requests, without FastAPI's per-request machinery.

FastAPI resolves the route, the token and services dependencies, validates the body, then
validates and encodes the response model on every request: together more time than building and
publishing the message. This pure ASGI middleware serves the requests that would be accepted
(a ``202``) directly, with the same steps FastAPI takes: the body parsed with ``json.loads``
(as Starlette's ``Request.json``), validated by the same ``TaskRequest`` model, the token read
as ``HTTPBearer`` reads it and checked by the same ``Tokens``, then ``check_submission`` and
``submit`` of ``celeriac.api.submission``, the functions the FastAPI route calls. Anything else
(a missing or bad token, a body that does not validate, another content type, a task or queue
not allowed ...) is handed to the FastAPI app unchanged, body included, which answers it as it
always has: every error comes from one place, and ``/openapi.json`` still describes the route
(it stays registered).

It sits inside ``BodySizeLimit``, so the body cap applies first, and inside Starlette's error
middleware, so an unexpected error is the usual bare 500. Redis being unavailable is the usual
503 (``errors.unavailable``).
"""

from __future__ import annotations

import json

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from celeriac.api import idempotency, submission
from celeriac.api.errors import UNAVAILABLE_ERRORS, unavailable
from celeriac.api.models import TaskRequest
from celeriac.api.services import Services

PATH = "/v1/tasks"
# Content types served here; any other (``+json`` types, parameters) goes through FastAPI.
JSON_TYPES = frozenset({b"application/json", b"application/json; charset=utf-8"})
REPLAYED = idempotency.REPLAYED_HEADER.lower().encode("latin-1")


class SubmitFastPath:
    """ASGI middleware serving the accepted ``POST /v1/tasks`` requests (see the module)."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or _route_path(scope) != PATH:
            await self.app(scope, receive, send)
            return
        messages, body = await _read(receive)
        replay = _replay(messages, receive)
        accepted = self._accepted(scope, body)
        if accepted is None:
            await self.app(scope, replay, send)
            return
        request, queue, delay, key = accepted
        try:
            answer, replayed = await submission.submit(request, queue, delay, self.services, key)
        except UNAVAILABLE_ERRORS as exc:
            await unavailable("POST", scope["path"], exc)(scope, replay, send)
            return
        except RequestValidationError:
            # An Idempotency-Key used for another request: the route finds the same and says so.
            await self.app(scope, replay, send)
            return
        content = _accepted_body(answer.id, answer.task, answer.queue)
        headers = [
            (b"content-length", str(len(content)).encode()),
            (b"content-type", b"application/json"),
            (b"location", submission.location(scope, answer.id).encode("latin-1")),
        ]
        if replayed:
            headers.append((REPLAYED, b"true"))
        await send({"type": "http.response.start", "status": 202, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    def _accepted(
        self, scope: Scope, body: bytes | None
    ) -> tuple[TaskRequest, str, float, str | None] | None:
        """The request, its queue, delay and idempotency key when FastAPI would accept it."""
        if body is None:
            return None
        authorization = content_type = key = None
        for name, value in scope["headers"]:
            # The first of each, as Starlette's ``Headers.get``.
            if name == b"authorization" and authorization is None:
                authorization = value
            elif name == b"content-type" and content_type is None:
                content_type = value
            elif name == idempotency.HEADER_NAME and key is None:
                key = value.decode("latin-1")
        if authorization is None or content_type is None:
            return None
        if key is not None and not idempotency.valid_key(key):
            return None  # the route's 422 names the header
        if content_type.lower() not in JSON_TYPES:
            return None
        # As ``HTTPBearer``: the scheme, one space, the token (stripped).
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        if not self.services.tokens.accepts(token):
            return None
        try:
            request = TaskRequest.model_validate(json.loads(body))
            queue, delay = submission.check_submission(request, self.services)
        except (ValueError, RecursionError, ValidationError, RequestValidationError):
            return None  # malformed JSON, not UTF-8, invalid, not allowed: FastAPI answers
        return request, queue, delay, key


def _route_path(scope: Scope) -> str:
    """The path the routes see: without the ``root_path`` prefix (as Starlette's routing)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


async def _read(receive: Receive) -> tuple[list[Message], bytes | None]:
    """The messages making the request body, and the body (None when the client left)."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return messages, b"".join(chunks)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` giving ``messages`` again, then deferring to the server's."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def _accepted_body(task_id: str, task: str, queue: str) -> bytes:
    """``TaskAccepted`` as FastAPI's ``JSONResponse`` encodes it."""
    return json.dumps(
        {"id": task_id, "task": task, "queue": queue, "state": "PENDING"},
        ensure_ascii=False,
        allow_nan=False,
        separators=(",", ":"),
    ).encode("utf-8")
