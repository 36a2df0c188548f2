"""Every error leaves as ``{"detail": ...}``: validation problems name the field, an unreachable
Redis is a 503 with ``Retry-After``, and anything unexpected a bare 500 (details only in the log).
"""

from __future__ import annotations

import logging
from http import HTTPMethod
from typing import Any

import kombu.exceptions
import redis
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match

from celeriac.api.app_results import ResultBackendError

log = logging.getLogger("celeriac.api")

RETRY_AFTER_SECONDS = 5
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    redis.RedisError,
    kombu.exceptions.OperationalError,
    ConnectionError,
    TimeoutError,
)


def field_error(location: tuple[str, ...], message: str) -> RequestValidationError:
    """A 422 for a value the schema accepts but this deployment does not (task, queue ...)."""
    return RequestValidationError([{"loc": location, "msg": message, "type": "value_error"}])


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    for error in UNAVAILABLE_ERRORS:
        app.add_exception_handler(error, _unavailable)
    app.add_exception_handler(ResultBackendError, _backend_unavailable)
    app.add_exception_handler(Exception, _unexpected)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    json_sent = "json" in request.headers.get("content-type", "").lower()
    errors = [_clean(error, json_sent) for error in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


def _clean(error: dict[str, Any], json_sent: bool) -> dict[str, Any]:
    """Only loc/msg/type: echoing ``input`` back would repeat up to a whole body."""
    location = list(error.get("loc", ()))
    kind = error.get("type", "")
    message = str(error.get("msg", "invalid value"))
    reason = (error.get("ctx") or {}).get("error")
    if kind == "json_invalid" and reason:
        message = f"{message}: {reason}"
    elif location == ["body"] and kind == "model_attributes_type" and not json_sent:
        # A body without a JSON content type is not parsed (curl -d sends a form type).
        message = "the body must be JSON, sent with Content-Type: application/json"
    return {"loc": location, "msg": message, "type": kind}


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 405:
        # Starlette's Allow names the methods of the first route on the path only, while GET
        # and DELETE /v1/tasks/{id} are two routes.
        allow = ", ".join(_methods_served(request))
        exc = HTTPException(405, exc.detail, headers={**(exc.headers or {}), "Allow": allow})
    return await http_exception_handler(request, exc)


def _methods_served(request: Request) -> list[str]:
    """Every method some route serves on the request's path, asking the routes themselves."""
    routes = request.app.router.routes
    return [
        method
        for method in HTTPMethod
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    return unavailable(request.method, request.url.path, exc)


def unavailable(method: str, path: str, exc: Exception) -> JSONResponse:
    """The 503 for an unreachable Redis (logged, without a traceback)."""
    log.warning("Redis unavailable during %s %s: %s", method, path, exc)
    return JSONResponse(
        {"detail": "Redis is unavailable; retry later"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def _backend_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # With the traceback: a missing migration reads the same as a database that is down.
    log.warning(
        "result backend unreadable during %s %s", request.method, request.url.path, exc_info=exc
    )
    return JSONResponse(
        {"detail": "the app's result backend cannot be read; retry later"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error during %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error"}, status_code=500)
