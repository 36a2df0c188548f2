"""Task metrics: recorded from Celery signals in every pool process, served by the main process.

prometheus-client's multiprocess mode: each process writes its counters to its own mmap file
in ``PROMETHEUS_MULTIPROC_DIR``; the main process sums every file on each scrape with a
``MultiProcessCollector`` on a registry of its own. Nothing is registered globally, and
prometheus-client is imported only after the directory is set, because it picks its value
class at import.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import signals
from celery.exceptions import TimeLimitExceeded

from celeriac.broker import PUBLISHED_AT_PROPERTY, parse_eta

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

logger = logging.getLogger(__name__)

PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Metric names as served; the tests, the chart's rules and dashboard read these. A counter's
# name ends in _total, which prometheus-client strips for the family and adds to the sample.
TASKS_SUCCEEDED = "celeriac_tasks_succeeded_total"
TASKS_FAILED = "celeriac_tasks_failed_total"
TASKS_RETRIED = "celeriac_tasks_retried_total"
TASKS_TIME_LIMIT_EXCEEDED = "celeriac_tasks_time_limit_exceeded_total"
TASK_RUNTIME = "celeriac_task_runtime_seconds"
TASK_QUEUE_WAIT = "celeriac_task_queue_wait_seconds"
# Hard time limits remembered per task id, to count each once (Celery reports it twice).
TIMED_OUT_REMEMBERED = 1000
# From a 5 ms no-op to an hour-long report.
RUNTIME_BUCKETS_SECONDS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)


def enable_multiprocess(directory: Path) -> None:
    """Empty ``directory`` of metric files and make every process started from here use it.

    Call before the Celery app is imported (it may import prometheus-client) and before the
    pool forks. Files left by an earlier run would add old counts under reused process ids.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[PROMETHEUS_DIR_ENV] = str(directory)
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        # prometheus-client was imported before the variable was set (by the app, say).
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class TaskMetrics:
    """One process's task counters and runtime histogram (unregistered: the files are read)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.succeeded = Counter(
            TASKS_SUCCEEDED, "Tasks that returned a result.", ["task"], registry=None
        )
        self.failed = Counter(
            TASKS_FAILED, "Tasks that ended in an error.", ["task"], registry=None
        )
        self.retried = Counter(TASKS_RETRIED, "Task retries scheduled.", ["task"], registry=None)
        self.time_limit_exceeded = Counter(
            TASKS_TIME_LIMIT_EXCEEDED,
            "Tasks stopped at their hard time limit (their pool process was killed and "
            "replaced); counted by the worker's main process.",
            ["task"],
            registry=None,
        )
        self.runtime = Histogram(
            TASK_RUNTIME,
            "Time a task ran in a pool process, whatever its outcome.",
            ["task"],
            buckets=RUNTIME_BUCKETS_SECONDS,
            registry=None,
        )
        self.queue_wait = Histogram(
            TASK_QUEUE_WAIT,
            "Time from publish to the start of the task (requeued tasks count from their first "
            "publish; ETA tasks from their ETA). Only tasks sent through celeriac's transport "
            "carry a publish time.",
            ["queue"],
            buckets=RUNTIME_BUCKETS_SECONDS,
            registry=None,
        )
        self.started: dict[str, float] = {}


class TaskSignalRecorder:
    """Connects to Celery's task signals and records into the current process's metrics.

    Connected once in the main process; pool processes inherit the connection through fork and
    get their own ``TaskMetrics`` (and files) on first use.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        # Publish times come from the producer's wall clock, so waits are measured on one too.
        self._wall_clock = wall_clock
        self._pid = -1
        self._metrics: TaskMetrics | None = None
        # Ids of the last tasks stopped at their hard time limit (see _on_failure).
        self._timed_out: OrderedDict[str, None] = OrderedDict()

    def metrics(self) -> TaskMetrics:
        if self._metrics is None or self._pid != os.getpid():
            self._metrics, self._pid = TaskMetrics(), os.getpid()
        return self._metrics

    def connect(self) -> None:
        # weak=False: the handlers are bound methods of this object, which nothing else holds.
        signals.task_prerun.connect(self._on_prerun, weak=False)
        signals.task_postrun.connect(self._on_postrun, weak=False)
        signals.task_success.connect(self._on_success, weak=False)
        signals.task_failure.connect(self._on_failure, weak=False)
        signals.task_retry.connect(self._on_retry, weak=False)
        signals.worker_process_shutdown.connect(self._on_process_shutdown, weak=False)

    def disconnect(self) -> None:
        signals.task_prerun.disconnect(self._on_prerun)
        signals.task_postrun.disconnect(self._on_postrun)
        signals.task_success.disconnect(self._on_success)
        signals.task_failure.disconnect(self._on_failure)
        signals.task_retry.disconnect(self._on_retry)
        signals.worker_process_shutdown.disconnect(self._on_process_shutdown)

    def _on_prerun(
        self, sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any
    ) -> None:
        if task_id is not None:
            self.metrics().started[task_id] = self._clock()
        wait = queue_wait(getattr(task or sender, "request", None), self._wall_clock())
        if wait is not None:
            queue, seconds = wait
            self.metrics().queue_wait.labels(queue).observe(seconds)

    def _on_postrun(self, sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        started = self.metrics().started.pop(task_id or "", None)
        if started is not None:
            self.metrics().runtime.labels(_name(sender)).observe(self._clock() - started)

    def _on_success(self, sender: Any = None, **_: Any) -> None:
        self.metrics().succeeded.labels(_name(sender)).inc()

    def _on_failure(
        self,
        sender: Any = None,
        task_id: str | None = None,
        exception: object = None,
        **_: Any,
    ) -> None:
        if isinstance(exception, TimeLimitExceeded):
            # Sent by the main process: the pool process that ran the task was killed and
            # records nothing. Celery 5.7 sends it twice for one hard timeout (from
            # Request.on_timeout and again from Request.on_failure): count each task once.
            if task_id in self._timed_out:
                return
            self._timed_out[task_id or ""] = None
            while len(self._timed_out) > TIMED_OUT_REMEMBERED:
                self._timed_out.popitem(last=False)
            self.metrics().time_limit_exceeded.labels(_name(sender)).inc()
        self.metrics().failed.labels(_name(sender)).inc()

    def _on_retry(self, sender: Any = None, **_: Any) -> None:
        self.metrics().retried.labels(_name(sender)).inc()

    def _on_process_shutdown(self, pid: int | None = None, **_: Any) -> None:
        # Counters of exited processes stay in their files (their counts still add up); only
        # live gauges are dropped. celeriac keeps none yet; this keeps a future one honest.
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]


def queue_wait(request: Any, now: float) -> tuple[str, float] | None:
    """(queue, seconds waited) of a task about to start; None without a publish time.

    An ETA task waits on purpose until its ETA, so its wait counts from then.
    """
    properties = getattr(request, "properties", None)
    published = properties.get(PUBLISHED_AT_PROPERTY) if isinstance(properties, dict) else None
    if not isinstance(published, int | float):
        return None
    eta = parse_eta(getattr(request, "eta", None))
    since = max(float(published), eta.timestamp()) if eta is not None else float(published)
    delivery = getattr(request, "delivery_info", None) or {}
    queue = str(delivery.get("routing_key") or "unknown")
    return queue, max(0.0, now - since)


def _name(task: Any) -> str:
    return str(getattr(task, "name", None) or "unknown")


def serve_metrics(host: str, port: int, directory: Path) -> WSGIServer:
    """Serve the sum of every process's metric files on ``host:port`` (a daemon thread)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    logger.info("task metrics on http://%s:%d/metrics", host, port)
    return server
