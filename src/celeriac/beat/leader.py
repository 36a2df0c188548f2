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
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.beat import ScheduleEntry
from celery.beat import Scheduler as CeleryScheduler
from redis.exceptions import LockError, RedisError

from celeriac import heartbeat
from celeriac.beat.lock import LOCK_SUFFIX, LeaderLock
from celeriac.beat.scheduler import STANDBY_POLL_SECONDS

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
        self.leader = LeaderLock(lambda: client, key_prefix + LOCK_SUFFIX, lock_timeout)
        self._inner: CeleryScheduler | None = None
        kwargs.pop("lazy", None)
        self._inner_kwargs = dict(kwargs)
        self._redis_failing = False
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
            if not self.leader.hold(self.standby_interval):
                return self.standby_interval
            if self._inner is None:
                self._inner = self._build()
            interval = min(float(self._inner.tick(*args, **kwargs)), self._max_interval)
        except LockError:
            self.leader.lost_warning()
            self.leader.forget()
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
        guard = self.leader.recheck
        parent = self._scheduler_cls

        class Guarded(parent):  # type: ignore[valid-type,misc]  # a class known at run time
            def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
                guard()
                super().apply_entry(entry, producer=producer)

        Guarded.__name__ = Guarded.__qualname__ = parent.__name__
        inner: CeleryScheduler = Guarded(app=self.app, **self._inner_kwargs)
        logger.info("beat: scheduling with %s", self.info)
        return inner

    def close(self) -> None:
        """Store the scheduler's state, then release the lock (SIGTERM lands here)."""
        self._stop_scheduling()
        self.leader.release()

    def _stop_scheduling(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            try:
                inner.close()
            except Exception:
                logger.exception("beat: closing %s failed", self.info)
