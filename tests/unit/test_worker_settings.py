"""``WorkerSettings.from_env`` and the ``celeriac worker`` command's input errors."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from celeriac.cli import main
from celeriac.env import ConfigError
from celeriac.settings import DEFAULT_QUEUE
from celeriac.worker.settings import (
    DEFAULT_HEARTBEAT_FILE,
    DEFAULT_METRICS_DIR,
    DEFAULT_METRICS_HOST,
    DEFAULT_METRICS_PORT,
    DEFAULT_POOL,
    DEFAULT_READY_FILE,
    DEFAULT_REGISTRY_INTERVAL_SECONDS,
    DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
    DEFAULT_UNREGISTERED_TASK_SECONDS,
    WorkerSettings,
)
from tests.support import documented_default


def test_defaults() -> None:
    settings = WorkerSettings.from_env({})
    assert settings.concurrency is None
    assert settings.cpu_limit is None
    assert settings.pool == DEFAULT_POOL
    assert settings.shutdown_timeout_seconds == DEFAULT_SHUTDOWN_TIMEOUT_SECONDS
    assert settings.heartbeat_file == DEFAULT_HEARTBEAT_FILE
    assert settings.ready_file == DEFAULT_READY_FILE
    assert (settings.metrics_host, settings.metrics_port) == (
        DEFAULT_METRICS_HOST,
        DEFAULT_METRICS_PORT,
    )
    assert settings.metrics_dir == DEFAULT_METRICS_DIR
    assert (settings.mingle, settings.gossip, settings.event_heartbeats) == (False, False, False)
    assert settings.common.queues == (DEFAULT_QUEUE,)
    assert settings.registry_interval_seconds == DEFAULT_REGISTRY_INTERVAL_SECONDS
    assert settings.unregistered_task_seconds == DEFAULT_UNREGISTERED_TASK_SECONDS


@pytest.mark.parametrize(
    ("variable", "default"),
    [
        ("CELERIAC_WORKER_POOL", DEFAULT_POOL),
        ("CELERIAC_WORKER_SHUTDOWN_TIMEOUT_SECONDS", f"{DEFAULT_SHUTDOWN_TIMEOUT_SECONDS:g}"),
        ("CELERIAC_WORKER_HEARTBEAT_FILE", str(DEFAULT_HEARTBEAT_FILE)),
        ("CELERIAC_WORKER_READY_FILE", str(DEFAULT_READY_FILE)),
        ("CELERIAC_WORKER_METRICS_PORT", str(DEFAULT_METRICS_PORT)),
        ("CELERIAC_WORKER_METRICS_HOST", DEFAULT_METRICS_HOST),
        ("CELERIAC_WORKER_METRICS_DIR", str(DEFAULT_METRICS_DIR)),
        (
            "CELERIAC_WORKER_REGISTRY_INTERVAL_SECONDS",
            f"{DEFAULT_REGISTRY_INTERVAL_SECONDS:g}",
        ),
        (
            "CELERIAC_WORKER_UNREGISTERED_TASK_SECONDS",
            f"{DEFAULT_UNREGISTERED_TASK_SECONDS:g}",
        ),
    ],
)
def test_the_worker_readme_documents_the_defaults(variable: str, default: str) -> None:
    assert documented_default("worker", variable) == default


def test_the_default_drain_fits_kubernetes_default_grace_period() -> None:
    # Pinned on purpose: Kubernetes' default terminationGracePeriodSeconds is 30, and the worker
    # needs a few seconds after its drain to requeue what is left and exit.
    assert DEFAULT_SHUTDOWN_TIMEOUT_SECONDS <= 30 - 5


def test_every_variable() -> None:
    settings = WorkerSettings.from_env(
        {
            "CELERIAC_QUEUES": "a,b",
            "CELERIAC_WORKER_CONCURRENCY": "3",
            "CELERIAC_WORKER_CPU_LIMIT": "1.5",
            "CELERIAC_WORKER_MEMORY_LIMIT_BYTES": "1073741824",
            "CELERIAC_WORKER_CONCURRENCY_PER_CPU": "4",
            "CELERIAC_WORKER_MAX_MEMORY_PER_CHILD_KB": "0",
            "CELERIAC_WORKER_POOL": "Threads",
            "CELERIAC_WORKER_HOSTNAME": "w1@pod",
            "CELERIAC_WORKER_SHUTDOWN_TIMEOUT_SECONDS": "55",
            "CELERIAC_WORKER_HEARTBEAT_FILE": "/run/hb",
            "CELERIAC_WORKER_READY_FILE": "/run/ready",
            "CELERIAC_WORKER_METRICS_HOST": "127.0.0.1",
            "CELERIAC_WORKER_METRICS_PORT": "0",
            "CELERIAC_WORKER_METRICS_DIR": "/run/metrics",
            "CELERIAC_WORKER_MINGLE": "true",
            "CELERIAC_WORKER_GOSSIP": "yes",
            "CELERIAC_WORKER_EVENT_HEARTBEATS": "1",
            "CELERIAC_WORKER_REGISTRY_INTERVAL_SECONDS": "0.5",
            "CELERIAC_WORKER_UNREGISTERED_TASK_SECONDS": "0",
        }
    )
    assert settings.common.queues == ("a", "b")
    assert settings.concurrency == 3
    assert settings.cpu_limit == 2  # rounded up, like the Downward API
    assert settings.memory_limit_bytes == 1 << 30
    assert settings.concurrency_per_cpu == 4.0
    assert settings.max_memory_per_child_kib == 0
    assert settings.pool == "threads"
    assert settings.hostname == "w1@pod"
    assert settings.shutdown_timeout_seconds == 55.0
    assert settings.heartbeat_file == Path("/run/hb")
    assert settings.ready_file == Path("/run/ready")
    assert (settings.metrics_host, settings.metrics_port) == ("127.0.0.1", 0)
    assert settings.metrics_dir == Path("/run/metrics")
    assert (settings.mingle, settings.gossip, settings.event_heartbeats) == (True, True, True)
    assert settings.registry_interval_seconds == 0.5
    assert settings.unregistered_task_seconds == 0.0


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CELERIAC_WORKER_CONCURRENCY", "0", "must be at least 1"),
        ("CELERIAC_WORKER_CONCURRENCY", "two", "is not a whole number"),
        ("CELERIAC_WORKER_CPU_LIMIT", "0", "must be at least"),
        ("CELERIAC_WORKER_POOL", "gevent", "is not one of prefork, threads"),
        ("CELERIAC_WORKER_POOL", "solo", "is not one of prefork, threads"),
        ("CELERIAC_WORKER_METRICS_PORT", "70000", "is not a TCP port"),
        ("CELERIAC_WORKER_SHUTDOWN_TIMEOUT_SECONDS", "-1", "must be at least 0"),
        ("CELERIAC_WORKER_CONCURRENCY_PER_CPU", "0", "must be at least 0.01"),
        ("CELERIAC_WORKER_MAX_MEMORY_PER_CHILD_KB", "-5", "must be at least 0"),
        ("CELERIAC_WORKER_MINGLE", "maybe", "is not a boolean"),
        ("CELERIAC_WORKER_REGISTRY_INTERVAL_SECONDS", "0", "must be at least 0.1"),
        ("CELERIAC_WORKER_REGISTRY_INTERVAL_SECONDS", "soon", "is not a number"),
        ("CELERIAC_WORKER_UNREGISTERED_TASK_SECONDS", "-1", "must be at least 0"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        WorkerSettings.from_env({name: value})
    assert name in str(error.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "0"], "CELERIAC_WORKER_CONCURRENCY='0' must be at least 1"),
        (["--pool", "eventlet"], "CELERIAC_WORKER_POOL='eventlet' is not one of"),
        (["--queues", "bad queue"], "queue name 'bad queue' is invalid"),
        (["--loglevel", "LOUD"], "CELERIAC_LOG_LEVEL='LOUD' is not one of"),
        (["--shutdown-timeout", "soon"], "is not a number"),
        (["--no-such-option"], "No such option"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every case fails while reading settings, before anything starts.
    with pytest.raises(SystemExit) as exited:
        main(["worker", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.strip().count("\n") == 0 or "Usage:" in err


def test_every_worker_gets_a_unique_node_name_by_default() -> None:
    """Two workers on one machine must not share Celery's default ``celery@<host>``."""
    local = WorkerSettings.from_env({})
    assert local.hostname == f"celery-{os.getpid()}@{socket.gethostname()}"
    in_a_pod = WorkerSettings.from_env({"CELERIAC_POD_NAME": "celeriac-worker-default-7d9-x2"})
    assert in_a_pod.hostname == "celery@celeriac-worker-default-7d9-x2"
    chosen = WorkerSettings.from_env({"CELERIAC_WORKER_HOSTNAME": "w1@%h"})
    assert chosen.hostname == "w1@%h"
