"""Start a Celery worker with celeriac's sizing, probes, shutdown and metrics."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from celeriac import heartbeat
from celeriac.app import load_app
from celeriac.env import ConfigError
from celeriac.worker.consumer import ProbedConsumer
from celeriac.worker.deletion_cost import KubernetesPod
from celeriac.worker.metrics import TaskSignalRecorder, enable_multiprocess, serve_metrics
from celeriac.worker.pool import POOL_CLASSES
from celeriac.worker.settings import WorkerSettings
from celeriac.worker.sizing import Sizing, size_worker
from celeriac.worker.steps import (
    ApplyTaskLimits,
    DeletionCost,
    Drain,
    Heartbeat,
    Ready,
    Registry,
    StallCheck,
)

logger = logging.getLogger("celeriac.worker")

# kombu sweeps `unacked` for messages older than the visibility timeout at start and then
# every interval x throttle seconds (10 x 10 by default). celeriac sweeps every quarter of the
# visibility timeout, between 1 and 100 s, so a killed worker's tasks come back soon after the
# timeout rather than up to 100 s later. One ZRANGE per sweep per worker: cheap.
MIN_RESTORE_SWEEP_SECONDS = 1.0
MAX_RESTORE_SWEEP_SECONDS = 100.0
# Celery's loggers of per-task INFO lines: "Task ... received" (main process) and "Task ...
# succeeded in ...", "... retry: ..." (pool processes). Errors go through them too, at ERROR.
PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def restore_sweep_seconds(visibility_timeout_seconds: float) -> float:
    return min(
        MAX_RESTORE_SWEEP_SECONDS, max(MIN_RESTORE_SWEEP_SECONDS, visibility_timeout_seconds / 4)
    )


def run_worker(settings: WorkerSettings) -> int:
    """Run until shut down; returns the worker's exit code."""
    # A file left by an earlier run (same pod, restarted container) must never pass a probe.
    heartbeat.remove(settings.heartbeat_file)
    heartbeat.remove(settings.ready_file)
    heartbeat.remove(settings.stalled_file)
    if settings.metrics_port:
        # Before the app is imported: it may import prometheus-client, which decides at import.
        enable_multiprocess(settings.metrics_dir)
    sizing = size_worker(settings)
    app = load_app(settings.common.app, settings.common)
    configure_worker(app, settings, sizing)
    if settings.metrics_port:
        _start_metrics(settings)
    pod = deletion_cost_pod(settings)
    app.steps["worker"].update(
        {Heartbeat, StallCheck, Registry, Drain, ApplyTaskLimits, DeletionCost}
    )
    app.steps["consumer"].add(Ready)
    worker = app.Worker(**worker_options(settings, sizing), celeriac_pod=pod)
    # After app.Worker(): Celery has set up logging by now.
    if not settings.log_tasks and settings.common.log_level != "DEBUG":
        quiet_per_task_logs()
    logger.info("sizing: %s", sizing.describe())
    for warning in sizing.warnings:
        logger.warning("sizing: %s", warning)
    worker.start()
    code: int = worker.exitcode or 0
    return code


def check_worker(settings: WorkerSettings) -> str:
    """What ``run_worker`` would start, without starting it: one line for ``--check``."""
    sizing = size_worker(settings)
    app = load_app(settings.common.app, settings.common)
    tasks = sorted(name for name in app.tasks if not name.startswith("celery."))
    missing = sorted(set(settings.task_limits) - set(app.tasks))
    limits = (
        f", limits for {len(settings.task_limits)} tasks"
        + (f" (not tasks of the app: {', '.join(missing)})" if missing else "")
        if settings.task_limits
        else ""
    )
    cost = (
        f", pod-deletion-cost of pod {settings.pod_namespace}/{settings.pod_name}"
        if settings.deletion_cost
        else ""
    )
    return (
        f"celeriac: worker settings are valid: app {settings.common.app} "
        f"({len(tasks)} tasks: {', '.join(tasks) or 'none'}), "
        f"queues {','.join(settings.common.queues)}, {sizing.describe()}{limits}{cost}"
    )


