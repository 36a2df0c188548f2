"""Dependencies shared by the routers: the app's services, the bearer-token check, and the
check of a queue name."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from celeriac.api.errors import field_error
from celeriac.api.services import Services


# Both are ``async def`` though they never await: FastAPI runs a plain ``def`` dependency in the
# thread pool, two thread hops per request for a dictionary lookup and a digest comparison.
async def get_services(request: Request) -> Services:
    return cast(Services, request.app.state.services)


ServicesDep = Annotated[Services, Depends(get_services)]

# Stateless: it only reads the header and documents the scheme in OpenAPI ("Authorize" in /docs).
_bearer = HTTPBearer(auto_error=False, description="One of CELERIAC_API_TOKENS.")


async def require_token(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 without a valid ``Authorization: Bearer <token>`` (RFC 6750)."""
    if credentials is None:
        raise HTTPException(
            status_code=401,
            detail="missing bearer token: send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not services.tokens.accepts(credentials.credentials):
        raise HTTPException(
            status_code=401,
            detail="invalid bearer token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


def check_queue(queue: str, services: Services, location: tuple[str, ...]) -> str:
    """``queue`` if this deployment serves it; else a 422 at ``location`` naming those it does.

    The OpenAPI document lists the same queues (``docs.publish_served_queues``).
    """
    if queue not in services.queues:
        raise field_error(
            location, f"queue {queue!r} is not served here; use one of {', '.join(services.queues)}"
        )
    return queue
