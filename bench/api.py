"""POST /v1/tasks per second and latency through ``celeriac api``, against a bare send_task loop.

Method: a private redis-server; ``celeriac api`` started once with 1 process (1 and 8
connections) and once with 2 (``CELERIAC_API_WORKERS``, 8 connections), each left idle while
another is measured. The load generator is ``wrk`` (C, epoll; a Lua script sets the method, the
JSON body and the ``Authorization`` header, and reports from wrk's own latency histogram): 1
thread and 1 connection, or 2 threads and 8 connections, keep-alive, each connection sending
the next ``POST /v1/tasks`` as soon as the previous answer is read, for a fixed duration; any
answer other than a 202 fails the run. Without ``wrk`` on the PATH the load generator is a
Python one (asyncio sockets on uvloop, in a process of its own), which costs more CPU per
request on the shared cores: the results say which one ran. The floor is a bare ``send_task``
loop in one process (``python -m bench.api floor``), for the same duration: celeriac's
configuration of Celery as the API publishes with (``celeriac.api.services.publisher``: the
celeriac transport, no result backend, which would add a subscription per task), the same
Redis, task, arguments, queue and retry policy, no HTTP, no tracking record. Each server gets
a warm-up before the first round; each round runs every variant once, in turn, the floor
first; Redis is flushed between variants. Reported: the median rate over the rounds, ``vs
floor`` as the median over the rounds of the rate divided by that round's floor (the machine's
load drifts between rounds), and the median over the rounds of each round's p50 and p99. One
more server runs with the access log on (``CELERIAC_API_ACCESS_LOG=true``, 1 process, 8
connections). ``BENCH_API_BEFORE_SRC=<dir>`` adds a server run from another source tree (an
older ``src/``, 1 process), for before/after figures in the same run.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
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
PATH = "/v1/tasks"
# Seconds per variant and round; rounds. 5 variants x 5 s x 5 rounds: about 2.5 minutes.
SECONDS = float(os.environ.get("BENCH_API_SECONDS", "5"))
ROUNDS = int(os.environ.get("BENCH_API_ROUNDS", "5"))
WARMUP_SECONDS = 2.0
FLOOR_WARMUP = 200
# (processes, connection counts): 2 processes only where they can help, with 8 connections.
SERVERS = ((1, (1, 8)), (2, (8,)))
CONNECTIONS = (1, 8)
# Same policy as the API's publish (celeriac.api.submission.PUBLISH_RETRY_POLICY).
RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1}
# One round of one variant: requests completed, seconds, p50 and p99 in milliseconds.
Round = dict[str, Any]


def request_bytes(port: int) -> bytes:
    head = (
        f"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    )
    return head.encode() + BODY


def wrk() -> str | None:
    """The ``wrk`` binary, unless ``BENCH_API_LOAD=python`` or it is not installed."""
    if os.environ.get("BENCH_API_LOAD", "wrk") == "python":
        return None
    return shutil.which("wrk")


# wrk's Lua: the request, then one JSON line from its own counters and latency histogram.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[%(body)s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "elapsed_us": %%d, "bad": %%d, "p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def load_wrk(binary: str, script: Path, port: int, connections: int, seconds: float) -> Round:
    """One wrk run: 1 thread per connection up to 2 (the machine has 2 cores)."""
    threads = min(connections, 2)
    completed = subprocess.run(
        [
            binary,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{PATH}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        raise SystemExit(f"wrk failed:\n{completed.stdout}\n{completed.stderr}")
    out = json.loads(lines[-1])
    if out["bad"] or not out["requests"]:
        raise SystemExit(f"wrk: answers other than 202 or socket errors:\n{completed.stdout}")
    return {
        "requests": out["requests"],
        "elapsed": out["elapsed_us"] / 1e6,
        "p50_ms": out["p50_us"] / 1000,
        "p99_ms": out["p99_us"] / 1000,
    }


async def _connection(port: int, deadline: float, out: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = request_bytes(port)
    try:
        while time.perf_counter() < deadline:
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


async def _load(port: int, connections: int, seconds: float) -> tuple[float, list[float]]:
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(_connection(port, deadline, latencies) for _ in range(connections)))
    return time.perf_counter() - started, latencies


def load(port: int, connections: int, seconds: float) -> Round:
    """The Python load generator (no ``wrk``): ``connections`` keep-alive connections.

    On uvloop: the load generator shares the machine's cores with the server, so the less it
    spends per request the less it takes from what is measured.
    """
    import uvloop

    elapsed, latencies = uvloop.run(_load(port, connections, seconds))
    return _round(elapsed, latencies)


def floor(broker_url: str, seconds: float, warmup: int) -> Round:
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
    deadline = started + seconds
    while True:
        begin = time.perf_counter()
        if begin >= deadline:
            break
        send()
        latencies.append(time.perf_counter() - begin)
    return _round(time.perf_counter() - started, latencies)


def _round(elapsed: float, latencies: list[float]) -> Round:
    stats = percentiles(latencies)
    return {
        "requests": len(latencies),
        "elapsed": elapsed,
        "p50_ms": stats["p50_ms"],
        "p99_ms": stats["p99_ms"],
    }


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
    out: list[tuple[str, int, dict[str, str], tuple[int, ...]]] = [
        (f"api_{n}p", n, {}, counts) for n, counts in SERVERS
    ]
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


class Load:
    """Runs the load generator against a server: ``wrk`` if installed, the Python one if not."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.wrk = wrk()
        self.script = work / "post.lua"
        self.script.write_text(WRK_SCRIPT % {"body": BODY.decode(), "token": TOKEN})

    @property
    def name(self) -> str:
        if self.wrk:
            return "wrk (1 thread for 1 connection, 2 threads for 8), keep-alive"
        return (
            "Python: asyncio sockets on uvloop, keep-alive, 1 process (wrk not found: "
            "apt-get install wrk)"
        )

    def run(self, key: str, port: int, connections: int, seconds: float) -> Round:
        if self.wrk:
            return load_wrk(self.wrk, self.script, port, connections, seconds)
        args = ["load", str(port), str(connections), str(seconds)]
        return _child(args, self.work / f"{key}.log")


