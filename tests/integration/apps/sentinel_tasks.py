"""Tasks for the Sentinel failover test: each run appends a line to a file, not to Redis.

Run by the worker subprocess as ``--app tests.integration.apps.sentinel_tasks:app``. The record of
runs must not depend on the Redis being failed over, so it is a file: one ``O_APPEND`` write
per run, ``<id> <unix time>``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Task

from celeriac.app import create_app

app = create_app("tests.sentinel")


@app.task(name="ha.run", bind=True, ignore_result=True)
def run(self: Task[Any, Any], path: str, seconds: float = 0.0) -> None:
    """Sleep ``seconds``, then append ``<task id> <time>`` to ``path``."""
    time.sleep(seconds)
    _append(path, self.request.id)


@app.task(name="ha.add", bind=True)
def add(self: Task[Any, Any], x: int, y: int) -> int:
    """A task whose result goes to the result backend (through Sentinel too)."""
    return x + y


@app.task(name="ha.slow_add", bind=True)
def slow_add(self: Task[Any, Any], x: int, y: int, seconds: float, path: str) -> int:
    """Append ``<id> <time>`` to ``path`` + ".started", sleep ``seconds``, append to ``path`` +
    ".finished", return ``x + y`` (stored by the result backend)."""
    _append(f"{path}.started", self.request.id)
    time.sleep(seconds)
    _append(f"{path}.finished", self.request.id)
    return x + y


def _append(path: str, task_id: str | None) -> None:
    line = f"{task_id} {time.time():.3f}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
