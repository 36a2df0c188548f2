"""The atomic fetch: one server-side script pops a message and records it as held.

kombu's worker takes a message with BRPOP and records it in the ``unacked`` hash in a second
round trip; if Redis dies or the connection drops between the two, the message exists only in
the worker's memory and is lost with it (a SIGKILLed worker loses it too). Here a worker fetches
with one script (``fetch.lua``) that pops the message and records it (``unacked`` entry, its
index score, the queue's in-flight set) in one step: at every moment a message is either on its
queue or recorded as held, so a held message that nobody runs is restored by the
visibility-timeout sweep. When the reply of a fetch is lost (the connection dropped after the
script ran), the worker asks Redis on the next connection which message that fetch took (the
script leaves its tag under a per-channel key, ``FETCH_PREFIX``) and puts it back on its queue
at once (``celeriac.broker.handback``).

Waiting. A script cannot block, so an idle worker waits with BLPOP on a per-queue doorbell list
(``celeriac:wake:<queue>``) for at most ``fetch_wait_seconds`` between fetches. celeriac's
producers push a doorbell token with every message, so idle workers wake at once; a message
from a plain Celery producer (no token) is found by the next fetch, within the wait. A fetch
that finds every list empty deletes the doorbells: their messages are taken already.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from time import time
from typing import Any, NamedTuple

from celeriac.broker.keys import (
    ALL_DEAD_LETTERS_KEY,
    DEAD_LETTER_ENTRIES_KEY,
    DEAD_LETTERS_PREFIX,
    DELIVERIES_KEY,
    IN_FLIGHT_PREFIX,
    UNDELIVERABLE_KEY,
)
from celeriac.broker.prefix import prefixed

# How long Redis keeps a channel's last fetched tag: longer than any reconnect takes.
FETCH_KEY_TTL_SECONDS = 3600


class Arguments(NamedTuple):
    """The script's ARGV, in order; the script reads each by its name (``SCRIPT``)."""

    # How many of KEYS are lists to pop from.
    lists: int
    now: float
    # This fetch's own mark, left with the tag under the fetch key (a lost reply's message).
    nonce: str
    # One character per list: "1" to record its message as held, "0" for a list consumed
    # without acknowledgements (Celery's reply queues), whose message is only popped.
    records: str
    # Deliveries that did not finish before a message is dead-lettered (0: no limit).
    max_lost_deliveries: int
    in_flight_prefix: str = IN_FLIGHT_PREFIX
    fetch_key_ttl: int = FETCH_KEY_TTL_SECONDS
    undeliverable: str = UNDELIVERABLE_KEY
    deliveries_key: str = DELIVERIES_KEY
    dead_letters_prefix: str = DEAD_LETTERS_PREFIX
    dead_letter_entries: str = DEAD_LETTER_ENTRIES_KEY
    all_dead_letters: str = ALL_DEAD_LETTERS_KEY


# fetch.lua with its arguments named: one line of locals, in ``Arguments`` order.
_NAMES = f"local {', '.join(Arguments._fields)} = unpack(ARGV)\n"
SCRIPT = _NAMES + (Path(__file__).parent / "fetch.lua").read_text(encoding="utf-8")
# Registered once, as kombu and redis-py's ``Script`` do: a node that has the script runs it by
# this digest (EVALSHA), so a fetch does not send its whole text.
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()


def fetch_command(
    *,
    lists: list[str],
    unacked: str,
    unacked_index: str,
    fetch_key: str,
    doorbells: list[str],
    records: str,
    nonce: str,
    max_lost_deliveries: int,
    cached: bool,
    key_prefix: str = "",
) -> tuple[Any, ...]:
    """The Redis command that runs the fetch: pop from ``lists`` (in order), record the message
    in ``unacked``, ``unacked_index`` and its queue's in-flight set, leave its tag under
    ``fetch_key``; finding nothing, delete ``doorbells``.

    ``cached``: the node has the script (EVALSHA); otherwise the script itself (EVAL, which
    caches it). A node without it answers EVALSHA with ``NOSCRIPT`` and runs nothing.

    ``key_prefix``: kombu's ``global_keyprefix``, put before every key, those the script gets
    as arguments too (the command is sent past the client, which would prefix them).
    """
    keys = [*lists, unacked, unacked_index, fetch_key, *doorbells]
    arguments = Arguments(
        len(lists),
        time(),
        nonce,
        records,
        max_lost_deliveries,
        # The key names among the arguments, prefixed as the keys are.
        in_flight_prefix=f"{key_prefix}{IN_FLIGHT_PREFIX}",
        undeliverable=f"{key_prefix}{UNDELIVERABLE_KEY}",
        deliveries_key=f"{key_prefix}{DELIVERIES_KEY}",
        dead_letters_prefix=f"{key_prefix}{DEAD_LETTERS_PREFIX}",
        dead_letter_entries=f"{key_prefix}{DEAD_LETTER_ENTRIES_KEY}",
        all_dead_letters=f"{key_prefix}{ALL_DEAD_LETTERS_KEY}",
    )
    return (
        *(("EVALSHA", SCRIPT_SHA) if cached else ("EVAL", SCRIPT)),
        len(keys),
        *prefixed(key_prefix, keys),
        *arguments,
    )


def wait_command(doorbells: list[str], timeout: float, key_prefix: str = "") -> tuple[Any, ...]:
    """The wait on ``doorbells`` before a fetch (a BLPOP of at most ``timeout`` seconds)."""
    return ("BLPOP", *prefixed(key_prefix, doorbells), timeout)
