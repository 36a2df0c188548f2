"""POST /v1/tasks per second and latency through ``celeriac api``, against a bare send_task loop.

Method: a private redis-server; ``celeriac api`` started once with 1 process (1 and 8
connections) and once with 2 (``CELERIAC_API_WORKERS``, 8 connections), each left idle while
another is measured. The load generator runs in a process of its own (``python -m bench.api
load``): plain asyncio sockets on uvloop, keep-alive connections, 1 or 8 at a time, each sending
the next ``POST /v1/tasks`` as soon as the previous answer is read; every answer must be a 202.
The floor is a bare ``send_task`` loop in one process (``python -m bench.api floor``): celeriac's
configuration of Celery as the API publishes with (``celeriac.api.services.publisher``: the
celeriac transport, no result backend, which would add a subscription per task), the same
Redis, task, arguments, queue and retry policy, no HTTP, no tracking record. Each round runs
every variant once, in turn, after a warm-up of its own; Redis is flushed between variants.
Reported: the median rate over the rounds, ``vs floor`` as the median over the rounds of the
rate divided by that round's floor (the machine's load drifts between rounds), and the latency
percentiles of all rounds together. One more server runs with the
access log on (``CELERIAC_API_ACCESS_LOG=true``, 1 process). ``BENCH_API_BEFORE_SRC=<dir>``
adds a server run from another source tree (an older ``src/``, 1 process), for before/after
figures in the same run.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.support import Process, Redis, Run, percentiles
from celeriac.testing import celeriac_command, free_port, wait_until

NAME = "api"
TITLE = "API: POST /v1/tasks through celeriac api vs a bare send_task loop"
TOKEN = "bench-token-0123456789abcdef"
TASK = "celeriac.demo.add"
BODY = json.dumps({"task": TASK, "args": [1, 2]}).encode()
QUEUE = "default"
REQUESTS = int(os.environ.get("BENCH_API_REQUESTS", "1500"))
WARMUP = 200
ROUNDS = int(os.environ.get("BENCH_API_ROUNDS", "5"))
# (processes, connection counts): 2 processes only where they can help, with 8 connections.
SERVERS = ((1, (1, 8)), (2, (8,)))
CONNECTIONS = (1, 8)
# Same policy as the API's publish (celeriac.api.tasks.PUBLISH_RETRY_POLICY).
RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1}


def request_bytes(port: int) -> bytes:
    head = (
        f"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    )
    return head.encode() + BODY


async def _connection(port: int, counter: list[int], total: int, out: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = request_bytes(port)
    try:
        while counter[0] < total:
            counter[0] += 1
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            out.append(time.perf_counter() - started)
            if status != b"202":
                raise RuntimeError(f"answer {status.decode()}: {body[:200]!r}")
    finally:
        writer.close()


async def _load(port: int, connections: int, total: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    counter = [0]
    started = time.perf_counter()
    await asyncio.gather(
        *(_connection(port, counter, total, latencies) for _ in range(connections))
    )
    return time.perf_counter() - started, latencies


def load(port: int, connections: int, total: int, warmup: int) -> dict[str, Any]:
    """Warm up, then send ``total`` requests over ``connections`` keep-alive connections.

    On uvloop: the load generator shares the machine's cores with the server, so the less it
    spends per request the less it takes from what is measured.
    """
    import uvloop

    uvloop.run(_load(port, connections, warmup))
    elapsed, latencies = uvloop.run(_load(port, connections, total))
    return {"elapsed": elapsed, "latencies": latencies}


def floor(broker_url: str, total: int, warmup: int) -> dict[str, Any]:
    """A bare send_task loop with the API's publisher: the cost of publishing alone."""
    from celeriac.api.services import publisher
    from celeriac.settings import Settings

    app = publisher(Settings.from_env({"CELERIAC_BROKER_URL": broker_url}))

    def send() -> None:
        app.send_task(TASK, args=[1, 2], queue=QUEUE, retry=True, retry_policy=RETRY_POLICY)

    for _ in range(warmup):
        send()
    latencies = []
    started = time.perf_counter()
    for _ in range(total):
        begin = time.perf_counter()
        send()
        latencies.append(time.perf_counter() - begin)
    return {"elapsed": time.perf_counter() - started, "latencies": latencies}


def _child(args: Sequence[str], log: Path) -> dict[str, Any]:
    process = Process([sys.executable, "-m", "bench.api", *args], {}, log)
    try:
        process.wait(timeout=300)
    finally:
        process.stop()
    if process.process.returncode != 0:
        raise SystemExit(f"bench.api {args[0]} failed:\n{process.output()[-3000:]}")
    result: dict[str, Any] = json.loads(process.output().strip().splitlines()[-1])
    return result


