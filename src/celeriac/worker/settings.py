"""Worker settings, read once from ``CELERIAC_WORKER_*`` (and the shared ``CELERIAC_*``)."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celeriac.env import MAX_HOSTNAME_LENGTH, ConfigError, Env
from celeriac.settings import Settings
from celeriac.worker.limits import TaskLimits, parse_task_limits

DEFAULT_HEARTBEAT_FILE = Path("/tmp/celeriac/worker.heartbeat")
DEFAULT_READY_FILE = Path("/tmp/celeriac/worker.ready")
DEFAULT_METRICS_DIR = Path("/tmp/celeriac/metrics")
DEFAULT_METRICS_PORT = 9541
DEFAULT_METRICS_HOST = "0.0.0.0"
# Kubernetes' default terminationGracePeriodSeconds is 30: leave 5 s to requeue and exit.
DEFAULT_SHUTDOWN_TIMEOUT_SECONDS = 25.0
DEFAULT_POOL = "prefork"
# prefork: processes (CPU-bound work, memory isolation); threads: I/O-bound work in one process.
# Not solo: it runs tasks inside the event loop, which then stops touching the heartbeat (a long
# task fails liveness) and cannot drain on SIGTERM. eventlet/gevent need extra packages.
POOLS = ("prefork", "threads")
DEFAULT_CONCURRENCY_PER_CPU = 1.0
HEARTBEAT_INTERVAL_SECONDS = 1.0
DEFAULT_PROBE_MAX_AGE_SECONDS = 30.0
# A worker whose queues have waiting messages and who could take one, but has taken nothing for
# this long, is stalled (a silent consumer): its liveness probe fails. 0 switches the check off.
DEFAULT_STALL_SECONDS = 60.0
# Below this a busy Redis or a fetch's 1 s wait could pass for a stall.
MIN_STALL_SECONDS = 1.0
STALLED_SUFFIX = ".stalled"
# How often a worker writes its entry in the worker registry (celeriac.worker.registry); it
# counts as live for 3 intervals after each write. Below the minimum, refreshes would cost
# Redis more than they tell.
DEFAULT_REGISTRY_INTERVAL_SECONDS = 10.0
MIN_REGISTRY_INTERVAL_SECONDS = 0.1
# How long a task no worker's app knows keeps going back to its queue, counted from the first
# worker that did not know it, before it is set aside among the dead letters: longer than a
# rolling deploy that adds a task takes to bring up workers that know it. 0: at once.
DEFAULT_UNREGISTERED_TASK_SECONDS = 600.0
MAX_LABEL_LENGTH = 63
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def stalled_file(heartbeat_file: Path) -> Path:
    """The marker the worker keeps beside its heartbeat while stalled; the probe fails on it."""
    return heartbeat_file.with_name(heartbeat_file.name + STALLED_SUFFIX)


@dataclass(frozen=True)
class WorkerSettings:
    """What ``celeriac worker`` needs; ``common`` holds the broker, app and queue settings."""

    common: Settings = field(default_factory=Settings)
    # Pool sizing inputs; see celeriac.worker.sizing for how they combine.
    concurrency: int | None = None
    cpu_limit: int | None = None
    memory_limit_bytes: int | None = None
    concurrency_per_cpu: float = DEFAULT_CONCURRENCY_PER_CPU
    max_memory_per_child_kib: int | None = None
    pool: str = DEFAULT_POOL
    # Celery's node name (CELERIAC_WORKER_HOSTNAME, else default_node_name); None: Celery's.
    hostname: str | None = None
    shutdown_timeout_seconds: float = DEFAULT_SHUTDOWN_TIMEOUT_SECONDS
    heartbeat_file: Path = DEFAULT_HEARTBEAT_FILE
    ready_file: Path = DEFAULT_READY_FILE
    metrics_host: str = DEFAULT_METRICS_HOST
    metrics_port: int = DEFAULT_METRICS_PORT
    metrics_dir: Path = DEFAULT_METRICS_DIR
    # Celery features that cost start-up time or broker traffic; off unless asked for.
    mingle: bool = False
    gossip: bool = False
    event_heartbeats: bool = False
    # Celery's INFO lines for every task received, succeeded or retried (2+ lines per task);
    # off unless asked for (or the log level is DEBUG). Failures are logged either way.
    log_tasks: bool = False
    # Seconds without taking a message, while messages wait and the worker could take one,
    # after which liveness fails (celeriac.worker.stall); 0: never.
    stall_seconds: float = DEFAULT_STALL_SECONDS
    # Seconds between writes of the worker's entry in the worker registry, which readers
    # (celeriac inspect) count live workers from.
    registry_interval_seconds: float = DEFAULT_REGISTRY_INTERVAL_SECONDS
    # Seconds a task the app does not know goes back to its queue for a worker that knows it,
    # before it is dead-lettered (celeriac.worker.unregistered).
    unregistered_task_seconds: float = DEFAULT_UNREGISTERED_TASK_SECONDS
    # Per task name: time and rate limits applied to the app's tasks at start.
    task_limits: Mapping[str, TaskLimits] = field(default_factory=dict)
    # Keep the pod's pod-deletion-cost annotation at the tasks held (celeriac.worker.deletion_cost).
    deletion_cost: bool = False
    # The worker's pod, from the Downward API (metadata.name, metadata.namespace).
    pod_name: str | None = None
    pod_namespace: str | None = None

    @property
    def stalled_file(self) -> Path:
        return stalled_file(self.heartbeat_file)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        env = Env(environ)
        common = Settings.from_env(environ)
        cpu_limit = env.optional_number("WORKER_CPU_LIMIT", minimum=0.001)
        port = env.port("WORKER_METRICS_PORT", DEFAULT_METRICS_PORT, minimum=0)
        pod = _deletion_cost(env)
        return cls(
            common=common,
            concurrency=env.optional_integer("WORKER_CONCURRENCY", minimum=1),
            # The Downward API already rounds limits.cpu up with divisor 1; a fraction given by
            # hand is rounded up the same way.
            cpu_limit=None if cpu_limit is None else math.ceil(cpu_limit),
            memory_limit_bytes=env.optional_integer("WORKER_MEMORY_LIMIT_BYTES", minimum=1),
            concurrency_per_cpu=env.number(
                "WORKER_CONCURRENCY_PER_CPU", DEFAULT_CONCURRENCY_PER_CPU, minimum=0.01
            ),
            max_memory_per_child_kib=env.optional_integer(
                "WORKER_MAX_MEMORY_PER_CHILD_KB", minimum=0
            ),
            pool=env.choice("WORKER_POOL", DEFAULT_POOL, POOLS),
            hostname=_hostname(env) or default_node_name(pod["pod_name"]),
            shutdown_timeout_seconds=env.number(
                "WORKER_SHUTDOWN_TIMEOUT_SECONDS", DEFAULT_SHUTDOWN_TIMEOUT_SECONDS, minimum=0
            ),
            heartbeat_file=env.output_file("WORKER_HEARTBEAT_FILE", DEFAULT_HEARTBEAT_FILE),
            ready_file=env.output_file("WORKER_READY_FILE", DEFAULT_READY_FILE),
            metrics_host=env.host("WORKER_METRICS_HOST", DEFAULT_METRICS_HOST),
            metrics_port=port,
            metrics_dir=env.directory("WORKER_METRICS_DIR", DEFAULT_METRICS_DIR),
            mingle=env.boolean("WORKER_MINGLE", False),
            gossip=env.boolean("WORKER_GOSSIP", False),
            event_heartbeats=env.boolean("WORKER_EVENT_HEARTBEATS", False),
            log_tasks=env.boolean("WORKER_LOG_TASKS", False),
            stall_seconds=_stall_seconds(env),
            registry_interval_seconds=env.number(
                "WORKER_REGISTRY_INTERVAL_SECONDS",
                DEFAULT_REGISTRY_INTERVAL_SECONDS,
                minimum=MIN_REGISTRY_INTERVAL_SECONDS,
            ),
            unregistered_task_seconds=env.number(
                "WORKER_UNREGISTERED_TASK_SECONDS", DEFAULT_UNREGISTERED_TASK_SECONDS, minimum=0
            ),
            task_limits=parse_task_limits(
                env.raw("TASK_LIMITS"), common.visibility_timeout_seconds
            ),
            **pod,
        )


def _stall_seconds(env: Env) -> float:
    seconds = env.number("WORKER_STALL_SECONDS", DEFAULT_STALL_SECONDS, minimum=0)
    if 0 < seconds < MIN_STALL_SECONDS:
        raise ConfigError(
            f"CELERIAC_WORKER_STALL_SECONDS={seconds:g} must be 0 (off) or at least "
            f"{MIN_STALL_SECONDS:g}"
        )
    return seconds


def _deletion_cost(env: Env) -> dict[str, Any]:
    enabled = env.boolean("WORKER_DELETION_COST", False)
    name = _object_name(
        "POD_NAME", env.optional_string("POD_NAME"), MAX_HOSTNAME_LENGTH, "a pod name"
    )
    namespace = _object_name(
        "POD_NAMESPACE", env.optional_string("POD_NAMESPACE"), MAX_LABEL_LENGTH, "a namespace"
    )
    if enabled:
        for variable, value in (("POD_NAME", name), ("POD_NAMESPACE", namespace)):
            if value is None:
                raise ConfigError(
                    f"CELERIAC_WORKER_DELETION_COST=true needs CELERIAC_{variable}: set it from "
                    f"the Downward API (fieldRef metadata.{variable[4:].lower()})"
                )
        if importlib.util.find_spec("kubernetes") is None:
            raise ConfigError(
                "CELERIAC_WORKER_DELETION_COST=true needs the kubernetes client: "
                "pip install 'celeriac[kubernetes]' (the celeriac image has it)"
            )
    return {"deletion_cost": enabled, "pod_name": name, "pod_namespace": namespace}


def _object_name(variable: str, value: str | None, longest: int, what: str) -> str | None:
    """A Kubernetes object name: lower-case RFC 1123 (a DNS subdomain, or a label when 63)."""
    if value is None:
        return None
    label = longest == MAX_LABEL_LENGTH
    if len(value) > longest or not (_DNS_LABEL if label else _DNS_SUBDOMAIN).match(value):
        chars = "lower-case letters, digits and '-'" + ("" if label else " and '.'")
        raise ConfigError(
            f"CELERIAC_{variable}={value!r} is not {what} ({chars}, at most {longest} characters)"
        )
    return value


def default_node_name(pod_name: str | None) -> str:
    """Unique per worker without configuration: Celery's default, ``celery@<host>``, names two
    workers on one machine alike (``celeriac inspect`` and Celery's remote control then see one
    worker). In Kubernetes the pod's name is unique; elsewhere the process id makes it so."""
    if pod_name is not None:
        return f"celery@{pod_name}"
    return f"celery-{os.getpid()}@{socket.gethostname()}"


def _hostname(env: Env) -> str | None:
    # Celery's node name (it expands %h, %n, %d); whitespace would break `celery -d <name>`.
    name = env.optional_string("WORKER_HOSTNAME")
    if name is not None and any(char.isspace() for char in name):
        raise ConfigError(f"CELERIAC_WORKER_HOSTNAME={name!r} must contain no whitespace")
    return name
