"""Silent consumers: a worker that could take waiting messages but takes none fails liveness.

After a connection reset or a Redis restart, a Celery worker can stay connected and keep its
event loop (and so its heartbeat) alive while it no longer fetches anything (celery/celery#8030,
#8082, #9054, #10205). Such a worker passes a heartbeat probe for ever while its queue grows.

So a thread of the worker's main process checks, every second, three things it can see cheaply:

- messages wait in its queues: one pipelined ``LLEN`` per priority list of its queues;
- it could take one: it is not shutting down, and a pool process is free: its channel is under
  its prefetch limit (ETA and rate-limited messages it holds count as Celery counts them), or,
  with no channel (between connections, or a consumer that is gone), it holds fewer tasks
  than its pool has processes;
- the time it last took a message (the consumer's message handler records it).

Whether the consumer says it is connected does not matter: a consumer that dropped a
half-open connection and never came back, or a reconnect loop that fails while Redis answers
this check, takes nothing just the same.

When all of this has held for ``CELERIAC_WORKER_STALL_SECONDS`` with nothing taken, it writes
a marker file beside the heartbeat (``<heartbeat>.stalled``, one line saying why) and logs a
warning; ``celeriac probe worker`` fails while the marker exists, so Kubernetes restarts the
worker. The marker goes as soon as the worker takes a message again or the condition ends
(the queues empty, every process busy, a shutdown begins, or this check's own read of Redis
fails: a Redis that answers nobody is the consumer's reconnect loop's business, not a stall).
The check is a thread, not a timer of the event loop, so a slow Redis never blocks the loop;
it reads Redis with its own connection.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis
from celery.worker import state

from celeriac import broker, heartbeat
from celeriac.broker.keys import priority_list_keys
from celeriac.worker.settings import HEARTBEAT_INTERVAL_SECONDS, WorkerSettings

logger = logging.getLogger(__name__)


class StallClock:
    """Decides from what the watcher sees whether the worker has stalled; no I/O of its own."""

    def __init__(self, stall_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.stall_seconds = stall_seconds
        self._clock = clock
        self.last_taken = clock()
        # Since when messages have waited while the worker could take one (None: not now).
        self._since: float | None = None

    def message_taken(self) -> None:
        self.last_taken = self._clock()

    def check(self, waiting: int | None, can_take: bool) -> str | None:
        """Why the worker is stalled, or None. ``waiting`` None: unknown (Redis unreadable)."""
        now = self._clock()
        if not waiting or not can_take:
            self._since = None
            return None
        if self._since is None:
            self._since = now
        idle = now - max(self._since, self.last_taken)
        if idle < self.stall_seconds:
            return None
        return (
            f"{waiting} messages wait in its queues and it could take one, but it has taken "
            f"nothing for {idle:.0f}s (CELERIAC_WORKER_STALL_SECONDS={self.stall_seconds:g})"
        )


def waiting_messages(
    client: redis.Redis, queues: Sequence[str], priority_steps: Sequence[int]
) -> int:
    """Messages waiting in ``queues``, every priority list, in one round trip."""
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            for key in priority_list_keys(queue, priority_steps):
                pipe.llen(key)
        return sum(int(n) for n in pipe.execute())


def worker_can_take(worker: Any, held: Callable[[], int]) -> bool:
    """Whether ``worker`` could take a message now: not shutting down, a pool process free.

    ``held``: tasks the worker holds (received, not finished). Its channel's prefetch limit
    (kombu's ``can_consume``) says it when there is a channel; without one (no consumer yet,
    between connections, a consumer that is gone) the pool does.
    """
    shutdown = getattr(worker, "celeriac_shutdown", None)
    if state.should_stop is not None or state.should_terminate is not None:
        return False
    if shutdown is not None and shutdown.draining:
        return False
    try:
        return bool(worker.consumer.task_consumer.channel.qos.can_consume())
    except AttributeError:  # no channel: count the pool's free processes
        return held() < int(getattr(worker, "concurrency", 0) or 0)


def redis_client(settings: WorkerSettings) -> redis.Redis:
    """The watcher's own connection: short timeouts, no retries (the next check is the retry)."""
    return broker.polling_client(
        settings.common,
        settings.common.redis_socket_timeout_seconds,
        "celeriac-worker-stall-check",
    )


class StallWatcher:
    """The thread that runs the check every second and keeps the stalled marker."""

    def __init__(
        self,
        settings: WorkerSettings,
        can_take: Callable[[], bool],
        client: redis.Redis,
        interval: float = HEARTBEAT_INTERVAL_SECONDS,
    ) -> None:
        self.settings = settings
        self.clock = StallClock(settings.stall_seconds)
        self._can_take = can_take
        self._client = client
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celeriac-stall-check", daemon=True)
        self._stalled = False

    def start(self) -> None:
        heartbeat.remove(self.settings.stalled_file)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.settings.common.redis_socket_timeout_seconds + 1)
        self._client.close()
        heartbeat.remove(self.settings.stalled_file)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check_once()
            except Exception:  # never let the watcher die silently: log and go on
                logger.exception("stall check failed")

    def check_once(self) -> str | None:
        reason = self.clock.check(self._waiting(), self._can_take())
        if reason is not None:
            if not self._stalled:
                logger.warning("consumer stalled, liveness fails from now: %s", reason)
            self._stalled = True
            _write(self.settings.stalled_file, reason)
        elif self._stalled:
            self._stalled = False
            heartbeat.remove(self.settings.stalled_file)
            logger.warning("consumer no longer stalled")
        return reason

    def _waiting(self) -> int | None:
        try:
            return waiting_messages(
                self._client, self.settings.common.queues, self.settings.common.priority_steps
            )
        except (redis.RedisError, OSError):
            return None


def _write(path: Path, line: str) -> None:
    """Replace ``path`` with ``line`` at once (the probe never reads half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(line + "\n", encoding="utf-8")
    partial.replace(path)
