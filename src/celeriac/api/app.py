"""The FastAPI application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI

from celeriac.api import dead_letters, docs, health, queues, tasks
from celeriac.api.errors import install_error_handlers
from celeriac.api.fastpath import SubmitFastPath
from celeriac.api.limits import BodySizeLimit
from celeriac.api.models import ErrorBody
from celeriac.api.services import build_services
from celeriac.api.settings import ApiSettings
from celeriac.settings import redact_url

log = logging.getLogger("celeriac.api")


def create_app(settings: ApiSettings) -> FastAPI:
    """The API for one deployment. Raises ``ConfigError`` for an unusable configuration.

    Nothing connects here: Redis is reached per request, so the API starts (and reports
    not-ready) while Redis is still coming up.
    """
    services = build_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info(
            "serving app %s: %d tasks allowed, queues %s, broker %s, %d token(s)",
            settings.common.app,
            len(services.allowed_tasks),
            ",".join(services.queues),
            redact_url(settings.common.broker_url),
            len(services.tokens),
        )
        services.open()
        try:
            yield
        finally:
            await services.aclose()
            services.close()

    app = FastAPI(
        title="celeriac API",
        summary="Submit, inspect and revoke Celery tasks.",
        version=version("celeriac"),
        lifespan=lifespan,
        # Swagger UI is ``docs``'s own route, with its assets served from here, not a CDN.
        docs_url=None,
        redoc_url=None,
        openapi_url=docs.OPENAPI_PATH,
        # BodySizeLimit refuses any request, whatever its route, so every operation can answer it.
        responses={
            413: {"model": ErrorBody, "description": "Body over CELERIAC_API_MAX_BODY_BYTES."}
        },
    )
    app.state.services = services
    install_error_handlers(app)
    app.include_router(tasks.router)
    app.include_router(queues.router)
    app.include_router(dead_letters.router)
    app.include_router(health.router)
    app.include_router(docs.router)
    docs.publish_served_queues(app, services.queues)
    # Inside the body cap: accepted submissions skip FastAPI's routing (``fastpath``).
    app.add_middleware(SubmitFastPath, services=services)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app
