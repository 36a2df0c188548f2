"""The worker registry: which celeriac workers are live and what each consumes, kept in Redis.

Celery keeps no registry of workers in Redis (its worker heartbeats are events, which celeriac
turns off, and kombu's pidbox bindings outlive the workers that made them), so each celeriac
worker keeps an entry of its own:

- ``celeriac:workers`` (``keys.WORKERS_KEY``), a sorted set: member = the worker's node name
  (Celery's hostname, the pod name in Kubernetes), score = until when it counts as live: Redis'
  ``TIME`` at its last refresh plus ``LIVE_INTERVALS`` refresh intervals;
- ``celeriac:workers:info`` (``keys.WORKER_INFO_KEY``), a hash: node name -> JSON
  ``{"queues": [sorted queue names], "pool": processes}``.

A thread of the worker's main process writes the entry at start and again every
``CELERIAC_WORKER_REGISTRY_INTERVAL_SECONDS`` (one Lua script, one round trip, O(log n)), and
removes it on a graceful shutdown. The same script removes up to ``PRUNE_BATCH`` entries whose
time has passed, from both keys, so a worker killed without a shutdown (SIGKILL, out of
memory) stops counting after its bound and leaves nothing behind after the next refresh of any
other worker: the keys hold the live workers and the recently dead.

Times are Redis' own (``TIME`` inside the scripts), so the nodes' clocks may disagree. As each
worker scores its own deadline, a reader needs no setting in common with the workers: live
means a score at or after ``TIME`` (``read_live_workers``), whatever interval each one uses.

A thread rather than a timer of the event loop: during a Redis outage each write waits up to
the socket timeout, which would hold up the loop (task dispatch, the heartbeat) as long. Errors
are logged once per outage, at WARNING, and never stop the worker.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from celeriac import broker
from celeriac.broker.keys import WORKER_INFO_KEY, WORKERS_KEY
from celeriac.broker.prefix import script_keys
from celeriac.settings import Settings

logger = logging.getLogger(__name__)

# A worker counts as live for this many refresh intervals after its last refresh: one missed
# refresh (a slow Redis, a pause) does not make it disappear.
LIVE_INTERVALS = 3
# Entries past their time removed by one refresh at most: each refresh stays short whatever
# died at once; the others go at the next refreshes.
PRUNE_BATCH = 100
# How long a shutdown waits for a write under way before it leaves the entry to expire.
STOP_WAIT_SECONDS = 1.0
# Node names per HMGET in the reader's script (Lua's unpack has a stack limit near 8,000).
READ_BATCH = 1000

# KEYS: the sorted set, the hash. ARGV: node name, info JSON, seconds it counts as live.
# Returns how many entries past their time were removed.
REFRESH_SCRIPT = f"""
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, {PRUNE_BATCH})
if #dead > 0 then
  redis.call('ZREM', KEYS[1], unpack(dead))
  redis.call('HDEL', KEYS[2], unpack(dead))
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return #dead
"""

# KEYS: the sorted set, the hash. ARGV: node name.
REMOVE_SCRIPT = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
"""

# KEYS: the sorted set, the hash. Returns {node names, their info}: the live workers by Redis'
# clock, ordered by name within equal scores; read only (O(log n) + live workers).
READ_LIVE_SCRIPT = f"""
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local names = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
local infos = {{}}
for first = 1, #names, {READ_BATCH} do
  local last = math.min(first + {READ_BATCH} - 1, #names)
  local batch = redis.call('HMGET', KEYS[2], unpack(names, first, last))
  for i = 1, #batch do infos[#infos + 1] = batch[i] end
end
return {{names, infos}}
"""


@dataclass(frozen=True)
class LiveWorker:
    """A worker as its registry entry describes it."""

    name: str
    # The queues it consumes, sorted.
    queues: tuple[str, ...]
    # Its pool processes (threads with the threads pool).
    pool: int


def info_json(queues: Sequence[str], pool: int) -> str:
    """A worker's entry in the info hash."""
    return json.dumps({"queues": sorted(set(queues)), "pool": pool}, separators=(",", ":"))


def read_live_workers(pipe: Any) -> None:
    """Queue the read of the live workers on ``pipe`` (a pipeline); ``live_workers`` parses
    its reply."""
    pipe.eval(READ_LIVE_SCRIPT, 2, *_keys(pipe))


