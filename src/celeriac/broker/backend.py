"""Celery's Redis result backend, storing a task state in one round trip instead of two.

Celery's key-value backends read a task's stored state before writing a new one and skip the
write when it is already SUCCESS (so a duplicate run after a lost worker never overwrites a
finished result): a GET, then SET + PUBLISH in a MULTI, two synchronous round trips from the
pool process for every state stored. With ``task_track_started`` a task stores two states
(STARTED, then its outcome), four round trips for a no-op task. This backend does the same
check and write in one Lua script (GET, SET with expiry, PUBLISH), atomically: the check can no
longer race with another writer between the read and the write. Keys, values, expiry and the
published message are exactly Celery's, so readers (``AsyncResult``, the API) see no change.

A store refused because the node is not the master to write to (``READONLY`` from a demoted
master, ``NOREPLICAS`` from a master without a replica in sync: during a failover) is a
connection error, as for the broker (``celeriac.broker.clients.reconnect_when_refused``):
Celery's backend retries it (``result_backend_transport_options["retry_policy"]``) instead of
dropping the result, which would leave the task PENDING for ever.

A chord applied again with its frozen group id always runs its body (``apply_chord``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, cast

from celery import states
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

from celeriac.broker.clients import reconnect_when_refused

logger = logging.getLogger(__name__)

# KEYS[1] the task's result key; ARGV[1] the encoded meta, ARGV[2] seconds to keep (0: none).
# Celery's JSON meta starts with the status ({"status": "SUCCESS", ...}); anything else is
# decoded in full before deciding. Returns 1 when stored, 0 when a SUCCESS was kept.
STORE_UNLESS_SUCCEEDED = """
local current = redis.call('GET', KEYS[1])
if current then
  local status = string.match(current, '^{"status": "([%w_]+)"')
  if not status then
    local ok, meta = pcall(cjson.decode, current)
    if ok and type(meta) == 'table' then status = meta['status'] end
  end
  if status == 'SUCCESS' then return 0 end
end
local seconds = tonumber(ARGV[2])
if seconds > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', seconds)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class ResultBackend(RedisBackend):
    """Celery's ``RedisBackend`` with ``_store_result`` in one round trip (JSON results)."""

    _store_script: Any = None

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        # celery-types knows little of the key-value backends; Celery's attributes are untyped.
        celery: Any = self
        if celery.serializer != "json":
            # The script reads the stored status as JSON; other serializers take Celery's path.
            parent = cast(Any, super())
            return parent._store_result(task_id, result, state, traceback, request, **kwargs)
        meta = celery._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(
                "value too large for Redis backend", state=state, task_id=task_id
            )
        expires = celery.failure_expires if state == states.FAILURE else celery.expires
        key = self.get_key_for_task(task_id)
        self.ensure(self._store_unless_succeeded, (key, value, expires))
        return result

    def apply_chord(self, header_result_args: Any, body: Any, **kwargs: Any) -> None:
        # Reapplying a frozen chord reuses its group id. The previous run's cleanup left a
        # "done" marker that makes every part return of the group a no-op; Celery deletes it in
        # set_chord_size, which it calls only when publishing the last header task, so a header
        # task that finishes before that is dropped and the body never runs. Deleting it here,
        # before any header task is published, closes that window: until set_chord_size stores
        # the size no part return can claim the group, so the marker can only be the old run's.
        group_id = header_result_args[0]
        self.ensure(self.client.delete, (self.get_key_for_group(group_id, ".c"),))
        cast(Any, super()).apply_chord(header_result_args, body, **kwargs)

    def on_connection_error(  # type: ignore[override]  # celery-types: returns None
        self, max_retries: int | None, exc: Exception, intervals: Iterable[float], retries: int
    ) -> float:
        # Celery logs an ERROR per retry (one a second per waiting store during a failover):
        # one WARNING per store here, the retries at DEBUG.
        seconds = next(iter(intervals))
        log = logger.warning if retries == 0 else logger.debug
        log(
            "result backend: cannot store (%r); retry %d of %s in %.1f s",
            exc,
            retries + 1,
            max_retries or "unlimited",
            seconds,
        )
        return seconds

    def _store_unless_succeeded(self, key: bytes | str, value: Any, expires: Any) -> None:
        if self._store_script is None:
            # redis-py's Script: EVALSHA, loading the script again after a Redis restart.
            self._store_script = self.client.register_script(STORE_UNLESS_SUCCEEDED)
        seconds = int(
            expires.total_seconds() if hasattr(expires, "total_seconds") else expires or 0
        )
        with reconnect_when_refused(self.client.connection_pool.disconnect):
            self._store_script(keys=[key], args=[value, max(seconds, 0)])


class SentinelResultBackend(ResultBackend, SentinelBackend):
    """Celery's Sentinel result backend storing each state in one round trip."""