def main() -> None:
    run = Run(NAME, TITLE, __doc__)
    rounds: dict[str, list[Round]] = {}

    def record(key: str, result: Round) -> None:
        result["rate"] = result["requests"] / result["elapsed"]
        rounds.setdefault(key, []).append(result)
        print(
            f"{key}: {result['rate']:.0f} requests/s, p50 {result['p50_ms']:.2f} ms, "
            f"p99 {result['p99_ms']:.2f} ms",
            flush=True,
        )

    with Redis() as server, tempfile.TemporaryDirectory(prefix="celeriac-bench-api-") as tmp:
        work = Path(tmp)
        generator = Load(work)
        print(f"load generator: {generator.name}", flush=True)
        started: list[tuple[str, Process, int, tuple[int, ...]]] = []
        try:
            for name, processes, extra, connections in servers():
                process, port = start_api(server, work, name, processes, extra)
                started.append((name, process, port, connections))
            for name, _, port, counts in started:
                generator.run(f"{name}_warmup", port, max(counts), WARMUP_SECONDS)
            for _ in range(ROUNDS):
                server.client.flushdb()
                args = ["floor", server.url, str(SECONDS), str(FLOOR_WARMUP)]
                record("floor", _child(args, work / "floor.log"))
                for name, _, port, counts in started:
                    for count in counts:
                        key = f"{name}_{count}c" if not name.endswith("log") else name + "_8c"
                        server.client.flushdb()
                        record(key, generator.run(key, port, count, SECONDS))
        finally:
            for _, process, _, _ in started:
                process.stop()
    floors = [r["rate"] for r in rounds["floor"]]
    table = []
    for key, values in rounds.items():
        rates = [r["rate"] for r in values]
        # Each round's rate over that round's floor: the machine's load drifts between rounds.
        ratio = statistics.median(r / f for r, f in zip(rates, floors, strict=True))
        table.append(
            {
                "variant": key,
                "median requests/s": f"{statistics.median(rates):.0f}",
                "vs floor": f"{ratio:.2f}",
                "p50 ms": f"{statistics.median(r['p50_ms'] for r in values):.2f}",
                "p99 ms": f"{statistics.median(r['p99_ms'] for r in values):.2f}",
                "rounds (requests/s)": ", ".join(f"{r:.0f}" for r in rates),
            }
        )
    one, two = rounds["api_1p_8c"], rounds["api_2p_8c"]
    processes = statistics.median(b["rate"] / a["rate"] for a, b in zip(one, two, strict=True))
    run.save(
        {
            "seconds_per_variant": SECONDS,
            "rounds": ROUNDS,
            "warmup": f"{WARMUP_SECONDS:g} s per server, {FLOOR_WARMUP} sends per floor",
            "task": TASK,
            "load_generator": generator.name,
        },
        {"table": table, "ratio_2_processes_to_1_at_8_connections": round(processes, 2)},
        NOTES,
    )


NOTES = [
    "Variant api_<P>p_<C>c: P API processes (CELERIAC_API_WORKERS), C connections. The floor "
    "is one process publishing as fast as it can, with no HTTP and no tracking record.",
    "Everything shares 2 cores: the load generator, redis-server and the API processes. A "
    "second API process adds only what wrk and Redis leave of the second core here; on a node "
    "with free cores each process adds about one process's rate (they share nothing but "
    "Redis).",
    "Accepted POST /v1/tasks requests take a pure ASGI fast path (no FastAPI routing, "
    "dependencies or response model); a request alone writes its record and message with one "
    "EVAL, concurrent requests' commands share one MULTI/EXEC per round trip. The message "
    "comes from a template send_task built once for the task, queue and priority, with the "
    "id, arguments, delivery tag and publish time filled in (celeriac.api.templates: about "
    "30 us instead of about 100 us for send_task). The floor waits for each LPUSH before "
    "building the next message; with 8 connections the API overlaps building messages with "
    "Redis round trips, so it passes the floor.",
    "At 1 connection the rate is one request's round trip: the API pays an HTTP exchange and "
    "a Redis round trip per request, the floor a Redis round trip and send_task's message "
    "building. Profiled (py-spy, 1 connection) before the templates: send_task 29% of the "
    "process, the Redis write 10%, uvicorn's HTTP and the fast path most of the rest.",
    "Look at the load averages: the box ran other jobs (Go builds, test suites) during the "
    "run, and rounds differ by up to 2x; compare the per-round ratios, not the rates.",
]


def _cli(argv: list[str]) -> None:
    if argv and argv[0] == "load":
        print(json.dumps(load(int(argv[1]), int(argv[2]), float(argv[3]))))
    elif argv and argv[0] == "floor":
        print(json.dumps(floor(argv[1], float(argv[2]), int(argv[3]))))
    else:
        main()


if __name__ == "__main__":
    _cli(sys.argv[1:])
