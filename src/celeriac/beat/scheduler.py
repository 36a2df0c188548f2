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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery import Celery
from redbeat.schedulers import RedBeatScheduler, RedBeatSchedulerEntry, ensure_conf, get_redis
from redis.exceptions import LockError, RedisError

from celeriac import heartbeat
from celeriac.beat.entry import Entry
from celeriac.beat.lock import LOCK_SUFFIX, LeaderLock

logger = logging.getLogger("celeriac.beat")

# How often a standby beat tries the lock (capped by the loop interval).
STANDBY_POLL_SECONDS = 1.0


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
        self._redis_failing = False
        super().__init__(app, lock_timeout=lock_timeout, **kwargs)
        # redbeat's own lock stays unused (its close() releases it when set).
        self.lock = None
        self.leader = LeaderLock(
            lambda: get_redis(app), ensure_conf(app).key_prefix + LOCK_SUFFIX, lock_timeout
        )

    @property
    def standby_interval(self) -> float:
        return float(min(STANDBY_POLL_SECONDS, self.max_interval))

    def setup_schedule(self) -> None:
        """Nothing at construction: the schedule is written to Redis once the lock is held."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        heartbeat.touch(self._heartbeat_file)
        try:
            if not self.leader.hold(self.standby_interval):
                return self.standby_interval
            if not self._synced:
                self._sync_schedule()
                self._synced = True
            interval = float(super().tick(*args, **kwargs))
        except LockError:
            self.leader.lost_warning()
            self.leader.forget()
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
        self.leader.recheck()
        return super().maybe_due(entry, **kwargs)

    def close(self) -> None:
        self.leader.release()
        super().close()

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
