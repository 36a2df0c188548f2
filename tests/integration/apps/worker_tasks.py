"""Tasks for the worker integration tests; every execution is recorded in the broker's Redis.

Run by the worker subprocess as ``--app tests.integration.apps.worker_tasks:app``, so the app reads
the worker's environment (``CELERIAC_BROKER_URL``). Keys per task id:
``runs:<id>`` executions started, ``done:<id>`` executions finished, ``finished_at:<id>`` wall
clock of the last finish; ``started`` the set of ids started.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import redis
from celery import Task

from celeriac.app import create_app

# Every task is shared=False: a test that imports this module (for a task name) must not add
# these tasks to other apps finalized later in the same process, such as the demo app.
app = create_app("tests.worker")


def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["CELERIAC_BROKER_URL"])


@app.task(name="tests.record", bind=True, shared=False)
def record(
    self: Task[Any, Any], seconds: float = 0.0, first_run_seconds: float | None = None
) -> int:
    """Sleep ``seconds`` (``first_run_seconds`` on the first execution of this task id)."""
    client = _redis()
    task_id = self.request.id
    run = int(client.incr(f"runs:{task_id}"))
    client.sadd("started", task_id)
    time.sleep(first_run_seconds if run == 1 and first_run_seconds is not None else seconds)
    client.set(f"finished_at:{task_id}", repr(time.time()))
    client.incr(f"done:{task_id}")
    return run


@app.task(name="tests.fail", shared=False)
def fail() -> None:
    raise ValueError("failing on purpose")


@app.task(name="tests.retry_once", bind=True, max_retries=1, default_retry_delay=0, shared=False)
def retry_once(self: Task[Any, Any]) -> int:
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return int(self.request.retries)


@app.task(name="tests.pid", shared=False)
def pid() -> int:
    return os.getpid()


@app.task(name="tests.allocate", shared=False)
def allocate(megabytes: int) -> int:
    """Make the pool process's peak RSS grow by ``megabytes`` (filled, so really resident)."""
    block = b"x" * (megabytes * 1024 * 1024)
    assert len(block) == megabytes * 1024 * 1024
    return os.getpid()


@app.task(name="tests.no_result", bind=True, ignore_result=True, shared=False)
def no_result(self: Task[Any, Any]) -> str:
    """Records its run like ``tests.record``; stores no result (nor STARTED) in the backend."""
    client = _redis()
    client.incr(f"done:{self.request.id}")
    return "not stored"


@app.task(name="tests.log_run", bind=True, ignore_result=True, shared=False)
def log_run(self: Task[Any, Any], path: str, seconds: float = 0.0) -> None:
    """Append this task's id to ``path`` (a record of runs that does not depend on Redis) after
    sleeping ``seconds``."""
    time.sleep(seconds)
    _append_line(path, str(self.request.id))


def _append_line(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{text}\n".encode())  # one small O_APPEND write: whole lines from all
    finally:
        os.close(fd)


@app.task(name="tests.whoami", bind=True, ignore_result=True, shared=False)
def whoami(self: Task[Any, Any], seconds: float = 0.0) -> None:
    """Add the worker's node name to the set ``hosts`` (which workers consume), then sleep."""
    _redis().sadd("hosts", str(self.request.hostname))
    time.sleep(seconds)


@app.task(name="tests.sleep", shared=False)
def sleep(seconds: float) -> float:
    """Sleep ``seconds`` in small steps (so a soft time limit's exception lands promptly)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return seconds


@app.task(name="tests.kill_own_process", bind=True, ignore_result=True, shared=False)
def kill_own_process(self: Task[Any, Any], path: str) -> None:
    """Record the run in ``path``, then die as the OOM killer would kill the process."""
    _append_line(path, str(self.request.id))
    os.kill(os.getpid(), signal.SIGKILL)
