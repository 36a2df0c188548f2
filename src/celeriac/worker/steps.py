"""Celery bootsteps that give the worker its probe files, its task limits, its SIGTERM drain, its
stall check, its entry in the worker registry and its pod-deletion-cost.

They receive the worker's ``WorkerSettings`` as the ``celeriac_settings`` keyword, which Celery
passes from ``app.Worker(...)`` to every worker and consumer step; without it they do nothing,
so an app that has them registered still runs under plain ``celery worker``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from celeriac import heartbeat
from celeriac.worker.deletion_cost import DeletionCostUpdater, PodAnnotations, held_tasks
from celeriac.worker.limits import apply_task_limits
from celeriac.worker.reconnect import BrokerBackoff
from celeriac.worker.registry import WorkerRegistry, registry_client
from celeriac.worker.settings import HEARTBEAT_INTERVAL_SECONDS, WorkerSettings
from celeriac.worker.shutdown import GracefulShutdown
from celeriac.worker.stall import StallWatcher, redis_client, worker_can_take

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