def live_workers(reply: Any) -> tuple[LiveWorker, ...]:
    """The live workers from the reply to ``read_live_workers``, sorted by name.

    An entry whose info is missing or unreadable (written by something else) counts as a
    worker with no queues and no pool, so it is still counted, in no group.
    """
    names, infos = reply
    workers = [_worker(_text(name), info) for name, info in zip(names, infos, strict=True)]
    return tuple(sorted(workers, key=lambda worker: worker.name))


def _keys(client: object) -> list[str]:
    """The registry's keys as its scripts take them (``script_keys``: the prefix, if any)."""
    return script_keys(client, [WORKERS_KEY, WORKER_INFO_KEY])


def _worker(name: str, info: bytes | str | None) -> LiveWorker:
    try:
        data = json.loads(info) if info is not None else {}
        queues = tuple(sorted(str(queue) for queue in data.get("queues", [])))
        pool = data.get("pool", 0)
        return LiveWorker(name, queues, pool if isinstance(pool, int) and pool >= 0 else 0)
    except (ValueError, TypeError, AttributeError):
        return LiveWorker(name, (), 0)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def registry_client(settings: Settings) -> redis.Redis:
    """The registry's own connection: short timeouts, no retries (the next refresh is the
    retry); through Sentinel when the broker URL names sentinels."""
    return broker.polling_client(
        settings, settings.redis_socket_timeout_seconds, "celeriac-worker-registry"
    )


class WorkerRegistry:
    """Keeps one worker's entry: written at ``start`` and every ``interval`` seconds from a
    thread, removed at ``stop``."""

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        queues: Sequence[str],
        pool: int,
        interval: float,
    ) -> None:
        self.name = name
        self.interval = interval
        self._client = client
        self._info = info_json(queues, pool)
        self._refresh = client.register_script(REFRESH_SCRIPT)
        self._remove = client.register_script(REMOVE_SCRIPT)
        # Held while writing: ``stop`` waits for a refresh under way, then no refresh follows
        # its removal.
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._outage = False
        self._thread = threading.Thread(
            target=self._run, name="celeriac-worker-registry", daemon=True
        )

    @property
    def live_seconds(self) -> float:
        """How long after a refresh the worker counts as live."""
        return LIVE_INTERVALS * self.interval

    def start(self) -> None:
        """Register now (from the thread: a Redis outage does not hold up the start) and
        refresh every interval."""
        self._thread.start()

    def stop(self) -> None:
        """Remove the entry (a graceful shutdown: the worker stops counting at once).

        Never holds up the shutdown for long: during an outage (the last write failed), or
        while a write still waits for Redis after ``STOP_WAIT_SECONDS``, nothing is removed
        and the entry expires at its time instead.
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._lock.acquire(timeout=STOP_WAIT_SECONDS):
            try:
                if not self._outage:
                    self._remove_entry()
            finally:
                self._lock.release()
        self._client.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=STOP_WAIT_SECONDS)

    def _remove_entry(self) -> None:
        try:
            self._remove(keys=_keys(self._client), args=[self.name])
        except (redis.RedisError, OSError) as exc:
            logger.warning(
                "worker registry: could not remove %s (%s); it stops counting as live within %gs",
                self.name,
                exc,
                self.live_seconds,
            )

    def refresh(self) -> bool:
        """Write the entry once; False when Redis could not be written (logged once per
        outage)."""
        with self._lock:
            if self._stopped.is_set():
                return False
            try:
                pruned = self._refresh(
                    keys=_keys(self._client),
                    args=[self.name, self._info, repr(self.live_seconds)],
                )
            except (redis.RedisError, OSError) as exc:
                # Through Sentinel, a master demoted while connected answers READONLY on an
                # open connection: drop the connections, the next refresh asks the sentinels.
                self._client.connection_pool.disconnect()
                if not self._outage:
                    self._outage = True
                    logger.warning(
                        "worker registry: cannot write to Redis (%s); retrying every %gs, "
                        "this worker stops counting as live in %gs",
                        exc,
                        self.interval,
                        self.live_seconds,
                    )
                return False
            if self._outage:
                self._outage = False
                logger.info("worker registry: written to Redis again")
        if pruned:
            logger.info("worker registry: removed %d workers not seen in time", pruned)
        return True

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.refresh()
            except Exception:  # never let the thread die silently: log and go on
                logger.exception("worker registry: refresh failed")
            self._stopped.wait(self.interval)
