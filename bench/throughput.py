"""Tasks per second drained by one worker (pool 2, no-op tasks): celeriac vs stock Celery.

Method: a private redis-server and three workers started once and left idle between rounds,
each on its own queue: ``celeriac worker`` (celeriac's defaults: acks late, prefetch multiplier
1, result backend with STARTED state, json), ``celery -A bench.stock_app worker -c 2`` (stock
defaults: early acks, prefetch multiplier 4, no result backend) and the same stock app with a
Redis result backend, to separate the cost of storing results. Each round pushes N real
``celeriac.demo.add`` messages onto a worker's queue in one atomic LPUSH (one message published
by that worker's own app with ``send_task``, copied with fresh task ids and delivery tags as
kombu would make them), then polls Redis every 5 ms until the queue and the ``unacked`` hash
are empty. Rate = N / elapsed. Rounds alternate between workers (so load from other jobs on the
machine hits all alike); the median over the rounds is reported.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery

from bench.support import Process, Redis, Run
from celeriac.app import create_app
from celeriac.keys import UNACKED_KEY
from celeriac.settings import Settings
from celeriac.testing import celeriac_command, free_port, wait_until

NAME = "throughput"
TITLE = "Worker throughput: celeriac defaults vs stock Celery"
TASKS_PER_ROUND = 1500
ROUNDS = 5
WARMUP_TASKS = 200
POLL_SECONDS = 0.005
VARIANTS = ("celeriac", "stock", "stock_with_results")


def template(app: Celery, server: Redis, queue: str) -> dict[str, Any]:
    """One real message as the app publishes it, taken back off the queue."""
    app.send_task("celeriac.demo.add", args=[1, 2], queue=queue)
    raw = server.client.rpop(queue)
    assert isinstance(raw, bytes), f"no message published to {queue}"
    message: dict[str, Any] = json.loads(raw)
    return message


def copies(message: dict[str, Any], count: int) -> list[str]:
    out = []
    for _ in range(count):
        task_id = str(uuid.uuid4())
        headers = {**message["headers"], "id": task_id, "root_id": task_id}
        properties = {
            **message["properties"],
            "correlation_id": task_id,
            "delivery_tag": str(uuid.uuid4()),
        }
        out.append(json.dumps({**message, "headers": headers, "properties": properties}))
    return out


def drain(server: Redis, queue: str, messages: list[str], timeout: float = 120) -> float:
    """Push ``messages`` at once; seconds until the queue and unacked are both empty."""
    started = time.perf_counter()
    server.client.lpush(queue, *messages)

    def empty() -> bool:
        with server.client.pipeline(transaction=False) as pipe:
            pipe.llen(queue)
            pipe.hlen(UNACKED_KEY)
            waiting, unacked = pipe.execute()
        return bool(waiting == 0 and unacked == 0)

    try:
        wait_until(empty, timeout=timeout, interval=POLL_SECONDS, message=f"{queue} drained")
    except AssertionError:
        waiting, unacked = server.client.llen(queue), server.client.hlen(UNACKED_KEY)
        raise TimeoutError(f"{queue} not drained: {waiting} waiting, {unacked} unacked") from None
    return time.perf_counter() - started


def start_workers(server: Redis, logs: Path) -> dict[str, Process]:
    celeriac_env = {
        "CELERIAC_BROKER_URL": server.url,
        "CELERIAC_QUEUES": "bench_celeriac",
        "CELERIAC_WORKER_CONCURRENCY": "2",
        "CELERIAC_WORKER_HEARTBEAT_FILE": str(logs / "heartbeat"),
        "CELERIAC_WORKER_READY_FILE": str(logs / "ready"),
        "CELERIAC_WORKER_METRICS_PORT": str(free_port()),
        "CELERIAC_WORKER_METRICS_DIR": str(logs / "metrics"),
    }
    stock = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.stock_app",
        "worker",
        "-c",
        "2",
        "-P",
        "prefork",
    ]
    backend = server.url.rsplit("/", 1)[0] + "/1"
    return {
        "celeriac": Process(celeriac_command("worker"), celeriac_env, logs / "celeriac.log"),
        "stock": Process(
            [*stock, "-Q", "bench_stock"],
            {"BENCH_BROKER_URL": server.url},
            logs / "stock.log",
        ),
        "stock_with_results": Process(
            [*stock, "-Q", "bench_stock_with_results", "-n", "results@%h"],
            {"BENCH_BROKER_URL": server.url, "BENCH_RESULT_BACKEND": backend},
            logs / "stock_with_results.log",
        ),
    }


def main() -> dict[str, Any]:
    run = Run(NAME, TITLE, __doc__)
    logs = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    with Redis() as server:
        celeriac_app = create_app("bench-throughput", Settings(broker_url=server.url))
        stock_app = Celery("stock-producer", broker=server.url)
        queues = {variant: f"bench_{variant}" for variant in VARIANTS}
        templates = {
            "celeriac": template(celeriac_app, server, queues["celeriac"]),
            "stock": template(stock_app, server, queues["stock"]),
            "stock_with_results": template(stock_app, server, queues["stock_with_results"]),
        }
        workers = start_workers(server, logs)
        rates: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        try:
            for variant in VARIANTS:
                workers[variant].check_alive()
                # Warm-up: the worker is up, consuming, and its pool processes have run tasks.
                drain(server, queues[variant], copies(templates[variant], WARMUP_TASKS), 120)
            for round_index in range(ROUNDS):
                order = VARIANTS[round_index % 3 :] + VARIANTS[: round_index % 3]
                for variant in order:
                    messages = copies(templates[variant], TASKS_PER_ROUND)
                    elapsed = drain(server, queues[variant], messages)
                    workers[variant].check_alive()
                    rates[variant].append(TASKS_PER_ROUND / elapsed)
        finally:
            for process in workers.values():
                process.stop()
            celeriac_app.close()
            stock_app.close()

    medians = {variant: statistics.median(values) for variant, values in rates.items()}
    table = [
        {
            "worker": variant,
            "median tasks/s": f"{medians[variant]:,.0f}",
            "vs stock": f"{medians[variant] / medians['stock']:.2f}",
            "rounds (tasks/s)": ", ".join(f"{rate:,.0f}" for rate in rates[variant]),
        }
        for variant in VARIANTS
    ]
    results = {
        "table": table,
        "ratio_celeriac_to_stock": round(medians["celeriac"] / medians["stock"], 3),
        "ratio_celeriac_to_stock_with_results": round(
            medians["celeriac"] / medians["stock_with_results"], 3
        ),
        "median_tasks_per_second": {k: round(v, 1) for k, v in medians.items()},
    }
    notes = [
        "The end of a round is seen in Redis: with early acks (stock) up to 8 prefetched "
        "tasks may still run when the queue and unacked are empty, a bias of about 0.2% "
        f"at {TASKS_PER_ROUND} tasks; with acks late (celeriac) empty means done.",
        "celeriac stores each result and a STARTED state (task_track_started) in Redis; "
        "stock Celery stores nothing unless given a backend (third row).",
        "All three workers and Redis share the machine's 2 cores with the polling client.",
        "Rounds on this shared machine vary by up to 2x; in four full runs on 2026-11-24 "
        "(load average 0.5 to 5) the celeriac/stock ratio was 0.60, 0.58, 0.61 and 0.71, and "
        "stock with results ranged 0.77 to 1.18 of stock: read the ratio as about 0.6-0.7.",
        "Where the gap comes from (one ad hoc run, stock app toggling one setting at a time, "
        "load average ~3, noisy): no single cause; per-task INFO log lines (celeriac's default "
        "log level), result storage, the STARTED state, acks late with prefetch 1 and the four "
        "priority lists per queue each cost roughly 5-15% on no-op tasks. On real tasks that "
        "take milliseconds or more, this per-message overhead (~1-2 ms of the 2 cores) matters "
        "less than prefetch fairness and redelivery on worker loss.",
    ]
    run.save(
        {
            "tasks_per_round": TASKS_PER_ROUND,
            "rounds": ROUNDS,
            "warmup_tasks": WARMUP_TASKS,
            "pool": "prefork, 2 processes",
            "task": "celeriac.demo.add",
        },
        results,
        notes,
    )
    return results


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