def start_api(
    server: Redis, work: Path, name: str, processes: int, extra: dict[str, str]
) -> tuple[Process, int]:
    port = free_port()
    env = {
        "CELERIAC_BROKER_URL": server.url,
        "CELERIAC_API_TOKENS": TOKEN,
        "CELERIAC_API_HOST": "127.0.0.1",
        "CELERIAC_API_PORT": str(port),
        "CELERIAC_API_WORKERS": str(processes),
        **extra,
    }
    process = Process(celeriac_command("api"), env, work / f"{name}.log")

    def ready() -> bool:
        process.check_alive()
        import httpx

        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout=60, interval=0.1, message=f"celeriac api ({name})")
    return process, port


def servers() -> list[tuple[str, int, dict[str, str], tuple[int, ...]]]:
    """(name, processes, extra environment, connection counts) of every API server to run."""
    out = [(f"api_{n}p", n, {}, counts) for n, counts in SERVERS]
    out.append(("api_1p_access_log", 1, {"CELERIAC_API_ACCESS_LOG": "true"}, (8,)))
    before = os.environ.get("BENCH_API_BEFORE_SRC")
    if before:
        out.append(
            (
                "before_1p",
                1,
                {
                    "PYTHONPATH": os.pathsep.join(
                        str(Path(p).resolve()) for p in before.split(os.pathsep)
                    )
                },
                CONNECTIONS,
            )
        )
    return out


def main() -> None:
    run = Run(NAME, TITLE, __doc__)
    rates: dict[str, list[float]] = {}
    latencies: dict[str, list[float]] = {}

    def record(key: str, result: dict[str, Any]) -> None:
        rates.setdefault(key, []).append(REQUESTS / result["elapsed"])
        latencies.setdefault(key, []).extend(result["latencies"])
        print(f"{key}: {rates[key][-1]:.0f} requests/s", flush=True)

    with Redis() as server, tempfile.TemporaryDirectory(prefix="celeriac-bench-api-") as tmp:
        work = Path(tmp)
        started: list[tuple[str, Process, int, tuple[int, ...]]] = []
        try:
            for name, processes, extra, connections in servers():
                process, port = start_api(server, work, name, processes, extra)
                started.append((name, process, port, connections))
            for _ in range(ROUNDS):
                server.client.flushdb()
                args = ["floor", server.url, str(REQUESTS), str(WARMUP)]
                record("floor", _child(args, work / "floor.log"))
                for name, _, port, counts in started:
                    for count in counts:
                        key = f"{name}_{count}c" if not name.endswith("log") else name + "_8c"
                        server.client.flushdb()
                        args = ["load", str(port), str(count), str(REQUESTS), str(WARMUP)]
                        record(key, _child(args, work / f"{key}.log"))
        finally:
            for _, process, _, _ in started:
                process.stop()
    table = []
    for key, values in rates.items():
        rate = statistics.median(values)
        stats = percentiles(latencies[key])
        # Each round's rate over that round's floor: the machine's load drifts between rounds.
        ratio = statistics.median(v / f for v, f in zip(values, rates["floor"], strict=True))
        table.append(
            {
                "variant": key,
                "median requests/s": f"{rate:.0f}",
                "vs floor": f"{ratio:.2f}",
                "p50 ms": f"{stats['p50_ms']:.2f}",
                "p99 ms": f"{stats['p99_ms']:.2f}",
                "rounds (requests/s)": ", ".join(f"{r:.0f}" for r in values),
            }
        )
    run.save(
        {
            "requests_per_round": REQUESTS,
            "rounds": ROUNDS,
            "warmup": WARMUP,
            "task": TASK,
            "load_generator": "asyncio sockets on uvloop, keep-alive, 1 process",
        },
        {"table": table},
        NOTES,
    )


NOTES = [
    "Variant api_<P>p_<C>c: P API processes (CELERIAC_API_WORKERS), C connections. The floor "
    "is one process publishing as fast as it can, with no HTTP and no tracking record.",
    "Everything shares 2 cores: the load generator (most of a core by itself at these rates), "
    "redis-server and the API processes. A second API process cannot add a core here; on a "
    "node with free cores each process adds about one process's rate (they share nothing but "
    "Redis).",
    "Accepted POST /v1/tasks requests take a pure ASGI fast path (no FastAPI routing, "
    "dependencies or response model); concurrent requests' commands share one MULTI/EXEC per "
    "round trip. The floor waits for each LPUSH before building the next message; with 8 "
    "connections the API overlaps building messages with Redis round trips, so it can pass "
    "the floor.",
]


def _cli(argv: list[str]) -> None:
    if argv and argv[0] == "load":
        port, connections, total, warmup = map(int, argv[1:5])
        print(json.dumps(load(port, connections, total, warmup)))
    elif argv and argv[0] == "floor":
        print(json.dumps(floor(argv[1], int(argv[2]), int(argv[3]))))
    else:
        main()


if __name__ == "__main__":
    _cli(sys.argv[1:])
