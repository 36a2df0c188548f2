"""The built-in demo app: example tasks to try celeriac before bringing your own.

Run anything against it with ``--app celeriac.demo:app`` (the default).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from typing import Any

from celery import Task

from celeriac.app import create_app

app = create_app("celeriac.demo")

# Every task here is shared=False: importing this module (the `celeriac up` banner, a test) must
# not add the demo's tasks to an app of your own, whose API would then accept them.

MAX_SLEEP_SECONDS = 3600.0
MAX_MEMORY_MEGABYTES = 4096
# The smallest task: the first request `celeriac up` prints and the chart's NOTES.txt repeats
# (tests/chart/test_notes.py compares the two).
ADD_TASK = "celeriac.demo.add"


@app.task(name="celeriac.demo.sleep", shared=False)
def sleep(seconds: float = 1.0) -> float:
    """Wait ``seconds`` (a stand-in for a long-running job); returns the time slept."""
    seconds = min(max(float(seconds), 0.0), MAX_SLEEP_SECONDS)
    time.sleep(seconds)
    return seconds


@app.task(name=ADD_TASK, shared=False)
def add(x: float, y: float) -> float:
    """Add two numbers: the smallest task there is."""
    return x + y


@app.task(name="celeriac.demo.cpu", shared=False)
def cpu(rounds: int = 200_000) -> str:
    """CPU-bound: ``rounds`` chained SHA-256 hashes; returns the last digest."""
    digest = b"celeriac"
    for _ in range(max(int(rounds), 0)):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


@app.task(name="celeriac.demo.io", shared=False)
def io(calls: int = 10, latency_seconds: float = 0.05) -> int:
    """I/O-bound: ``calls`` waits of ``latency_seconds`` each, like sequential HTTP calls."""
    calls = max(int(calls), 0)
    for _ in range(calls):
        time.sleep(min(max(float(latency_seconds), 0.0), 60.0))
    return calls


@app.task(name="celeriac.demo.flaky", bind=True, max_retries=3, default_retry_delay=1, shared=False)
def flaky(self: Task[Any, Any], fail_times: int = 2) -> int:
    """Fails ``fail_times`` times, retrying each time, then succeeds; returns the attempt count.

    With ``fail_times`` above ``max_retries`` (3) it ends FAILURE, showing a final error.
    """
    attempt = self.request.retries
    if attempt < int(fail_times):
        raise self.retry(exc=RuntimeError(f"attempt {attempt + 1} failed on purpose"))
    return attempt + 1


@app.task(name="celeriac.demo.memory", shared=False)
def memory(megabytes: int = 64, seconds: float = 0.0) -> int:
    """Holds ``megabytes`` (at most ``MAX_MEMORY_MEGABYTES``) for ``seconds``: above the worker
    container's memory limit the kernel's OOM killer ends the pool process running it."""
    size = min(max(int(megabytes), 0), MAX_MEMORY_MEGABYTES) * 1024 * 1024
    held = bytearray(size)  # zero-filled: every page written, so resident
    time.sleep(min(max(float(seconds), 0.0), 60.0))
    return len(held) // (1024 * 1024)


@app.task(name="celeriac.demo.crash", shared=False)
def crash() -> None:
    """Kills the process running it, as the OOM killer would: the delivery is lost, retried, and
    after ``CELERIAC_MAX_LOST_DELIVERIES`` (3) set aside among the dead letters, where
    ``GET /v1/dead-letters`` lists it and ``POST /v1/dead-letters/{id}/replay`` sends it again.
    """
    os.kill(os.getpid(), signal.SIGKILL)
