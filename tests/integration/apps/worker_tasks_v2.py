"""The next release of ``worker_tasks``: the same app and tasks plus one task more.

A worker started with ``--app tests.integration.apps.worker_tasks_v2:app`` knows ``NEW_TASK``; one
with ``tests.integration.apps.worker_tasks:app`` (the release before) does not.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from tests.integration.apps.worker_tasks import _append_line, app

__all__ = ["NEW_TASK", "app"]

NEW_TASK = "tests.v2.log_run"


@app.task(name=NEW_TASK, bind=True, ignore_result=True, shared=False)
def new_log_run(self: Task[Any, Any], path: str) -> None:
    """Append this task's id to ``path``, as ``tests.log_run`` does."""
    _append_line(path, str(self.request.id))
