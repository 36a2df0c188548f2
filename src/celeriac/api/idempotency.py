"""``Idempotency-Key`` on ``POST /v1/tasks``: a retried submission is queued once.

A client that did not get an answer (a timeout, a dropped connection, a 503 whose write may have
happened) sends the same request again with the same key. The first request with a key queues
the task and stores, under the key, the id and a fingerprint of the request; any later request
with that key within the window queues nothing and gets the first submission's answer back.

The check and the write are one Lua script on the broker's Redis, which also writes the message
(and, on one Redis, the id's record): Redis runs scripts one at a time, so of concurrent retries
exactly one queues its message, and the key exists only together with what it points at. The
key is written last: a script that fails part-way (a command Redis refused) leaves no key.

Keys are per API deployment (one Redis namespace), not per token: every token is equally
trusted and names no tenant. A key reused for a different request (another task, arguments,
queue, delay or priority) is refused with a 422 instead of answering for the other request.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from celeriac.api.batching import Command
from celeriac.api.models import TaskRequest

HEADER = "Idempotency-Key"
# Lowercase, as ASGI servers hand header names over.
HEADER_NAME = HEADER.lower().encode("latin-1")
MAX_KEY_LENGTH = 255
# Printable, no spaces: UUIDs, ULIDs, hex and base64 digests, ``order-42:attempt`` ...
KEY_PATTERN = r"^[A-Za-z0-9_.:+/=-]+$"
_KEY = re.compile(KEY_PATTERN)
KEY_PREFIX = "celeriac:api:idempotency:"
# Answers of a replayed submission carry this header (``true``), as Stripe's API does.
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_RULE = (
    f"1-{MAX_KEY_LENGTH} characters: letters, digits and _ . : + / = - (a UUID is a good key)"
)

# KEYS[1]: the idempotency key. ARGV[1]: what it stores, ARGV[2]: its lifetime in seconds,
# then the commands to run when the key is new, each as its word count and its words.
# Returns the stored value of an earlier submission, or nothing when this one ran.
SCRIPT = """
local first = redis.call('GET', KEYS[1])
if first then return first end
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""


def valid_key(value: str) -> bool:
    """Whether ``value`` is an acceptable ``Idempotency-Key`` (see ``KEY_RULE``)."""
    return 0 < len(value) <= MAX_KEY_LENGTH and _KEY.match(value) is not None


def fingerprint(request: TaskRequest, queue: str) -> str:
    """What makes two submissions the same request: every field, the queue as resolved."""
    fields = request.model_dump(mode="json")
    fields["queue"] = queue
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Once:
    """A submission that must happen at most once per ``key`` within ``window_seconds``."""

    key: str
    fingerprint: str
    window_seconds: int
    # CELERIAC_BROKER_KEY_PREFIX: applications sharing one Redis each have their own keys.
    key_prefix: str = ""


@dataclass(frozen=True)
class First:
    """The submission an ``Idempotency-Key`` already names."""

    id: str
    task: str
    queue: str
    fingerprint: str


def stored(first: First) -> str:
    return json.dumps(
        {"id": first.id, "task": first.task, "queue": first.queue, "fp": first.fingerprint},
        separators=(",", ":"),
    )


def parse_stored(raw: object) -> First | None:
    """The submission stored under a key; None for anything else (a value not written here)."""
    if not isinstance(raw, bytes | str):
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    fields = [value.get(name) for name in ("id", "task", "queue", "fp")]
    texts = [field for field in fields if isinstance(field, str) and field]
    if len(texts) != len(fields):
        return None
    return First(*texts)


def script_command(once: Once, first: First, commands: list[Command]) -> Command:
    """One ``EVAL`` that runs ``commands`` and stores ``first`` unless the key exists."""
    words: list[Any] = [stored(first), once.window_seconds]
    for name, args in commands:
        command = list(args) if name == "execute_command" else [name.upper(), *args]
        words += [len(command), *command]
    key = f"{once.key_prefix}{KEY_PREFIX}{once.key}"
    return ("execute_command", ("EVAL", SCRIPT, 1, key, *words))
