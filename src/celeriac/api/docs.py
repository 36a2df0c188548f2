"""What the API says about itself: an index at ``/``, Swagger UI at ``/docs`` served from this
process (no CDN: it works offline and behind egress rules), and the per-deployment parts of
``/openapi.json`` (the queues this app serves).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from celeriac.api.models import SERVED_QUEUE, ApiIndex

router = APIRouter(tags=["index"])

DOCS_PATH = "/docs"
OPENAPI_PATH = "/openapi.json"
ASSETS_PATH = f"{DOCS_PATH}/assets"
ASSETS_DIR = Path(swagger_ui_path)
# Only what the page loads: the package also ships swagger-ui's demo page and OAuth2 redirect
# page, which this API has no use for and should not serve.
JS, CSS, FAVICON = "swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"
ASSETS = frozenset({JS, CSS, FAVICON})


def _root(request: Request) -> str:
    """The path prefix the API is served under (a proxy's ``root_path``), as FastAPI's docs use."""
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/")
async def index(request: Request) -> ApiIndex:
    """Where things are: the docs, the OpenAPI document, the resources and the probes."""
    root = _root(request)
    return ApiIndex(
        title=request.app.title,
        version=request.app.version,
        docs=root + DOCS_PATH,
        openapi=root + OPENAPI_PATH,
        tasks=root + "/v1/tasks",
        queues=root + "/v1/queues",
        dead_letters=root + "/v1/dead-letters",
        health=root + "/healthz",
        ready=root + "/readyz",
    )


@router.get(DOCS_PATH, include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=root + OPENAPI_PATH,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_PATH}/{JS}",
        swagger_css_url=f"{root}{ASSETS_PATH}/{CSS}",
        swagger_favicon_url=f"{root}{ASSETS_PATH}/{FAVICON}",
        # Swagger UI would otherwise send the document to validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get(ASSETS_PATH + "/{name}", include_in_schema=False)
async def swagger_ui_asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(404, "Not Found")
    return FileResponse(ASSETS_DIR / name)


def publish_served_queues(app: FastAPI, queues: tuple[str, ...]) -> None:
    """Make ``app``'s OpenAPI document list ``queues`` wherever a queue is named.

    The models and routers are shared by every app while the queues are configuration, so the
    fields are marked (``SERVED_QUEUE``) and each app's document gets its own enum.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _with_queues(build(), list(queues))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _with_queues(node: Any, queues: list[str]) -> Any:
    if isinstance(node, list):
        return [_with_queues(item, queues) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _with_queues(value, queues) for key, value in node.items()}
    if node.pop(SERVED_QUEUE, False):
        # Optional fields are ``anyOf: [string, null]``: the enum goes on the string.
        for schema in node.get("anyOf", [node]):
            if schema.get("type") == "string":
                schema["enum"] = queues
    return node
