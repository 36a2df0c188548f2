"""Where kombu's Redis transport keeps a queue's messages.

A queue is one list per priority step: the step-0 list is named after the queue, the others
``<queue>\\x06\\x16<step>``. Messages delivered and not yet acknowledged wait in one ``unacked``
hash per database (with their delivery times in the ``unacked_index`` sorted set).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

# kombu.transport.redis.Channel.sep
PRIORITY_SEPARATOR = "\x06\x16"
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"


def priority_list_key(queue: str, priority: int, priority_steps: Sequence[int]) -> str:
    """The list a message of ``priority`` goes to, as kombu picks it (the step at or below)."""
    step = priority_steps[max(bisect.bisect(priority_steps, priority) - 1, 0)]
    return priority_list_keys(queue, [step])[0]


def priority_list_keys(queue: str, priority_steps: Iterable[int]) -> list[str]:
    """Every list that holds waiting messages of ``queue``, highest priority first."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in priority_steps]


# celeriac's own index beside kombu's ``unacked`` hash (celeriac.broker.qos): per queue, a
# sorted set of the delivery tags workers hold, scored by ETA (0: none).
IN_FLIGHT_PREFIX = "celeriac:in_flight:"


def in_flight_key(queue: str) -> str:
    """The sorted set of ``queue``'s messages delivered to a worker and not yet acknowledged."""
    return f"{IN_FLIGHT_PREFIX}{queue}"


# celeriac's fetch (celeriac.broker.fetch): a doorbell list per queue that celeriac's producers
# push a token to with every message, so idle workers wake at once; and, per consuming
# channel, the tag of the message its last fetch took (to put it back if the reply was lost).
WAKE_PREFIX = "celeriac:wake:"
FETCH_PREFIX = "celeriac:fetch:"
# Doorbell tokens kept per queue: enough to wake every idle worker of a burst, bounded so that
# tokens piling up while every worker is busy cost little.
WAKE_TOKENS_MAX = 1000
# Messages a fetch popped that are not kombu messages (no delivery tag or routing key): kept
# here for a person to look at, instead of being lost or blocking their queue.
UNDELIVERABLE_KEY = "celeriac:undeliverable"
# Never set: a channel deletes it when it connects, a write that changes nothing, to learn
# whether the node accepts writes (see ``celeriac.broker.transport.Channel``).
WRITE_PROBE_KEY = "celeriac:write_probe"


def wake_key(queue: str) -> str:
    """The doorbell list of ``queue``."""
    return f"{WAKE_PREFIX}{queue}"


# Poison tasks (celeriac.broker.fetch, celeriac.broker.dead_letters): per delivery tag, how
# many times a message was fetched without being finished; per queue, a sorted set of
# dead-lettered task ids (score: when), and one hash of their entries (the message, why, how many
# deliveries).
DELIVERIES_KEY = "celeriac:deliveries"
DEAD_LETTERS_PREFIX = "celeriac:dead_letters:"
DEAD_LETTER_ENTRIES_KEY = "celeriac:dead_letter_entries"
# Every queue's dead-lettered task ids together, newest last: listing across queues.
ALL_DEAD_LETTERS_KEY = "celeriac:dead_letters"


def dead_letters_key(queue: str) -> str:
    """The sorted set of ``queue``'s dead-lettered task ids."""
    return f"{DEAD_LETTERS_PREFIX}{queue}"


# The worker registry (celeriac.worker.registry): every live celeriac worker's node name, scored
# by the time (Redis' clock, seconds) until which it counts as live; and per node name, a JSON
# object of what it consumes ({"queues": [...], "pool": processes}).
WORKERS_KEY = "celeriac:workers"
WORKER_INFO_KEY = "celeriac:workers:info"
