"""``/v1/tasks``: submit a task, read its state and result, revoke it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from celeriac.api import idempotency, listing, submission, tracking
from celeriac.api.dependencies import ServicesDep, require_token
from celeriac.api.errors import field_error
from celeriac.api.models import ErrorBody, TaskAccepted, TaskPage, TaskRequest, TaskStatus
from celeriac.api.routing import JsonBodyRoute
from celeriac.api.services import Services
from celeriac.settings import TASK_ID_FIRST, TASK_ID_MAX_LENGTH, TASK_ID_PATTERN, TASK_ID_REST

router = APIRouter(
    prefix="/v1/tasks",
    tags=["tasks"],
    dependencies=[Depends(require_token)],
    route_class=JsonBodyRoute,
)

TaskId = Annotated[
    str,
    Path(min_length=1, max_length=TASK_ID_MAX_LENGTH, pattern=TASK_ID_PATTERN),
]

Responses = dict[int | str, dict[str, Any]]
_AUTH: Responses = {401: {"model": ErrorBody, "description": "Missing or invalid bearer token."}}
_UNAVAILABLE: Responses = {
    503: {
        "model": ErrorBody,
        "description": "Redis, or the app's own result backend, is unavailable (Retry-After).",
    }
}
_UNKNOWN: Responses = {
    404: {"model": ErrorBody, "description": "Never submitted here, or expired."}
}


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=idempotency.HEADER,
        min_length=1,
        max_length=idempotency.MAX_KEY_LENGTH,
        pattern=idempotency.KEY_PATTERN,
        description="Queue this submission at most once: a later request with the same key "
        "(within CELERIAC_API_IDEMPOTENCY_WINDOW_SECONDS) queues nothing and gets the first "
        f"submission's answer, with {idempotency.REPLAYED_HEADER}: true. "
        f"{idempotency.KEY_RULE}.",
    ),
]


@router.post(
    "",
    status_code=202,
    responses={
        202: {
            "headers": {
                "Location": {
                    "description": "Where to read the task's state.",
                    "schema": {"type": "string"},
                },
                idempotency.REPLAYED_HEADER: {
                    "description": "Present when an Idempotency-Key named an earlier "
                    "submission: nothing was queued, the body is that submission's.",
                    "schema": {"type": "string", "enum": ["true"]},
                },
            }
        },
        **_AUTH,
        422: {
            "model": ErrorBody,
            "description": "Invalid body, task/queue not allowed, or a bad Idempotency-Key "
            "(malformed, or used before for a different request).",
        },
        **_UNAVAILABLE,
    },
)
async def submit_task(
    body: TaskRequest,
    request: Request,
    response: Response,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> TaskAccepted:
    """Queue a task. Answers 202 with its id; ``Location`` is where to poll its state."""
    queue, delay = submission.check_submission(body, services)
    accepted, replayed = await submission.submit(body, queue, delay, services, idempotency_key)
    response.headers["Location"] = submission.location(request.scope, accepted.id)
    if replayed:
        response.headers[idempotency.REPLAYED_HEADER] = "true"
    return accepted


MAX_PAGE = 200
DEFAULT_PAGE = 50
# A cursor is "<score>:<task id>" (tracking's index); the id part follows the task-id rule,
# its length included.
_CURSOR_PATTERN = rf"^[0-9]{{1,20}}:{TASK_ID_FIRST}{TASK_ID_REST}{{0,{TASK_ID_MAX_LENGTH - 1}}}$"


@router.get(
    "",
    responses={
        **_AUTH,
        422: {"model": ErrorBody, "description": "A malformed state, limit or cursor."},
        501: {
            "model": ErrorBody,
            "description": "The app keeps results outside Redis (django-db ...): no listing.",
        },
        **_UNAVAILABLE,
    },
)
async def list_tasks(
    services: ServicesDep,
    state: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            pattern=r"^[A-Za-z0-9_-]+$",
            description="Only tasks in this state (PENDING, STARTED, SUCCESS ...), in any case.",
        ),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE, description="Tasks per page at most.")
    ] = DEFAULT_PAGE,
    cursor: Annotated[
        str | None,
        Query(
            max_length=300,
            pattern=_CURSOR_PATTERN,
            description="next_cursor of the previous page; none for the newest.",
        ),
    ] = None,
) -> TaskPage:
    """Tasks submitted here, newest first: the last CELERIAC_API_RECENT_TASKS of them.

    With ``state``, a page may hold fewer than ``limit`` tasks though more follow (at most
    1000 ids are looked at per request): go on while ``next_cursor`` is not null.
    """
    if services.app_results is not None:
        raise HTTPException(
            501,
            "listing tasks needs task results in Redis, and the app keeps them in "
            f"{services.app_results.backend!r} (its result_backend setting; CELERY_RESULT_BACKEND"
            " in Django): read each task with GET /v1/tasks/{id}",
        )
    after = None
    if cursor is not None:
        after = listing.Cursor.parse(cursor)
        if after is None:  # the pattern lets through only what parses
            raise field_error(("query", "cursor"), "not a cursor this API gave")
    found, last = await listing.recent(services.aio.results, limit=limit, state=state, after=after)
    return TaskPage(tasks=found, next_cursor=None if last is None else str(last))


@router.get("/{task_id}", responses={**_AUTH, **_UNKNOWN, **_UNAVAILABLE})
async def get_task(task_id: TaskId, services: ServicesDep) -> TaskStatus:
    """State of a task; its result on SUCCESS, the error type and message on FAILURE.

    404 means the id was never submitted through this API (within the result expiry) and has
    no result: Celery itself cannot tell an unknown id from a waiting task.
    """
    return await _known(task_id, services)


@router.delete(
    "/{task_id}",
    status_code=202,
    responses={
        **_AUTH,
        **_UNKNOWN,
        409: {
            "model": ErrorBody,
            "description": "The task already finished (SUCCESS or FAILURE): nothing is revoked "
            "and its result stays.",
        },
        422: {"model": ErrorBody, "description": "terminate=true is not supported."},
        **_UNAVAILABLE,
    },
)
async def revoke_task(
    task_id: TaskId,
    services: ServicesDep,
    terminate: Annotated[
        bool,
        Query(
            description="Only false: terminating running tasks is not supported (see the API "
            "README); true is refused with 422.",
            # The schema says what is accepted; true still parses, to be refused with a reason.
            json_schema_extra={"const": False},
        ),
    ] = False,
) -> TaskStatus:
    """Revoke a task that has not started: workers drop it when it reaches them.

    Broadcasts Celery's revoke (held in the memory of the workers running now) and answers 202
    with the state after it:

    - not started (PENDING): REVOKED, from now on. A worker started after the broadcast has not
      heard it and may still run the task; its state (STARTED, SUCCESS ...) is then reported.
    - running (STARTED, RETRY): that state; the run finishes (bound it with task time limits),
      a retry is dropped.
    - already REVOKED: REVOKED, nothing sent.
    - finished (SUCCESS, FAILURE): 409, nothing sent; the result stays until it expires.
    """
    if terminate:
        raise field_error(
            ("query", "terminate"),
            "terminate=true is not supported: Celery signals whichever pool process runs the "
            "task, which may by then run another task; running tasks finish",
        )
    status = await _known(task_id, services)
    if status.state in ("SUCCESS", "FAILURE"):
        raise HTTPException(409, f"task {task_id} already finished with {status.state}")
    if status.state == "REVOKED":
        return status
    # A broadcast through kombu's pidbox: blocking, and rare.
    await run_in_threadpool(_revoke, services, task_id)
    # The backend says PENDING until a worker meets the task: the API's record says REVOKED.
    await tracking.record_revoked(services.aio.results, task_id, datetime.now(UTC))
    return await tracking.lookup(services.aio.results, task_id, services.app_results) or status


def _revoke(services: Services, task_id: str) -> None:
    # kombu reconnects for seconds when its broadcast fails; a PING fails in one timeout.
    services.broker.ping()
    services.sender.revoke(task_id)


async def _known(task_id: str, services: Services) -> TaskStatus:
    status = await tracking.lookup(services.aio.results, task_id, services.app_results)
    if status is None:
        raise HTTPException(
            404, f"task {task_id} is unknown: never submitted here, or its result expired"
        )
    return status
