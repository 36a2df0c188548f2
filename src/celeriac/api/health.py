"""Probes: ``/healthz`` (the process answers) and ``/readyz`` (Redis answers too). No token."""

from __future__ import annotations

from fastapi import APIRouter

from celeriac.api.dependencies import ServicesDep
from celeriac.api.models import ErrorBody, Probe

router = APIRouter(tags=["probes"])


@router.get("/healthz")
async def healthz() -> Probe:
    """Liveness: answers without touching Redis, so a Redis outage never restarts the API."""
    return Probe(status="ok")


@router.get(
    "/readyz",
    responses={503: {"model": ErrorBody, "description": "Redis is unavailable (Retry-After)."}},
)
def readyz(services: ServicesDep) -> Probe:
    """Readiness: PING the broker (and the result backend, when it is another Redis)."""
    for client in services.probes:
        client.ping()
    return Probe(status="ready")
