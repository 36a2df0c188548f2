"""Dead letters: tasks set aside instead of run, with the reason.

With acks late and reject-on-worker-lost, a task that kills its process (out of memory, a
segfault, a SIGKILL at the memory limit) is delivered again and again, taking a worker down each
time; Redis keeps no delivery count. celeriac's fetch (``celeriac.broker.fetch``) counts the
deliveries of each message that did not finish and, past ``CELERIAC_MAX_LOST_DELIVERIES``, moves
the message here instead of running it again. Workers also move here tasks no worker knew for
too long and messages no worker could run (``celeriac.worker.unregistered``). This module
records, lists, replays and discards them; the API and ``celeriac inspect`` use it, the exporter
counts them.

Layout: one hash of entries by task id (the message as it was queued, why, how many deliveries,
when), a sorted set of ids per queue and one across queues, scored by when.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from celeriac.broker.keys import (
    ALL_DEAD_LETTERS_KEY,
    DEAD_LETTER_ENTRIES_KEY,
    dead_letters_key,
    priority_list_key,
    wake_key,
)


@dataclass(frozen=True)
class DeadLetter:
    id: str
    queue: str
    task: str | None
    reason: str
    deliveries: int
    dead_lettered_at: float
    # The message as it was queued (kombu's JSON), replayed as it is.
    message: str


def parse(raw: bytes | str) -> DeadLetter:
    entry = json.loads(raw)
    message = entry["message"]
    try:
        headers = json.loads(message).get("headers") or {}
    except (ValueError, AttributeError):
        headers = {}
    task = headers.get("task")
    return DeadLetter(
        id=str(entry["id"]),
        queue=str(entry["queue"]),
        task=task if isinstance(task, str) else None,
        reason=str(entry["reason"]),
        deliveries=int(entry["deliveries"]),
        dead_lettered_at=float(entry["at"]),
        message=message,
    )


def record(
    pipe: Any, *, id: str, queue: str, reason: str, deliveries: int, at: float, message: str
) -> None:
    """Add a dead letter in ``pipe`` (a MULTI/EXEC): its entry and its place in both indexes.

    The fetch script (``fetch.lua``) writes the same layout in Lua.
    """
    entry = {
        "id": id,
        "queue": queue,
        "deliveries": deliveries,
        "at": at,
        "reason": reason,
        "message": message,
    }
    pipe.hset(DEAD_LETTER_ENTRIES_KEY, id, json.dumps(entry))
    pipe.zadd(dead_letters_key(queue), {id: at})
    pipe.zadd(ALL_DEAD_LETTERS_KEY, {id: at})


def list_dead_letters(
    client: redis.Redis, queue: str | None = None, offset: int = 0, limit: int = 50
) -> tuple[list[DeadLetter], int]:
    """A page of dead letters, newest first, of ``queue`` or of every queue; and the total."""
    key = ALL_DEAD_LETTERS_KEY if queue is None else dead_letters_key(queue)
    with client.pipeline(transaction=True) as pipe:
        pipe.zrevrange(key, offset, offset + limit - 1)
        pipe.zcard(key)
        ids, total = pipe.execute()
    if not ids:
        return [], int(total)
    entries: list[Any] = client.hmget(DEAD_LETTER_ENTRIES_KEY, ids)
    return [parse(raw) for raw in entries if raw is not None], int(total)


def get(client: redis.Redis, task_id: str) -> DeadLetter | None:
    raw = client.hget(DEAD_LETTER_ENTRIES_KEY, task_id)
    return None if raw is None else parse(raw)


def replay(client: redis.Redis, task_id: str, priority_steps: Sequence[int]) -> DeadLetter | None:
    """Queue the task again, as it was queued, and forget the dead letter; None if unknown.

    One transaction: the message is either queued again or still a dead letter, never both
    nor neither. Its delivery count starts again from zero.
    """

    def move(pipe: Any) -> DeadLetter | None:
        raw = pipe.hget(DEAD_LETTER_ENTRIES_KEY, task_id)
        if raw is None:
            return None
        letter = parse(raw)
        pipe.multi()
        key = priority_list_key(letter.queue, _priority(letter.message), priority_steps)
        pipe.lpush(key, letter.message)
        pipe.lpush(wake_key(letter.queue), 1)
        _forget(pipe, letter)
        return letter

    return _transaction(client, move)


def discard(client: redis.Redis, task_id: str) -> DeadLetter | None:
    """Forget a dead letter for good; None if unknown."""

    def drop(pipe: Any) -> DeadLetter | None:
        raw = pipe.hget(DEAD_LETTER_ENTRIES_KEY, task_id)
        if raw is None:
            return None
        letter = parse(raw)
        pipe.multi()
        _forget(pipe, letter)
        return letter

    return _transaction(client, drop)


def _transaction(
    client: redis.Redis, step: Callable[[Any], DeadLetter | None]
) -> DeadLetter | None:
    """Run ``step`` in a WATCH/MULTI transaction on the entries (retried if they change)."""
    result: DeadLetter | None = cast(Any, client).transaction(
        step, DEAD_LETTER_ENTRIES_KEY, value_from_callable=True
    )
    return result


def _forget(pipe: Any, letter: DeadLetter) -> None:
    pipe.hdel(DEAD_LETTER_ENTRIES_KEY, letter.id)
    pipe.zrem(dead_letters_key(letter.queue), letter.id)
    pipe.zrem(ALL_DEAD_LETTERS_KEY, letter.id)


def _priority(message: str) -> int:
    """The message's priority as kombu reads it (0 when absent or unreadable)."""
    try:
        return int(json.loads(message)["properties"]["priority"])
    except (ValueError, TypeError, KeyError):
        return 0
