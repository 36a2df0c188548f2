"""How much work each queue holds, read from Redis alone in one round trip.

Shared by the API (``GET /v1/queues``) and the exporter (the gauges KEDA scales on), so both
count the same way:

- waiting: messages in the queue's lists, summed over every priority sub-list;
- in flight: messages delivered to a worker and not yet acknowledged (with acks late: reserved
  or running), from celeriac's per-queue index (``celeriac.broker.qos``);
- scheduled: held messages whose ``eta`` lies in the future (countdown/ETA tasks a worker holds
  until their time); they are not load yet, so they are not in flight;
- backlog = waiting + in flight;
- dead letters: tasks set aside because their worker was lost on each delivery
  (``celeriac.broker.dead_letters``); not load any more, so not in the backlog;
- oldest age: seconds since the oldest waiting message was published, from the publish-time
  header celeriac's transport adds (``None`` when the oldest message has no such header, e.g.
  from a plain Celery producer, or is an ETA task, whose wait is deliberate); 0 when none waits.

Every read is O(1) or O(log n) per queue (LLEN, ZCOUNT): the cost of a read does not grow with
the number of messages waiting or in flight.

A waiting message with an ETA counts as waiting: telling it apart would mean reading every
message in every list. Workers take such messages at once and hold them, so the gap is brief.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from celeriac.broker.keys import dead_letters_key, in_flight_key, priority_list_keys
from celeriac.broker.message import PUBLISHED_AT_PROPERTY


@dataclass(frozen=True)
class QueueBacklog:
    """Message counts of one queue at one moment."""

    waiting: int = 0
    in_flight: int = 0
    scheduled: int = 0
    dead_letters: int = 0
    # A reading that changes by the second: two backlogs with the same counts are equal.
    oldest_age_seconds: float | None = field(default=0.0, compare=False)

    @property
    def backlog(self) -> int:
        """The work to be done now: what waits plus what workers hold (without future ETAs)."""
        return self.waiting + self.in_flight


def read_backlog(
    client: redis.Redis,
    queues: Sequence[str],
    priority_steps: Sequence[int],
    *,
    now: datetime | None = None,
) -> dict[str, QueueBacklog]:
    """Count waiting, in-flight and scheduled messages of ``queues`` with one pipeline.

    The reads run in one MULTI/EXEC, so a message moving from a list to a worker is never
    counted twice nor missed. Raises ``redis.RedisError`` when Redis cannot be read.
    """
    names = list(dict.fromkeys(queues))
    moment = (now or datetime.now(UTC)).timestamp()
    lists = len(priority_steps)
    with client.pipeline(transaction=True) as pipe:
        for name in names:
            keys = priority_list_keys(name, priority_steps)
            for key in keys:
                pipe.llen(key)
            # kombu pushes on the left and pops on the right: index -1 is a list's oldest.
            for key in keys:
                pipe.lindex(key, -1)
            # Score = ETA (0 without one): due messages are in flight, later ones scheduled.
            pipe.zcount(in_flight_key(name), "-inf", moment)
            pipe.zcount(in_flight_key(name), f"({moment}", "+inf")
            pipe.zcard(dead_letters_key(name))
        replies: list[Any] = pipe.execute()
    per_queue = 2 * lists + 3
    counts = {}
    for index, name in enumerate(names):
        row = replies[index * per_queue : (index + 1) * per_queue]
        waiting = sum(row[:lists])
        counts[name] = QueueBacklog(
            waiting=waiting,
            in_flight=row[-3],
            scheduled=row[-2],
            dead_letters=row[-1],
            oldest_age_seconds=_oldest_age(row[lists:-3], moment) if waiting else 0.0,
        )
    return counts


def _oldest_age(oldest_per_list: Sequence[bytes | None], moment: float) -> float | None:
    """Age of the oldest of the lists' oldest messages; ETA tasks are passed over.

    None (unknown, never a guess) when a list's oldest message has no publish time, or when
    every non-empty list starts with an ETA task: what waits behind it is not read.
    """
    published = []
    for raw in oldest_per_list:
        if raw is None:
            continue
        stamp, eta = _publish_fields(raw)
        if eta:
            continue
        if stamp is None:
            return None
        published.append(stamp)
    return max(0.0, moment - min(published)) if published else None


def _publish_fields(raw: bytes) -> tuple[float | None, bool]:
    """(publish time or None, whether it is an ETA task) of a waiting message."""
    try:
        message = json.loads(raw)
        stamp = message["properties"].get(PUBLISHED_AT_PROPERTY)
        eta = message["headers"].get("eta") is not None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None, False
    return (float(stamp) if isinstance(stamp, int | float) else None), eta
