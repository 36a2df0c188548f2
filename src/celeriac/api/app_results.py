"""Task states read through the app's own result backend, when it keeps results outside Redis.

The API's fast path reads Celery's result key straight from Redis (``tracking``). An app whose
result backend is not Redis (django-celery-results' ``django-db``, ``db+postgresql://...``: see
``celeriac.app.app_result_backend``) is read through Celery's own backend object instead: one
query per read, in the thread pool, since those clients block. The API's own record of each id
(task, queue, revoked) stays in Redis either way.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

from celery import Celery, states
from starlette.concurrency import run_in_threadpool


class ResultBackendError(Exception):
    """The app's result backend could not be read (the API answers 503)."""


class AppResults:
    """Reads task states with ``app.backend`` (``backend`` names it in errors)."""

    def __init__(self, app: Celery, backend: str) -> None:
        self.app = app
        self.backend = backend

    async def meta(self, task_id: str) -> dict[str, Any] | None:
        """What the backend stores for ``task_id``, shaped as Celery's Redis backend stores it
        (``tracking`` reads both alike); None when it has no state for the id."""
        return await run_in_threadpool(self._read, task_id)

    def _read(self, task_id: str) -> dict[str, Any] | None:
        _close_old_django_connections()
        try:
            # Not cached: Celery's cache is per thread and never forgets an expired result.
            meta: dict[str, Any] = self.app.backend.get_task_meta(task_id, cache=False)
        except Exception as exc:
            raise ResultBackendError(f"{self.backend}: {exc!r}") from exc
        finally:
            _close_old_django_connections()
        return _as_stored(meta, self.app)


def _as_stored(meta: dict[str, Any], app: Celery) -> dict[str, Any] | None:
    # Backends answer PENDING for an id they know nothing of; none stores PENDING itself.
    if meta.get("status", states.PENDING) == states.PENDING:
        return None
    stored = dict(meta)
    result = meta.get("result")
    if isinstance(result, Exception):
        # get_task_meta rebuilt the exception; the API reports what Celery stored for it.
        stored["result"] = app.backend.prepare_exception(result, "json")
    if isinstance(meta.get("date_done"), datetime):
        stored["date_done"] = meta["date_done"].isoformat()
    # django-celery-results names the task ``task_name`` (Celery's Redis meta: ``name``).
    stored.setdefault("name", meta.get("task_name"))
    return stored


def _close_old_django_connections() -> None:
    """Django keeps a database connection per thread, closed only around its own requests: do
    the same around each read, so CONN_MAX_AGE and CONN_HEALTH_CHECKS hold in the API's
    threads too (a connection a database restart broke is dropped, not reused)."""
    db, conf = sys.modules.get("django.db"), sys.modules.get("django.conf")
    if db is not None and conf is not None and conf.settings.configured:
        db.close_old_connections()