# Outlasts a Sentinel failover's reconnect (README "Redis high availability"); a process that
# truly hangs at start is still killed, later than Celery's 4 s.
PROC_ALIVE_TIMEOUT_SECONDS = 60.0


def configure_worker(app: Celery, settings: WorkerSettings, sizing: Sizing) -> None:
    """Worker-only Celery settings on top of celeriac's shared configuration."""
    sweep = restore_sweep_seconds(settings.common.visibility_timeout_seconds)
    app.conf.broker_transport_options = {
        **(app.conf.broker_transport_options or {}),
        "unacked_restore_interval": sweep,
        "unacked_restore_throttle": 1,
    }
    # None disables it even when the app's own configuration set one.
    app.conf.worker_max_memory_per_child = sizing.max_memory_per_child_kib
    # Celery kills a new pool process whose UP message it has not read in time; while the
    # consumer reconnects the main loop reads nothing, so each process started meanwhile (those
    # replacing processes whose tasks were terminated on the connection loss) was SIGKILLed
    # once the broker was back. An app's own longer timeout stays.
    app.conf.worker_proc_alive_timeout = max(
        float(app.conf.worker_proc_alive_timeout or 0), PROC_ALIVE_TIMEOUT_SECONDS
    )


def worker_options(settings: WorkerSettings, sizing: Sizing) -> dict[str, Any]:
    """Keyword arguments for ``app.Worker``; ``celeriac_settings`` reaches celeriac's steps."""
    return {
        "hostname": settings.hostname,
        "pool_cls": POOL_CLASSES[settings.pool],
        "loglevel": settings.common.log_level,
        "concurrency": sizing.pool,
        "queues": list(settings.common.queues),
        "max_memory_per_child": sizing.max_memory_per_child_kib,
        # Mingle waits ~1 s for replies at start; gossip and event heartbeats cost broker
        # traffic. celeriac needs none of them (probes are files, metrics come from Redis).
        "without_mingle": not settings.mingle,
        "without_gossip": not settings.gossip,
        "without_heartbeat": not settings.event_heartbeats,
        "consumer_cls": ProbedConsumer,
        "celeriac_settings": settings,
    }


def deletion_cost_pod(settings: WorkerSettings) -> KubernetesPod | None:
    """The worker's own pod for the deletion cost (None when off); in-cluster credentials are
    read now, so a pod without a service-account token fails at start with one line."""
    if not settings.deletion_cost:
        return None
    assert settings.pod_namespace is not None
    assert settings.pod_name is not None
    try:
        return KubernetesPod(settings.pod_namespace, settings.pod_name)
    except Exception as exc:  # kubernetes.config.ConfigException: no token, no service host
        raise ConfigError(
            f"CELERIAC_WORKER_DELETION_COST=true: no in-cluster Kubernetes credentials ({exc}); "
            "mount the pod's service-account token (automountServiceAccountToken: true) or set "
            "it to false"
        ) from None


def quiet_per_task_logs() -> None:
    """Drop Celery's per-task INFO lines; warnings and errors (failures) still show.

    Before the pool forks and before the consumer starts: Celery decides once, when it builds
    a task's tracer and the consumer's strategies, whether INFO is on (then skips the line
    entirely, record and formatting included).
    """
    for name in PER_TASK_LOGGERS:
        per_task = logging.getLogger(name)
        per_task.setLevel(max(per_task.getEffectiveLevel(), logging.WARNING))


def _start_metrics(settings: WorkerSettings) -> None:
    TaskSignalRecorder().connect()
    try:
        server = serve_metrics(settings.metrics_host, settings.metrics_port, settings.metrics_dir)
    except OSError as exc:
        raise ConfigError(
            f"CELERIAC_WORKER_METRICS_PORT={settings.metrics_port}: cannot listen on "
            f"{settings.metrics_host}:{settings.metrics_port}: {exc.strerror}; "
            "choose a free port or 0 to disable"
        ) from None

    def close_inherited_socket(**_: Any) -> None:
        # Pool processes are forked from the main one and would keep its listening socket
        # open (holding the port after the main process died); only the main one serves.
        server.socket.close()

    signals.worker_process_init.connect(close_inherited_socket, weak=False)
