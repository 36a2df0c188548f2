"""How much work each queue holds, read from Redis alone in one round trip.

Shared by the API (``GET /v1/queues``) and the exporter (the gauges KEDA scales on), so both
count the same way:

- waiting: messages in the queue's lists, summed over every priority sub-list;
- in flight: messages delivered to a worker and not yet acknowledged (with acks late: reserved
  or running), from celeriac's per-queue index (``celeriac.transport``);
- scheduled: held messages whose ``eta`` lies in the future (countdown/ETA tasks a worker holds
  until their time); they are not load yet, so they are not in flight;
- backlog = waiting + in flight.

Every read is O(1) or O(log n) per queue (LLEN, ZCOUNT): the cost of a read does not grow with
the number of messages waiting or in flight.

A waiting message with an ETA counts as waiting: telling it apart would mean reading every
message in every list. Workers take such messages at once and hold them, so the gap is brief.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from celeriac.keys import in_flight_key, priority_list_keys


@dataclass(frozen=True)
class QueueBacklog:
    """Message counts of one queue at one moment."""

    waiting: int = 0
    in_flight: int = 0
    scheduled: int = 0

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
    with client.pipeline(transaction=True) as pipe:
        for name in names:
            for key in priority_list_keys(name, priority_steps):
                pipe.llen(key)
            # Score = ETA (0 without one): due messages are in flight, later ones scheduled.
            pipe.zcount(in_flight_key(name), "-inf", moment)
            pipe.zcount(in_flight_key(name), f"({moment}", "+inf")
        replies: list[Any] = pipe.execute()
    per_queue = len(priority_steps) + 2
    counts = {}
    for index, name in enumerate(names):
        row = replies[index * per_queue : (index + 1) * per_queue]
        counts[name] = QueueBacklog(waiting=sum(row[:-2]), in_flight=row[-2], scheduled=row[-1])
    return counts
