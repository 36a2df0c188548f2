"""``/v1/dead-letters``: tasks set aside because their worker was lost on each delivery.

List them (per queue or all, newest first, paginated), replay one (queued again as it was), or
discard one. The logic is ``celeriac.broker.dead_letters``, shared with ``celeriac inspect``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response

from celeriac.api.dependencies import ServicesDep, check_queue, require_token
from celeriac.api.models import SERVED_QUEUE, DeadLetterInfo, DeadLetterList, ErrorBody
from celeriac.broker import dead_letters
from celeriac.settings import QUEUE_NAME, TASK_ID_MAX_LENGTH, TASK_ID_PATTERN

router = APIRouter(
    prefix="/v1/dead-letters", tags=["dead letters"], dependencies=[Depends(require_token)]
)

MAX_PAGE = 500
# Far past any real list, and inside what Redis takes as a range index.
MAX_OFFSET = 1_000_000_000
DeadLetterId = Annotated[
    str, Path(min_length=1, max_length=TASK_ID_MAX_LENGTH, pattern=TASK_ID_PATTERN)
]
_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or invalid bearer token."},
    503: {"model": ErrorBody, "description": "Redis is unavailable (Retry-After)."},
}
_UNKNOWN: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No dead letter with this id."}
}


def _info(letter: dead_letters.DeadLetter) -> DeadLetterInfo:
    return DeadLetterInfo(
        id=letter.id,
        queue=letter.queue,
        task=letter.task,
        reason=letter.reason,
        deliveries=letter.deliveries,
        dead_lettered_at=datetime.fromtimestamp(letter.dead_lettered_at, UTC),
    )


@router.get(
    "",
    responses={
        **_RESPONSES,
        422: {
            "model": ErrorBody,
            "description": "A queue not served here, or a bad offset or limit.",
        },
    },
)
def list_dead_letters(
    services: ServicesDep,
    queue: Annotated[
        str | None,
        Query(
            pattern=QUEUE_NAME.pattern,
            description="Only this queue's: one the API serves.",
            json_schema_extra={SERVED_QUEUE: True},
        ),
    ] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> DeadLetterList:
    """Dead letters, newest first: of one queue, or of every queue.

    A queue the API does not serve is a 422 naming those it does, as for ``POST /v1/tasks``.
    """
    if queue is not None:
        check_queue(queue, services, ("query", "queue"))
    page, total = dead_letters.list_dead_letters(services.broker, queue, offset, limit)
    return DeadLetterList(
        dead_letters=[_info(letter) for letter in page], total=total, offset=offset, limit=limit
    )


@router.post("/{letter_id}/replay", responses={**_RESPONSES, **_UNKNOWN})
def replay_dead_letter(letter_id: DeadLetterId, services: ServicesDep) -> DeadLetterInfo:
    """Queue the task again, as it was queued; its count of lost deliveries starts again."""
    letter = dead_letters.replay(services.broker, letter_id, services.settings.priority_steps)
    if letter is None:
        raise HTTPException(404, f"no dead letter {letter_id}")
    return _info(letter)


@router.delete(
    "/{letter_id}",
    status_code=204,
    response_class=Response,
    responses={**_RESPONSES, **_UNKNOWN, 204: {"description": "Discarded."}},
)
def discard_dead_letter(letter_id: DeadLetterId, services: ServicesDep) -> Response:
    """Forget the dead letter for good (the task never runs)."""
    if dead_letters.discard(services.broker, letter_id) is None:
        raise HTTPException(404, f"no dead letter {letter_id}")
    return Response(status_code=204)
