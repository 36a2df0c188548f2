"""How much work each queue holds, read from Redis alone in one round trip.

Shared by the API (``GET /v1/queues``) and the exporter (the gauges KEDA scales on), so both
count the same way:

- waiting: messages in the queue's lists, summed over every priority sub-list;
- in flight: entries of the ``unacked`` hash routed to the queue (delivered to a worker and not
  yet acknowledged: with acks late that is reserved or running);
- scheduled: ``unacked`` entries whose ``eta`` header lies in the future (countdown/ETA tasks a
  worker holds until their time); they are not load yet, so they are not in flight;
- backlog = waiting + in flight.

A waiting message with an ETA counts as waiting: telling it apart would mean reading every
message in every list. Workers take such messages at once and hold them, so the gap is brief.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from celeriac.keys import UNACKED_KEY, priority_list_keys


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

    The reads run in one MULTI/EXEC, so a message moving between a list and the ``unacked``
    hash is never counted twice. Raises ``redis.RedisError`` when Redis cannot be read.
    """
    names = list(dict.fromkeys(queues))
    moment = now or datetime.now(UTC)
    with client.pipeline(transaction=True) as pipe:
        for name in names:
            for key in priority_list_keys(name, priority_steps):
                pipe.llen(key)
        pipe.hvals(UNACKED_KEY)
        replies: list[Any] = pipe.execute()
    unacked = replies.pop()
    counts = {name: [0, 0, 0] for name in names}  # waiting, in flight, scheduled
    lists_per_queue = len(priority_steps)
    for index, name in enumerate(names):
        counts[name][0] = sum(replies[index * lists_per_queue : (index + 1) * lists_per_queue])
    for queue, eta in _unacked_entries(unacked):
        if queue not in counts:
            continue
        if eta is not None and eta > moment:
            counts[queue][2] += 1
        else:
            counts[queue][1] += 1
    return {
        name: QueueBacklog(waiting=waiting, in_flight=in_flight, scheduled=scheduled)
        for name, (waiting, in_flight, scheduled) in counts.items()
    }


def _unacked_entries(values: Iterable[bytes | str]) -> Iterable[tuple[str, datetime | None]]:
    """(queue, eta) of each ``unacked`` value ``[message, exchange, routing_key]``.

    celeriac routes through the default exchange with the queue name as routing key, so the
    routing key names the queue. Values that do not parse are skipped: they belong to nobody.
    """
    for value in values:
        try:
            message, _exchange, routing_key = json.loads(value)
        except (ValueError, TypeError):
            continue
        if not isinstance(routing_key, str) or not isinstance(message, dict):
            continue
        headers = message.get("headers")
        eta = headers.get("eta") if isinstance(headers, dict) else None
        yield routing_key, _parse_eta(eta)


def _parse_eta(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        eta = datetime.fromisoformat(value)
    except ValueError:
        return None
    # Celery sends UTC-aware ETAs; a naive one (enable_utc off) is read as UTC.
    return eta if eta.tzinfo is not None else eta.replace(tzinfo=UTC)
