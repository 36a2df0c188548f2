"""Where kombu's Redis transport keeps a queue's messages.

A queue is one list per priority step: the step-0 list is named after the queue, the others
``<queue>\\x06\\x16<step>``. Messages delivered and not yet acknowledged wait in one ``unacked``
hash per database (with their delivery times in the ``unacked_index`` sorted set).
"""

from __future__ import annotations

from collections.abc import Iterable

# kombu.transport.redis.Channel.sep
PRIORITY_SEPARATOR = "\x06\x16"
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"


def priority_list_keys(queue: str, priority_steps: Iterable[int]) -> list[str]:
    """Every list that holds waiting messages of ``queue``, highest priority first."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in priority_steps]
