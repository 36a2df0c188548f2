"""What the API knows about a task id: its own record of the submission, and Celery's result.

Celery answers PENDING for any id it has no result for, so a typo looks like a task waiting
forever. The API therefore records each id it submits (task name, queue) in the result
backend's Redis, expiring with the result; an id with neither a record nor a result is unknown
(404). Both are read with one pipelined round trip; a submission writes its record and its
message in one transaction when results and broker share a Redis. An app that keeps results
outside Redis (django-db ...) has them read through its backend (``app_results``) instead.
The list of recent submissions written here is read by ``listing``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
import redis.asyncio
from celery.backends.base import KeyValueStoreBackend

from celeriac.api import idempotency
from celeriac.api.app_results import AppResults
from celeriac.api.batching import Command, TransactionQueue
from celeriac.api.models import TaskError, TaskStatus

RECORD_PREFIX = "celeriac:api:task:"
# The ids submitted here, scored by submit time (microseconds since the epoch), newest kept.
RECENT_KEY = "celeriac:api:recent"
# Celery's Redis result backend key for a task id.
RESULT_PREFIX = KeyValueStoreBackend.task_keyprefix
ERROR_STATES = frozenset({"FAILURE", "RETRY", "REVOKED"})
# In the API's record of an id: when ``DELETE`` revoked it (ISO-8601, UTC).
REVOKED_AT = "revoked_at"
# What a worker stores for a revoked task (Celery's ``TaskRevokedError`` with its reason): the
# API answers the same before a worker has met the task.
REVOKED_ERROR = TaskError(type="TaskRevokedError", message="revoked")
FINISHED_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
MAX_ERROR_MESSAGE_CHARS = 2000


@dataclass(frozen=True)
class Recent:
    """Adds a submission to the list of recent ones, trimmed to ``keep`` on every write."""

    keep: int
    submitted_at: float

    def commands(self, task_id: str) -> list[Command]:
        score = int(self.submitted_at * 1_000_000)
        return [
            ("execute_command", ("ZADD", RECENT_KEY, score, task_id)),
            # Ranks count from the oldest: drop all but the newest ``keep``.
            ("execute_command", ("ZREMRANGEBYRANK", RECENT_KEY, 0, -self.keep - 1)),
        ]


async def submit(
    broker: TransactionQueue,
    results: TransactionQueue,
    task_id: str,
    record: dict[str, str],
    publish: list[Command],
    *,
    ttl_seconds: int,
    recent: Recent | None = None,
    once: idempotency.Once | None = None,
) -> idempotency.First | None:
    """Record the id, then send the commands that publish its message.

    Recorded first: when Redis cannot take the record, nothing is published that the client
    could not track. On one Redis both go in one MULTI/EXEC (both or neither), shared with the
    submissions of concurrent requests (``batching``). ``recent`` adds the id to the list of
    recent submissions, with the record.

    With ``once``, the publish (and on one Redis the record) runs in the idempotency script:
    when its key already names a submission, nothing is written (a record written to another
    Redis is taken back) and that submission is returned. None: this one was published.
    """
    key = RECORD_PREFIX + task_id
    recording: list[Command] = [
        ("execute_command", ("SET", key, json.dumps(record), "EX", ttl_seconds))
    ]
    if recent is not None:
        recording += recent.commands(task_id)
    if once is None:
        if results is broker:
            await broker.execute([*recording, *publish])
            return None
        await results.execute(recording)
        try:
            await broker.execute(publish)
        except BaseException:
            await _forget(results.client, key, task_id)
            raise
        return None
    first = idempotency.First(task_id, record["task"], record["queue"], once.fingerprint)
    if results is broker:
        script = idempotency.script_command(once, first, [*recording, *publish])
        (reply,) = await broker.execute([script])
        return _earlier(reply)
    await results.execute(recording)
    try:
        (reply,) = await broker.execute([idempotency.script_command(once, first, publish)])
    except BaseException:
        await _forget(results.client, key, task_id)
        raise
    earlier = _earlier(reply)
    if earlier is not None:
        await _forget(results.client, key, task_id)
    return earlier


def _earlier(reply: object) -> idempotency.First | None:
    """The submission the script found under the key (None: it ran this one)."""
    if reply is None:
        return None
    earlier = idempotency.parse_stored(reply)
    # A value this API did not write: treated as another request's, nothing was queued.
    return earlier or idempotency.First("", "", "", "")


async def _forget(client: redis.asyncio.Redis, key: str, task_id: str) -> None:
    """Drop the record of a submission that failed; best effort, Redis is likely down."""
    with contextlib.suppress(redis.RedisError, OSError):
        async with client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.zrem(RECENT_KEY, task_id)
            await pipe.execute()


async def record_revoked(client: redis.asyncio.Redis, task_id: str, at: datetime) -> None:
    """Note in the id's record that it was revoked, so a task that has not started reads
    REVOKED (``parse_status``).

    Celery's revoke reaches only the memory of the workers that hear it: the result backend
    keeps no state for a task still queued (PENDING) until a worker meets the task and stores
    REVOKED. No record (expired, or another producer's task): nothing to note.
    """
    key = RECORD_PREFIX + task_id
    record = _json_object(await client.get(key))
    if record is None or REVOKED_AT in record:
        return
    record[REVOKED_AT] = at.isoformat()
    # XX: never bring back a record that expired meanwhile (KEEPTTL would give it no expiry).
    # A plain read-then-write: the record changes only here, and twice is the same.
    await client.set(key, json.dumps(record), keepttl=True, xx=True)


async def lookup(
    client: redis.asyncio.Redis, task_id: str, app_results: AppResults | None = None
) -> TaskStatus | None:
    """The task's status, or None when this id was never submitted here and has no result.

    With ``app_results`` (the app keeps results outside Redis) the result is read through the
    app's backend, the record from Redis, at the same time.
    """
    if app_results is not None:
        record_raw, meta = await asyncio.gather(
            client.get(RECORD_PREFIX + task_id), app_results.meta(task_id)
        )
        return _status_of(task_id, _json_object(record_raw), meta)
    async with client.pipeline(transaction=False) as pipe:
        pipe.get(RECORD_PREFIX + task_id)
        pipe.get(RESULT_PREFIX + task_id)
        record_raw, meta_raw = await pipe.execute()
    return parse_status(task_id, record_raw, meta_raw)


def parse_status(
    task_id: str, record_raw: bytes | None, meta_raw: bytes | None
) -> TaskStatus | None:
    """The status a record and a result stored in Redis give; None when neither is there."""
    return _status_of(task_id, _json_object(record_raw), _json_object(meta_raw))


def _status_of(
    task_id: str, record: dict[str, Any] | None, meta: dict[str, Any] | None
) -> TaskStatus | None:
    if record is None and meta is None:
        return None
    record = record or {}
    meta = meta or {}
    state = str(meta.get("status") or "PENDING")
    error = _error(meta.get("result")) if state in ERROR_STATES else None
    finished_at = _text(meta.get("date_done")) if state in FINISHED_STATES else None
    revoked_at = _text(record.get(REVOKED_AT))
    if state == "PENDING" and revoked_at is not None:
        # Revoked before any worker took it (``record_revoked``): workers will drop it. Once a
        # worker stores a state (REVOKED, or STARTED where one had not heard the revoke), that
        # state is the answer.
        state, error, finished_at = "REVOKED", REVOKED_ERROR, revoked_at
    return TaskStatus(
        id=task_id,
        task=_text(meta.get("name")) or _text(record.get("task")),
        queue=_text(meta.get("queue")) or _text(record.get("queue")),
        state=state,
        result=meta.get("result") if state == "SUCCESS" else None,
        error=error,
        retries=meta.get("retries") if isinstance(meta.get("retries"), int) else None,
        finished_at=finished_at,
    )


def _json_object(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _error(result: object) -> TaskError | None:
    """Celery stores an exception as {exc_type, exc_message, exc_module}; the traceback apart."""
    if not isinstance(result, dict) or "exc_type" not in result:
        return None
    message = result.get("exc_message")
    if isinstance(message, list | tuple):
        text = str(message[0]) if len(message) == 1 else "; ".join(str(part) for part in message)
    else:
        text = "" if message is None else str(message)
    return TaskError(type=str(result["exc_type"]), message=text[:MAX_ERROR_MESSAGE_CHARS])
