"""The scheduler: redbeat's Redis storage, with celeriac's lock, heartbeat and file sync.

Changes to redbeat's behavior, and why:

- The lock is tried without blocking on every tick. redbeat blocks inside Celery's
  ``beat_init`` signal until it gets the lock, so a standby beat never ticks, never touches its
  heartbeat file and fails its liveness probe. Here a standby beat ticks, touches its heartbeat
  and polls the lock every second, so it takes over within about a second of a release.
- The schedule file is written to Redis by the beat that holds the lock, right after it takes
  the lock, and again whenever it retakes it (after Redis lost its data, say). Entries no longer
  in the file are deleted; entries still in it keep their last run, so a restart neither fires
  them early nor loses their place. A new entry starts its clock when it is added, as in plain
  Celery: an interval entry first fires one interval later, a cron entry at its next time
  (redbeat would fire both at once, running a nightly job at every deploy).
- A lost lock (another beat took it after this one stalled past the lock timeout) drops this
  beat back to standby instead of crashing it, and a Redis outage is logged once and waited out.
- Nothing is written to disk except the heartbeat file: no shelve schedule file.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery import Celery
from redbeat.schedulers import RedBeatScheduler, RedBeatSchedulerEntry, ensure_conf, get_redis
from redis.exceptions import LockError, RedisError
from redis.lock import Lock

from celeriac import heartbeat
from celeriac.beat.schedule import Entry

logger = logging.getLogger("celeriac.beat")

# How often a standby beat tries the lock (capped by the loop interval).
STANDBY_POLL_SECONDS = 1.0
LOCK_SUFFIX = ":lock"


class Scheduler(RedBeatScheduler):  # type: ignore[misc]  # redbeat ships no type hints
    """Fires the entries of one validated schedule file while it holds the Redis lock."""

    def __init__(
        self,
        app: Celery,
        *,
        entries: Sequence[Entry] = (),
        heartbeat_file: Path,
        lock_timeout: float,
        **kwargs: Any,
    ) -> None:
        # Set before the base __init__, which calls setup_schedule().
        self._entries = tuple(entries)
        self._heartbeat_file = heartbeat_file
        self._synced = False
        self._standing_by = False
        self._redis_failing = False
        self._lock_extended_at = 0.0
        # The lock's value says who holds it: `GET celeriac:beat::lock` answers "which pod?".
        self._token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        super().__init__(app, lock_timeout=lock_timeout, **kwargs)
        self.lock: Lock | None = None
        self.lock_name: str = ensure_conf(app).key_prefix + LOCK_SUFFIX

    @property
    def standby_interval(self) -> float:
        return float(min(STANDBY_POLL_SECONDS, self.max_interval))

    def setup_schedule(self) -> None:
        """Nothing at construction: the schedule is written to Redis once the lock is held."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        heartbeat.touch(self._heartbeat_file)
        try:
            if not self._hold_lock():
                return self.standby_interval
            interval = float(super().tick(*args, **kwargs))
        except LockError:
            logger.warning(
                "beat: lost the lock %s (this beat stalled longer than the lock timeout of "
                "%gs and another beat may have taken over); standing by",
                self.lock_name,
                self.lock_timeout,
            )
            self.lock = None
            self._synced = False
            return self.standby_interval
        except RedisError as exc:
            if not self._redis_failing:
                logger.warning("beat: Redis is unavailable (%s); retrying every tick", exc)
                self._redis_failing = True
            return self.standby_interval
        if self._redis_failing:
            logger.info("beat: Redis is reachable again")
            self._redis_failing = False
        return interval

    def maybe_due(self, entry: RedBeatSchedulerEntry, **kwargs: Any) -> Any:
        # A tick that took long (a slow publish) re-checks the lock before sending more, so a
        # beat that lost the lock mid-tick does not fire what the new holder fires.
        if time.monotonic() - self._lock_extended_at > self.lock_timeout / 2:
            self._extend_lock()
        return super().maybe_due(entry, **kwargs)

    def close(self) -> None:
        """Release the lock at once (SIGTERM lands here) so a standby beat takes over fast."""
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
        super().close()

    def _hold_lock(self) -> bool:
        if self.lock is None:
            lock = get_redis(self.app).lock(
                self.lock_name, timeout=self.lock_timeout, thread_local=False
            )
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
        if not self._synced:
            self._sync_schedule()
            self._synced = True
        return True

    def _extend_lock(self) -> None:
        if self.lock is None:
            raise LockError("the lock is not held")
        self.lock.extend(self.lock_timeout, replace_ttl=True)
        self._lock_extended_at = time.monotonic()

    def _sync_schedule(self) -> None:
        """Make Redis hold exactly the file's entries, keeping the last run of those kept."""
        client = get_redis(self.app)
        conf = self.app.redbeat_conf
        wanted = {RedBeatSchedulerEntry.generate_key(self.app, e.name): e for e in self._entries}
        stale = [key for key in client.zrange(conf.schedule_key, 0, -1) if key not in wanted]
        if stale:
            with client.pipeline() as pipe:
                for key in stale:
                    pipe.zrem(conf.schedule_key, key)
                    pipe.delete(key)
                pipe.execute()
        with client.pipeline() as pipe:
            for key in wanted:
                pipe.hget(key, "meta")
            metas = pipe.execute()
        now = self.app.now()
        kept = 0
        for (key, spec), raw_meta in zip(wanted.items(), metas, strict=True):
            entry = RedBeatSchedulerEntry(name=spec.name, app=self.app, **spec.definition())
            last_run_at = RedBeatSchedulerEntry.decode_meta(raw_meta).get("last_run_at")
            if last_run_at is None:
                entry.last_run_at = now
                # save() writes meta only where none exists; overwrite a meta with no last run.
                client.hdel(key, "meta")
            else:
                entry.last_run_at = last_run_at
                kept += 1
            entry.save()
        removed = ", ".join(key[len(conf.key_prefix) :] for key in stale) or "none"
        logger.info(
            "beat: schedule written to Redis: %d entries (%d new, %d kept their last run); "
            "removed: %s",
            len(wanted),
            len(wanted) - kept,
            kept,
            removed,
        )
