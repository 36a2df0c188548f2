"""Submitting a task in steps: the checks, then the publish with its record.

``POST /v1/tasks`` (``tasks``) and its fast path (``fastpath``) both take these steps, so an
accepted submission is the same whichever serves it.
"""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime

from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from celeriac.api import idempotency, tracking
from celeriac.api.dependencies import check_queue
from celeriac.api.errors import field_error
from celeriac.api.models import TaskAccepted, TaskRequest
from celeriac.api.services import Services

# A failed publish retries once at once (a pooled connection may have died with a Redis
# restart), then gives up: the client gets a 503 instead of a request hanging on Redis.
PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.1,
    "interval_max": 0.1,
}
# Allowed tasks a 422 for a task not allowed names at most.
MAX_LISTED_TASKS = 20


def check_submission(body: TaskRequest, services: Services) -> tuple[str, float]:
    """The queue and the delay in seconds of a valid request; a 422 error otherwise.

    Reads the request only: nothing is sent before it passes.
    """
    _check_task(body.task, services)
    queue = check_queue(body.queue or services.settings.default_queue, services, ("body", "queue"))
    return queue, _delay_seconds(body, services)


async def submit(
    body: TaskRequest,
    queue: str,
    delay: float,
    services: Services,
    idempotency_key: str | None = None,
) -> tuple[TaskAccepted, bool]:
    """Publish the task (at most once per ``idempotency_key``): the answer, and whether it
    replays an earlier submission's (nothing was queued then).

    A key used before for a different request is a 422 naming the header.
    """
    once = None
    if idempotency_key is not None:
        once = idempotency.Once(
            key=idempotency_key,
            fingerprint=idempotency.fingerprint(body, queue),
            window_seconds=services.api_settings.idempotency_window_seconds,
            key_prefix=services.settings.broker_key_prefix,
        )
    task_id, earlier = await _publish(body, queue, delay, services, once)
    if earlier is None:
        return TaskAccepted(id=task_id, task=body.task, queue=queue), False
    if once is None or earlier.fingerprint != once.fingerprint:
        raise field_error(
            ("header", idempotency.HEADER),
            f"this {idempotency.HEADER} was used for a different request (task, arguments, "
            "queue, delay or priority) within the idempotency window; use a new key",
        )
    return TaskAccepted(id=earlier.id, task=earlier.task, queue=earlier.queue), True


async def _publish(
    body: TaskRequest,
    queue: str,
    delay: float,
    services: Services,
    once: idempotency.Once | None,
) -> tuple[str, idempotency.First | None]:
    task_id = str(uuid.uuid4())
    sender = services.sender
    if not sender.connected:
        # Once per process: kombu sets up its channel with blocking calls.
        await run_in_threadpool(sender.connect)
    # Built on the event loop (no I/O), written below with the record in one round trip.
    commands = sender.commands(
        body.task,
        args=body.args,
        kwargs=body.kwargs,
        task_id=task_id,
        queue=queue,
        countdown=body.countdown,
        eta=body.eta,
        priority=body.priority,
        retry=True,
        retry_policy=PUBLISH_RETRY_POLICY,
    )
    keep = services.api_settings.recent_tasks
    earlier = await tracking.submit(
        services.aio.writes,
        services.aio.results_writes,
        task_id,
        {"task": body.task, "queue": queue},
        commands,
        # Kept as long as the result will be.
        ttl_seconds=services.settings.result_expires_seconds + math.ceil(delay),
        recent=tracking.Recent(keep, time.time()) if keep else None,
        once=once,
    )
    return task_id, earlier


def location(scope: Scope, task_id: str) -> str:
    """Where a submitted task's state is read (``Location`` of the 202)."""
    return f"{scope.get('root_path', '')}/v1/tasks/{task_id}"


def _check_task(name: str, services: Services) -> None:
    if name in services.allowed_tasks:
        return
    names = sorted(services.allowed_tasks)
    listed = ", ".join(names[:MAX_LISTED_TASKS]) + (" ..." if len(names) > MAX_LISTED_TASKS else "")
    raise field_error(("body", "task"), f"task {name!r} is not allowed; allowed: {listed}")


def _delay_seconds(body: TaskRequest, services: Services) -> float:
    """Seconds until the task may run, refused when it outlives the visibility timeout.

    A worker holds a delayed task unacknowledged until it runs; past the visibility timeout
    kombu hands it to another worker too, and it runs more than once.
    """
    if body.countdown is not None:
        delay, field = float(body.countdown), "countdown"
    elif body.eta is not None:
        delay, field = (body.eta - datetime.now(UTC)).total_seconds(), "eta"
    else:
        return 0.0
    limit = services.settings.visibility_timeout_seconds
    if delay >= limit:
        raise field_error(
            ("body", field),
            f"{field} is {delay:.0f} s away, not less than the visibility timeout ({limit} s, "
            "CELERIAC_VISIBILITY_TIMEOUT_SECONDS): the task would run more than once",
        )
    return max(delay, 0.0)
