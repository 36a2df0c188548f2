"""Celery bootsteps that give the worker its probe files, its SIGTERM drain, its stall check, its
entry in the worker registry and its pod-deletion-cost.

They receive the worker's ``WorkerSettings`` as the ``celeriac_settings`` keyword, which Celery
passes from ``app.Worker(...)`` to every worker and consumer step; without it they do nothing,
so an app that has them registered still runs under plain ``celery worker``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from celery.worker.consumer import Consumer
from celery.worker.state import maybe_shutdown
from kombu.utils.objects import cached_property

from celeriac import heartbeat
from celeriac.worker.deletion_cost import DeletionCostUpdater, PodAnnotations, held_tasks
from celeriac.worker.limits import apply_task_limits
from celeriac.worker.reconnect import BrokerBackoff
from celeriac.worker.registry import WorkerRegistry, registry_client
from celeriac.worker.settings import HEARTBEAT_INTERVAL_SECONDS, WorkerSettings
from celeriac.worker.shutdown import GracefulShutdown
from celeriac.worker.stall import StallWatcher, redis_client, worker_can_take
from celeriac.worker.unregistered import UnregisteredTasks

logger = logging.getLogger(__name__)


class Heartbeat(bootsteps.StartStopStep):
    """Touches the heartbeat file every second from the worker's timer.

    With the prefork pool the timer is the event loop's, so the file goes stale when the main
    process's loop freezes, and ``celeriac probe worker`` (liveness) fails without ever asking
    the broker anything.
    """

    label = "celeriac heartbeat"
    requires = ("celery.worker.components:Timer",)

    def __init__(self, w: Any, celeriac_settings: WorkerSettings | None = None, **kwargs: Any):
        super().__init__(w, **kwargs)
        self.settings = celeriac_settings
        self._entry: Any = None

    def include_if(self, w: Any) -> bool:
        return self.settings is not None

    def start(self, w: Any) -> None:
        assert self.settings is not None
        path = self.settings.heartbeat_file
        heartbeat.touch(path)
        self._entry = w.timer.call_repeatedly(HEARTBEAT_INTERVAL_SECONDS, heartbeat.touch, (path,))

    def stop(self, w: Any) -> None:
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None


class ApplyTaskLimits(bootsteps.Step):
    """Sets ``CELERIAC_TASK_LIMITS`` on the app's tasks (``celeriac.worker.limits``).

    Made after Celery imported the app's task modules (``imports``, ``include``) and before the
    consumer, which reads each task's rate limit when it is made; the pool and each request
    read the time limits from the task.
    """

    label = "celeriac task limits"

    def __init__(self, w: Any, celeriac_settings: WorkerSettings | None = None, **kwargs: Any):
        super().__init__(w, **kwargs)
        self.settings = celeriac_settings

    def include_if(self, w: Any) -> bool:
        return self.settings is not None and bool(self.settings.task_limits)

    def create(self, w: Any) -> None:
        assert self.settings is not None
        for name, limits in self.settings.task_limits.items():
            logger.info("task limits: %s %s", name, limits.describe())
        for name in apply_task_limits(w.app.tasks, self.settings.task_limits):
            logger.warning(
                "CELERIAC_TASK_LIMITS: the app has no task %r: its limits do nothing", name
            )


class StallCheck(bootsteps.StartStopStep):
    """Runs the silent-consumer check (``celeriac.worker.stall``) beside the heartbeat.

    Off with ``CELERIAC_WORKER_STALL_SECONDS=0``. The consumer records each message it takes
    on the worker's ``celeriac_stall_clock`` (``ProbedConsumer``).
    """

    label = "celeriac stall check"
    requires = ("celery.worker.components:Timer",)

    def __init__(self, w: Any, celeriac_settings: WorkerSettings | None = None, **kwargs: Any):
        super().__init__(w, **kwargs)
        self.settings = celeriac_settings
        self.watcher: StallWatcher | None = None

    def include_if(self, w: Any) -> bool:
        return self.settings is not None and self.settings.stall_seconds > 0

    def create(self, w: Any) -> None:
        assert self.settings is not None
        self.watcher = StallWatcher(
            self.settings,
            can_take=lambda: worker_can_take(w, held_tasks),
            client=redis_client(self.settings),
        )
        w.celeriac_stall_clock = self.watcher.clock

    def start(self, w: Any) -> None:
        if self.watcher is not None:
            self.watcher.start()

    def stop(self, w: Any) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None


class Registry(bootsteps.StartStopStep):
    """Keeps the worker's entry in the worker registry (``celeriac.worker.registry``): its node
    name, queues and pool size, refreshed every ``CELERIAC_WORKER_REGISTRY_INTERVAL_SECONDS``
    from a thread of its own, removed when the worker stops (a warm or a cold shutdown)."""

    label = "celeriac worker registry"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, w: Any, celeriac_settings: WorkerSettings | None = None, **kwargs: Any):
        super().__init__(w, **kwargs)
        self.settings = celeriac_settings
        self.registry: WorkerRegistry | None = None

    def include_if(self, w: Any) -> bool:
        return self.settings is not None

    def start(self, w: Any) -> None:
        assert self.settings is not None
        self.registry = WorkerRegistry(
            registry_client(self.settings.common),
            name=w.hostname,
            queues=self.settings.common.queues,
            pool=int(w.concurrency),
            interval=self.settings.registry_interval_seconds,
        )
        self.registry.start()

    def stop(self, w: Any) -> None:
        if self.registry is not None:
            self.registry.stop()
            self.registry = None

    def terminate(self, w: Any) -> None:
        self.stop(w)


class DeletionCost(bootsteps.StartStopStep):
    """Keeps the pod's pod-deletion-cost at the tasks the worker holds
    (``celeriac.worker.deletion_cost``), from a thread of its own.

    On with ``CELERIAC_WORKER_DELETION_COST=true``: ``run_worker`` then passes the worker's pod
    (a ``KubernetesPod``) as ``celeriac_pod``.
    """

    label = "celeriac deletion cost"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, w: Any, celeriac_pod: PodAnnotations | None = None, **kwargs: Any):
        super().__init__(w, **kwargs)
        self.pod = celeriac_pod
        self.updater: DeletionCostUpdater | None = None

    def include_if(self, w: Any) -> bool:
        return self.pod is not None

    def start(self, w: Any) -> None:
        assert self.pod is not None
        self.updater = DeletionCostUpdater(held_tasks, self.pod, describe=_describe(self.pod))
        self.updater.start()

    def stop(self, w: Any) -> None:
        if self.updater is not None:
            self.updater.stop()
            self.updater = None


def _describe(pod: Any) -> str:
    namespace, name = getattr(pod, "namespace", None), getattr(pod, "name", None)
    return f"pod {namespace}/{name}" if name else "the pod"


class Drain(bootsteps.StartStopStep):
    """Installs celeriac's SIGTERM handling (``celeriac.worker.shutdown``).

    Started after Celery installed its own signal handlers, so this one wins.
    """

    label = "celeriac drain"
    requires = ("celery.worker.components:Timer", "celery.worker.components:Pool")

    def __init__(self, w: Any, celeriac_settings: WorkerSettings | None = None, **kwargs: Any):
        super().__init__(w, **kwargs)
        self.settings = celeriac_settings
        self.shutdown: GracefulShutdown | None = None

    def include_if(self, w: Any) -> bool:
        return self.settings is not None

    def start(self, w: Any) -> None:
        assert self.settings is not None
        ready_file = self.settings.ready_file
        self.shutdown = GracefulShutdown(
            w, self.settings.shutdown_timeout_seconds, on_drain=lambda: heartbeat.remove(ready_file)
        )
        self.shutdown.install()
        # A draining worker takes nothing on purpose: the stall check asks (``stall``).
        w.celeriac_shutdown = self.shutdown

    def stop(self, w: Any) -> None:
        if self.shutdown is not None:
            self.shutdown.uninstall()


class Ready(bootsteps.StartStopStep):
    """Keeps the ready file while the consumer is connected and consuming its queues.

    Started after the task consumer exists, again after every reconnect; removed when the
    consumer stops (connection lost, shutdown), so ``celeriac probe worker --ready`` says
    whether this worker takes tasks now.
    """

    label = "celeriac ready"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, celeriac_settings: WorkerSettings | None = None, **kwargs: Any):
        super().__init__(c, **kwargs)
        self.settings = celeriac_settings

    def include_if(self, c: Any) -> bool:
        return self.settings is not None

    def start(self, c: Any) -> None:
        assert self.settings is not None
        heartbeat.touch(self.settings.ready_file)
        backoff = getattr(c, "celeriac_backoff", None)
        if isinstance(backoff, BrokerBackoff):
            # Consuming again: connected is not enough (a write at start-up may still fail).
            backoff.connected()

    def stop(self, c: Any) -> None:
        assert self.settings is not None
        heartbeat.remove(self.settings.ready_file)

    def shutdown(self, c: Any) -> None:
        self.stop(c)


class ProbedConsumer(Consumer):
    """Celery's consumer, waiting for the broker with celeriac's backoff (``reconnect``) and
    touching the heartbeat meanwhile, recording when it takes a message (for the stall check),
    and never discarding a message it cannot run (``celeriac.worker.unregistered``; Celery's
    handlers reject it for good).

    While (re)connecting, the consumer sits in kombu's retry loop and no timer runs; the
    backoff calls back every second, and the heartbeat rides on that callback. A Redis outage
    thus leaves the liveness probe passing (restarting the pod would not bring Redis back),
    while a frozen process still fails it.
    """

    @cached_property
    def celeriac_backoff(self) -> BrokerBackoff:
        settings = self._celeriac_settings()

        def tick() -> None:
            if settings is not None:
                heartbeat.touch(settings.heartbeat_file)
            maybe_shutdown()

        return BrokerBackoff(tick)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        handler: Callable[[Any], Any] = super().create_task_handler(*args, **kwargs)
        stall_clock = getattr(getattr(self, "controller", None), "celeriac_stall_clock", None)
        if stall_clock is None:
            return handler
        taken = stall_clock.message_taken

        def on_task_received(message: Any) -> Any:
            taken()
            return handler(message)

        return on_task_received

    def ensure_connected(self, conn: Any) -> Any:
        _retry_with_backoff(conn, self.celeriac_backoff)
        return super().ensure_connected(conn)

    def on_connection_error_before_connected(self, exc: Exception) -> None:
        # Celery logs an ERROR and restarts at once (a spin while the broker refuses writes).
        self.celeriac_backoff.failed(exc)

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        # Lost from now (Celery's clean-up may take a while: it stores terminated tasks' state).
        self.celeriac_backoff.failed(exc, announced=True)
        super().on_connection_error_after_connected(exc)  # its one WARNING, and the clean-up

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        handler = self._unregistered()
        if handler is None or not handler.unregistered(message, _task_name(message)):
            super().on_unknown_task(body, message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        if not self._set_aside(message, "not a task message: it names no task"):
            super().on_unknown_message(body, message)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        if not self._set_aside(message, f"invalid task message: {exc}"):
            super().on_invalid_task(body, message, exc)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        # Also the remote-control consumer's handler: its messages are never held, so they
        # still go Celery's way.
        if not self._set_aside(message, f"undecodable message: {exc!r}"):
            super().on_decode_error(message, exc)

    def on_close(self) -> None:
        handler = self._unregistered()
        if handler is not None:
            handler.release()
        super().on_close()

    def _set_aside(self, message: Any, reason: str) -> bool:
        handler = self._unregistered()
        return handler is not None and handler.unreadable(message, reason)

    def _unregistered(self) -> UnregisteredTasks | None:
        handler: UnregisteredTasks | None = getattr(self, "_celeriac_unregistered", None)
        settings = self._celeriac_settings()
        if handler is None and settings is not None:
            handler = UnregisteredTasks(
                self.timer, str(self.hostname), settings.unregistered_task_seconds
            )
            self._celeriac_unregistered = handler
        return handler

    def _celeriac_settings(self) -> WorkerSettings | None:
        options = getattr(getattr(self, "controller", None), "options", None) or {}
        settings = options.get("celeriac_settings")
        return settings if isinstance(settings, WorkerSettings) else None


def _task_name(message: Any) -> str:
    """The task a message names (protocol 2 in its headers, protocol 1 in its body)."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    name = headers.get("task")
    if name is None:
        try:
            name = message.payload.get("task")
        except Exception:  # an undecodable protocol-1 body: the name is unknowable
            name = None
    return str(name)


def _retry_with_backoff(conn: Any, backoff: BrokerBackoff) -> None:
    """Make Celery's ``conn.ensure_connection(errback, max_retries, callback=...)`` wait with
    ``backoff`` between attempts, instead of kombu's intervals and Celery's ERROR per attempt."""
    ensure_connection: Callable[..., Any] = conn.ensure_connection

    def ensure_with_backoff(errback: Any = None, max_retries: int | None = None, **kw: Any) -> Any:
        def on_error(exc: BaseException, interval: float) -> None:
            backoff.failed(exc)

        # kombu sleeps the interval after the errback: none, the backoff waited already.
        kw.update(interval_start=0, interval_step=0, interval_max=0)
        return ensure_connection(on_error, max_retries, **kw)

    conn.ensure_connection = ensure_with_backoff
