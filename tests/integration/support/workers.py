"""A worker started by a test: the settings every such worker needs, in one place."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from celeriac.testing import Child, celeriac_command, wait_until


def worker_env(
    broker_url: str, directory: Path, name: str = "worker", **settings: str
) -> dict[str, str]:
    """Probe and metric files under ``directory`` (named after ``name``), task metrics off, a pool
    of two; each ``settings`` entry sets CELERIAC_<KEY>, e.g. ``queues="a,b"``."""
    env = {
        "CELERIAC_BROKER_URL": broker_url,
        "CELERIAC_WORKER_CONCURRENCY": "2",
        "CELERIAC_WORKER_HEARTBEAT_FILE": str(directory / f"{name}.heartbeat"),
        "CELERIAC_WORKER_READY_FILE": str(directory / f"{name}.ready"),
        "CELERIAC_WORKER_METRICS_DIR": str(directory / f"{name}.metrics"),
        "CELERIAC_WORKER_METRICS_PORT": "0",
    }
    return env | {f"CELERIAC_{key.upper()}": value for key, value in settings.items()}


def spawn_ready_worker(spawn: Callable[..., Child], env: dict[str, str], name: str) -> Child:
    """``celeriac worker`` with ``env`` (``worker_env``'s), once its ready file exists; fails
    with its output if it exits first."""
    worker = spawn(celeriac_command("worker"), env=env, name=name)
    wait_until(
        lambda: Path(env["CELERIAC_WORKER_READY_FILE"]).exists() or worker.check_alive(),
        timeout=60,
        message=f"worker {name} ready",
    )
    return worker


def runs(path: Path) -> list[str]:
    """The task ids a test task appended to ``path``, in order (none before the first run)."""
    return path.read_text().split() if path.exists() else []
