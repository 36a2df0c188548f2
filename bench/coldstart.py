"""Worker cold start: process start until ready, and until a waiting task is done.

Method: a private redis-server; before each start one ``celeriac.demo.add`` task is queued
with a known id. Timed from just before the process is spawned: (1) until ready: for
``celeriac worker``, until ``CELERIAC_WORKER_READY_FILE`` exists; for stock ``celery -A
bench.stock_app worker -c 2 -l INFO`` (mingle, gossip and heartbeat on, Celery's defaults),
until its log says ``ready.``; (2) until the queued task's result is SUCCESS in the result
backend (the stock app gets a Redis backend for this). Both pools are prefork with 2 processes.
Each worker is stopped with SIGTERM after a round; rounds alternate; medians are reported.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench.support import Process, Redis, Run
from celeriac.app import create_app
from celeriac.settings import Settings
from celeriac.testing import celeriac_command, free_port

NAME = "coldstart"
TITLE = "Worker cold start"
ROUNDS = 5
TIMEOUT_SECONDS = 30.0


def task_done(client: redis.Redis, task_id: str) -> Callable[[], bool]:
    def done() -> bool:
        raw = client.get(f"celery-task-meta-{task_id}")
        return raw is not None and json.loads(raw).get("status") == "SUCCESS"

    return done


def start_celeriac(server: Redis, work: Path, queue: str) -> tuple[Process, Callable[[], bool]]:
    ready_file = work / "celeriac.ready"
    ready_file.unlink(missing_ok=True)
    env = {
        "CELERIAC_BROKER_URL": server.url,
        "CELERIAC_QUEUES": queue,
        "CELERIAC_WORKER_CONCURRENCY": "2",
        "CELERIAC_WORKER_HEARTBEAT_FILE": str(work / "celeriac.heartbeat"),
        "CELERIAC_WORKER_READY_FILE": str(ready_file),
        "CELERIAC_WORKER_METRICS_PORT": str(free_port()),
        "CELERIAC_WORKER_METRICS_DIR": str(work / "metrics"),
    }
    process = Process(celeriac_command("worker"), env, work / "celeriac.log")
    return process, ready_file.exists


def start_stock(server: Redis, work: Path, queue: str) -> tuple[Process, Callable[[], bool]]:
    env = {"BENCH_BROKER_URL": server.url, "BENCH_RESULT_BACKEND": server.url}
    args = [sys.executable, "-m", "celery", "-A", "bench.stock_app", "worker", "-c", "2"]
    args += ["-l", "INFO", "-Q", queue]
    process = Process(args, env, work / "stock.log")
    return process, lambda: " ready." in process.output()


def one_round(
    server: Redis,
    producer: Celery,
    work: Path,
    variant: str,
) -> dict[str, float | None]:
    queue = f"coldstart_{variant}"
    task_id = str(uuid.uuid4())
    producer.send_task("celeriac.demo.add", args=[1, 2], queue=queue, task_id=task_id)
    start = start_celeriac if variant == "celeriac" else start_stock
    process, ready = start(server, work, queue)
    done = task_done(server.client, task_id)
    ready_at: float | None = None
    done_at: float | None = None
    try:
        deadline = time.perf_counter() + TIMEOUT_SECONDS
        while time.perf_counter() < deadline and (ready_at is None or done_at is None):
            process.check_alive()
            now = time.perf_counter()
            if ready_at is None and ready():
                ready_at = now - process.started
            if done_at is None and done():
                done_at = now - process.started
            time.sleep(0.005)
    finally:
        process.stop()
    if done_at is None:
        raise RuntimeError(f"{variant}: task not done in {TIMEOUT_SECONDS}s:\n{process.output()}")
    return {"ready": ready_at, "first_task": done_at}


def main() -> dict[str, Any]:
    run = Run(NAME, TITLE, __doc__)
    work = Path(tempfile.mkdtemp(prefix="bench-coldstart-"))
    variants = ("celeriac", "stock")
    timings: dict[str, list[dict[str, float | None]]] = {v: [] for v in variants}
    with Redis() as server:
        producer = create_app("bench-coldstart", Settings(broker_url=server.url))
        try:
            for round_index in range(ROUNDS):
                order = variants if round_index % 2 == 0 else variants[::-1]
                for variant in order:
                    timings[variant].append(one_round(server, producer, work, variant))
        finally:
            producer.close()

    def median(variant: str, key: str) -> float | None:
        values = [value for t in timings[variant] if (value := t[key]) is not None]
        return statistics.median(values) if len(values) == ROUNDS else None

    def seconds(value: float | None) -> str:
        return "not reached" if value is None else f"{value:.2f}"

    table = [
        {
            "worker": variant,
            "median until ready (s)": seconds(median(variant, "ready")),
            "median until first task done (s)": seconds(median(variant, "first_task")),
            "rounds ready (s)": ", ".join(seconds(t["ready"]) for t in timings[variant]),
            "rounds first task (s)": ", ".join(seconds(t["first_task"]) for t in timings[variant]),
        }
        for variant in variants
    ]
    celeriac_ready = median("celeriac", "ready")
    notes = [
        "Ready for celeriac = the ready file its worker writes (what the start-up and readiness "
        "probes read); for stock Celery = the 'ready.' log line (there is no file to probe).",
        "Includes the Python interpreter start and imports of each CLI (celeriac loads its app "
        "through celeriac.app.load_app; stock through celery -A).",
    ]
    if celeriac_ready is None:
        notes.append(
            "The celeriac worker did not write its ready file in every round: compare the "
            "first-task column instead."
        )
    results = {"table": table, "raw": timings}
    run.save(
        {"rounds": ROUNDS, "pool": "prefork, 2 processes", "task": "celeriac.demo.add"},
        {"table": table},
        notes,
    )
    return results


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
