"""Any Celery scheduler class behind celeriac's leader lock in Redis (CELERIAC_BEAT_SCHEDULER).

django-celery-beat's ``DatabaseScheduler`` (or any other ``celery.beat.Scheduler``) keeps its
schedule and last runs in its own store and has no lock: two beats on one database both send.
``LeaderScheduler`` runs the chosen scheduler only while it holds the same Redis lock as
celeriac's own scheduler (``celeriac:beat::lock``, so even a YAML beat and a database beat of
one release exclude each other):

- A beat without the lock stands by: it ticks, touches its heartbeat and tries the lock every
  second (or every loop interval, if shorter); the scheduler is not even built, so it sends
  nothing and holds no stale copy of the schedule.
- The beat that takes the lock builds the scheduler then, so it starts from what the store says
  at that moment (the last runs the previous holder wrote), and extends the lock on every tick
  and again before each send after a long tick.
- When it loses the lock, or Redis stops answering (it cannot know whether it still holds the
  lock), it closes the scheduler (which writes its last runs) and stands by.
- SIGTERM closes the scheduler first, so its last runs are stored, then releases the lock.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.beat import ScheduleEntry
from celery.beat import Scheduler as CeleryScheduler
from redis.exceptions import LockError, RedisError
from redis.lock import Lock

from celeriac import heartbeat
from celeriac.beat.scheduler import LOCK_SUFFIX, STANDBY_POLL_SECONDS

logger = logging.getLogger("celeriac.beat")


class LeaderScheduler(CeleryScheduler):
    """Runs ``scheduler_cls`` while this beat holds the lock; stands by otherwise."""

    def __init__(
        self,
        app: Celery,
        *,
        scheduler_cls: type[CeleryScheduler],
        client: redis.Redis,
        key_prefix: str,
        heartbeat_file: Path,
        lock_timeout: float,
        **kwargs: Any,
    ) -> None:
        self._scheduler_cls = scheduler_cls
        self._client = client
        self._heartbeat_file = heartbeat_file
        self.lock_timeout = lock_timeout
        self.lock_name = key_prefix + LOCK_SUFFIX
        self.lock: Lock | None = None
        self._inner: CeleryScheduler | None = None
        kwargs.pop("lazy", None)
        self._inner_kwargs = dict(kwargs)
        self._standing_by = False
        self._redis_failing = False
        self._lock_extended_at = 0.0
        self._token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        # lazy: this wrapper has no schedule of its own to set up.
        super().__init__(app, lazy=True, **kwargs)

    @property
    def info(self) -> str:
        return f"{self._scheduler_cls.__module__}.{self._scheduler_cls.__name__} behind a lock"

    @property
    def standby_interval(self) -> float:
        return min(STANDBY_POLL_SECONDS, self._max_interval)

    @property
    def _max_interval(self) -> float:
        # Celery sets it in __init__ (hinted as optional); Beat always passes it.
        return float(self.max_interval or STANDBY_POLL_SECONDS)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        heartbeat.touch(self._heartbeat_file)
        try:
            if not self._hold_lock():
                return self.standby_interval
            if self._inner is None:
                self._inner = self._build()
            interval = min(float(self._inner.tick(*args, **kwargs)), self._max_interval)
        except LockError:
            logger.warning(
                "beat: lost the lock %s (this beat stalled longer than the lock timeout of "
                "%gs and another beat may have taken over); standing by",
                self.lock_name,
                self.lock_timeout,
            )
            self._stop_scheduling()
            return self.standby_interval
        except RedisError as exc:
            if not self._redis_failing:
                logger.warning(
                    "beat: Redis is unavailable (%s); not sending until the lock is retaken", exc
                )
                self._redis_failing = True
            self._stop_scheduling()
            return self.standby_interval
        if self._redis_failing:
            logger.info("beat: Redis is reachable again")
            self._redis_failing = False
        return interval

    def _build(self) -> CeleryScheduler:
        guard = self._guard_send
        parent = self._scheduler_cls

        class Guarded(parent):  # type: ignore[valid-type,misc]  # a class known at run time
            def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
                guard()
                super().apply_entry(entry, producer=producer)

        Guarded.__name__ = Guarded.__qualname__ = parent.__name__
        inner: CeleryScheduler = Guarded(app=self.app, **self._inner_kwargs)
        logger.info("beat: scheduling with %s", self.info)
        return inner

    def _guard_send(self) -> None:
        # A tick that took long (a slow database, a slow publish) re-checks the lock before
        # sending more, so a beat that lost it mid-tick does not send what the new holder sends.
        if time.monotonic() - self._lock_extended_at > self.lock_timeout / 2:
            self._extend_lock()

    def close(self) -> None:
        """Store the scheduler's state, then release the lock (SIGTERM lands here)."""
        self._stop_scheduling()
        lock, self.lock = self.lock, None
        if lock is not None:
            try:
                lock.release()
                logger.info("beat: released the lock %s", self.lock_name)
            except LockError:
                logger.warning("beat: the lock %s had already expired", self.lock_name)
            except RedisError as exc:
                logger.warning(
                    "beat: could not release the lock (%s); it expires within %gs",
                    exc,
                    self.lock_timeout,
                )

    def _stop_scheduling(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            try:
                inner.close()
            except Exception:
                logger.exception("beat: closing %s failed", self.info)

    def _hold_lock(self) -> bool:
        if self.lock is None:
            lock = self._client.lock(self.lock_name, timeout=self.lock_timeout, thread_local=False)
            if not lock.acquire(blocking=False, token=self._token):
                if not self._standing_by:
                    logger.info(
                        "beat: standing by: another beat holds the lock %s; polling every %gs",
                        self.lock_name,
                        self.standby_interval,
                    )
                    self._standing_by = True
                return False
            self.lock = lock
            self._standing_by = False
            self._lock_extended_at = time.monotonic()
            logger.info(
                "beat: acquired the lock %s as %s (timeout %gs)",
                self.lock_name,
                self._token,
                self.lock_timeout,
            )
        else:
            self._extend_lock()
        return True

    def _extend_lock(self) -> None:
        if self.lock is None:
            raise LockError("the lock is not held")
        try:
            self.lock.extend(self.lock_timeout, replace_ttl=True)
        except LockError:
            self.lock = None
            raise
        self._lock_extended_at = time.monotonic()
