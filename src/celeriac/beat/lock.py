"""The leader lock in Redis that a beat holds while it sends: one beat sends, others stand by.

Every celeriac scheduler (the YAML one on redbeat's storage, and any scheduler class behind
``LeaderScheduler``) takes the same lock, ``<redbeat key prefix>:lock``, without blocking on each
tick, extends it on every tick, re-checks it before a send after a long tick, and releases it on
close, so a standby beat takes over within about a second.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

import redis
from redis.exceptions import LockError, RedisError
from redis.lock import Lock

logger = logging.getLogger("celeriac.beat")

LOCK_SUFFIX = ":lock"


class LeaderLock:
    """``name`` in Redis, held by at most one beat; raises ``LockError`` when it was lost."""

    def __init__(self, client: Callable[[], redis.Redis], name: str, timeout: float) -> None:
        self._client = client
        self.name = name
        self.timeout = timeout
        self._lock: Lock | None = None
        self._standing_by = False
        self._extended_at = 0.0
        # The lock's value says who holds it: `GET celeriac:beat::lock` answers "which pod?".
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

    @property
    def held(self) -> bool:
        return self._lock is not None

    def hold(self, poll_seconds: float) -> bool:
        """Take the lock, or extend it when held. False: another beat holds it (standing by,
        said once); ``poll_seconds`` is how often the caller will try again."""
        if self._lock is not None:
            self.extend()
            return True
        lock = self._client().lock(self.name, timeout=self.timeout, thread_local=False)
        if not lock.acquire(blocking=False, token=self.token):
            if not self._standing_by:
                logger.info(
                    "beat: standing by: another beat holds the lock %s; polling every %gs",
                    self.name,
                    poll_seconds,
                )
                self._standing_by = True
            return False
        self._lock = lock
        self._standing_by = False
        self._extended_at = time.monotonic()
        logger.info(
            "beat: acquired the lock %s as %s (timeout %gs)", self.name, self.token, self.timeout
        )
        return True

    def extend(self) -> None:
        if self._lock is None:
            raise LockError("the lock is not held")
        try:
            self._lock.extend(self.timeout, replace_ttl=True)
        except LockError:
            self._lock = None
            raise
        self._extended_at = time.monotonic()

    def recheck(self) -> None:
        """Before a send: a tick that took long (a slow publish, a slow database) extends the
        lock again, so a beat that lost it mid-tick does not send what the new holder sends."""
        if time.monotonic() - self._extended_at > self.timeout / 2:
            self.extend()

    def forget(self) -> None:
        """Lost (``LockError``): the next ``hold`` tries to take it anew."""
        self._lock = None

    def release(self) -> None:
        """Release at once (SIGTERM lands here) so a standby beat takes over fast."""
        lock, self._lock = self._lock, None
        if lock is None:
            return
        try:
            lock.release()
            logger.info("beat: released the lock %s", self.name)
        except LockError:
            logger.warning("beat: the lock %s had already expired", self.name)
        except RedisError as exc:
            logger.warning(
                "beat: could not release the lock (%s); it expires within %gs", exc, self.timeout
            )

    def lost_warning(self) -> None:
        logger.warning(
            "beat: lost the lock %s (this beat stalled longer than the lock timeout of %gs and "
            "another beat may have taken over); standing by",
            self.name,
            self.timeout,
        )
