"""A worker started by a test: the settings every such worker needs, in one place."""

from __future__ import annotations

from pathlib import Path


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
