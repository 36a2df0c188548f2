"""Celery's prefork pool, with the fix that lets a worker survive repeated broker restarts.

After a connection error Celery's consumer restarts and registers the pool with its event loop
again. A pool process that just exited (Celery cancels running tasks on connection loss,
killing their processes) has already been untracked, which leaves its ``_sentinel_poll`` set
to None; registering it again passes None to the event loop, which raises
``ValueError('file descriptor is None')``, and the worker exits for good ("Unrecoverable
error"). Seen with celery 5.7.0 after a few Redis restarts in a row. Such a process needs no
tracking: its exit was handled, and the pool replaces it.
"""

from __future__ import annotations

from typing import Any, cast

from celery.concurrency import asynpool, prefork


class AsynPool(asynpool.AsynPool):
    def _track_child_process(self, proc: Any, hub: Any) -> None:
        if hasattr(proc, "_sentinel_poll") and proc._sentinel_poll is None:
            return  # exited and untracked: nothing to watch
        cast(Any, super())._track_child_process(proc, hub)


class TaskPool(prefork.TaskPool):
    Pool = AsynPool


# What `celeriac worker --pool` names, and the class each runs.
POOL_CLASSES: dict[str, Any] = {"prefork": TaskPool, "threads": "threads"}
