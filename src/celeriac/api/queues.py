"""``/v1/queues``: how much work each queue holds."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from celeriac.api.dependencies import ServicesDep, require_token
from celeriac.api.models import ErrorBody, QueueBacklogInfo, QueueList
from celeriac.broker import read_backlog

router = APIRouter(prefix="/v1/queues", tags=["queues"], dependencies=[Depends(require_token)])


@router.get(
    "",
    responses={
        401: {"model": ErrorBody, "description": "Missing or invalid bearer token."},
        503: {"model": ErrorBody, "description": "Redis is unavailable (Retry-After)."},
    },
)
def list_queues(services: ServicesDep) -> QueueList:
    """Backlog of every queue the API serves: waiting + in flight, ETA tasks apart.

    The same counts the exporter gives Prometheus and KEDA (``celeriac.broker.backlog``).
    """
    counts = read_backlog(services.broker, services.queues, services.settings.priority_steps)
    return QueueList(
        queues=[
            QueueBacklogInfo(
                name=name,
                waiting=count.waiting,
                in_flight=count.in_flight,
                scheduled=count.scheduled,
                backlog=count.backlog,
                dead_letters=count.dead_letters,
            )
            for name, count in counts.items()
        ]
    )
