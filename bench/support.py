"""What the benchmarks share: a private redis-server, child processes, statistics, results.

The redis-server, child-process and wait helpers are celeriac's (``celeriac.testing``), the
ones the test suite uses; bench/ never imports tests/.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import BENCH_DIR, RESULTS_DIR, render
from celeriac.local.redis_server import RedisNotFound, find_redis_server
from celeriac.testing import Child, RedisServer

REPO_ROOT = BENCH_DIR.parent


class Redis:
    """A throwaway redis-server on a free port (no persistence), with one client for db 0."""

    def __init__(self) -> None:
        try:
            self.server = RedisServer()
        except RedisNotFound as exc:
            raise SystemExit(str(exc)) from None
        self.server.start()
        self.url = self.server.url()
        self.client = self.server.client()

    def close(self) -> None:
        self.client.close()
        self.server.close()

    def __enter__(self) -> Redis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Process(Child):
    """A benchmark child, run from the repository root (for ``-m bench.stock_app``)."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        super().__init__(args, env, log, cwd=REPO_ROOT)

    def stop(self, timeout: float = 20) -> None:
        super().stop(timeout)


def percentiles(values_seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean in milliseconds (nearest-rank percentiles)."""
    ordered = sorted(values_seconds)

    def rank(p: float) -> float:
        index = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
        return ordered[index] * 1000

    return {
        "n": len(ordered),
        "p50_ms": rank(50),
        "p95_ms": rank(95),
        "p99_ms": rank(99),
        "max_ms": ordered[-1] * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
    }


def machine() -> dict[str, Any]:
    """Where the numbers came from, including how busy the machine was."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        redis_version = subprocess.run(
            [find_redis_server(), "--version"], capture_output=True, text=True, check=False
        ).stdout.split()
    except RedisNotFound:
        redis_version = []
    import celery
    import kombu

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": getattr(kombu, "__version__", "unknown"),
        "redis_server": next((w[2:] for w in redis_version if w.startswith("v=")), "unknown"),
        "kernel": platform.release(),
    }


class Run:
    """One benchmark run: when and on what it started; ``save`` records what it measured.

    ``save`` writes ``bench/results/<name>.json`` (with the run's duration and the load average
    at its end) and renders ``bench/RESULTS.md`` again.
    """

    def __init__(self, name: str, title: str, method: str | None) -> None:
        self.name = name
        self.title = title
        self.method = method or ""
        self.started = time.monotonic()
        self.environment = machine()

    def save(
        self, parameters: Mapping[str, Any], results: Mapping[str, Any], notes: Sequence[str]
    ) -> Path:
        RESULTS_DIR.mkdir(exist_ok=True)
        path = RESULTS_DIR / f"{self.name}.json"
        load_at_end = [round(x, 2) for x in os.getloadavg()]
        document = {
            "name": self.name,
            "title": self.title,
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "duration_seconds": round(time.monotonic() - self.started, 1),
            "machine": {**self.environment, "load_average_at_end": load_at_end},
            "method": self.method,
            "parameters": dict(parameters),
            "results": dict(results),
            "notes": list(notes),
        }
        path.write_text(json.dumps(document, indent=2) + "\n")
        render()
        return path
