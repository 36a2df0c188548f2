"""What Redis durability costs an enqueue: no AOF vs ``appendfsync everysec`` vs ``always``.

Method: three private redis-servers started together on the same disk (the filesystem is
recorded in the parameters): no AOF, an AOF with ``appendfsync everysec`` (the chart's
default) and an AOF with ``appendfsync always`` (set with ``CONFIG SET`` and read back). Two
producers, both celeriac's own: "loop" is ``create_app(...).send_task`` in a loop over one
producer and connection, each enqueue waiting for Redis's reply (as a web app or the API
sends); "pipelined" builds the same messages with the API's publisher (``send_task``'s
message, the Redis commands handed over instead of sent) and sends them in batches of
``BATCH`` per round trip. Each round runs every (server, producer) pair once, in an order
rotated from round to round, after a warm-up of its own, with the database flushed before;
the median rate over the rounds is reported, with the latency percentiles of all rounds
together (per enqueue for the loop, per batch for the pipelined producer).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable

from bench.support import Run, percentiles
from celeriac.api.publish import Publisher
from celeriac.api.services import publisher
from celeriac.app import create_app
from celeriac.local.redis_server import RedisNotFound
from celeriac.settings import Settings
from celeriac.testing import RedisServer

NAME = "durability"
TITLE = "Durability: enqueue rate and latency with no AOF, appendfsync everysec and always"
TASK = "celeriac.demo.add"
QUEUE = "default"
LOOP_SENDS = int(os.environ.get("BENCH_DURABILITY_SENDS", "2000"))
PIPELINED_SENDS = int(os.environ.get("BENCH_DURABILITY_PIPELINED_SENDS", "5000"))
BATCH = 50
WARMUP = 100
ROUNDS = int(os.environ.get("BENCH_DURABILITY_ROUNDS", "7"))
# (name, AOF on, appendfsync)
SETTINGS = (("no_aof", False, None), ("everysec", True, "everysec"), ("always", True, "always"))
PRODUCERS = ("loop", "pipelined")


def start(appendonly: bool, appendfsync: str | None) -> RedisServer:
    try:
        server = RedisServer(appendonly=appendonly).start()
    except RedisNotFound as exc:
        raise SystemExit(str(exc)) from None
    with server.client() as client:
        if appendfsync is not None:
            client.config_set("appendfsync", appendfsync)
        aof = client.config_get("appendonly")["appendonly"]
        fsync = client.config_get("appendfsync")["appendfsync"]
    if aof != ("yes" if appendonly else "no") or (appendfsync and fsync != appendfsync):
        raise SystemExit(f"redis-server did not take appendonly/appendfsync: {aof}/{fsync}")
    return server


class Producers:
    """Both producers of one server, set up once (connections open) and reused every round."""

    def __init__(self, server: RedisServer) -> None:
        settings = Settings(broker_url=server.url())
        self.app = create_app("bench-durability", settings)
        self.pool = self.app.producer_or_acquire()
        self.producer = self.pool.__enter__()
        self.sender = Publisher(publisher(settings), (QUEUE,))
        self.sender.connect()
        self.client = server.client()

    def loop(self, count: int) -> list[float]:
        latencies = []
        for _ in range(count):
            began = time.perf_counter()
            self.app.send_task(TASK, args=[1, 2], queue=QUEUE, producer=self.producer)
            latencies.append(time.perf_counter() - began)
        return latencies

    def pipelined(self, count: int) -> list[float]:
        latencies = []
        for _ in range(count // BATCH):
            began = time.perf_counter()
            with self.client.pipeline(transaction=False) as pipe:
                for _ in range(BATCH):
                    for name, args in self.sender.commands(TASK, args=[1, 2], queue=QUEUE):
                        getattr(pipe, name)(*args)
                pipe.execute()
            latencies.append(time.perf_counter() - began)
        return latencies

    def close(self) -> None:
        self.pool.__exit__(None, None, None)
        self.sender.close()
        self.sender.app.close()
        self.app.close()
        self.client.close()


def filesystem(path: str) -> str:
    out = subprocess.run(
        ["df", "-T", path], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    fields = out[-1].split() if len(out) > 1 else []
    return f"{fields[1]} on {fields[0]}" if len(fields) > 1 else "unknown"


def main() -> None:
    run = Run(NAME, TITLE, __doc__)
    servers = {name: start(aof, fsync) for name, aof, fsync in SETTINGS}
    producers = {name: Producers(server) for name, server in servers.items()}
    variants = [(s, p) for s, _, _ in SETTINGS for p in PRODUCERS]
    rates: dict[str, list[float]] = {}
    latencies: dict[str, list[float]] = {}
    try:
        for round_number in range(ROUNDS):
            shift = round_number % len(variants)
            for setting, producer in variants[shift:] + variants[:shift]:
                key = f"{setting}_{producer}"
                measure: Callable[[int], list[float]] = getattr(producers[setting], producer)
                count = LOOP_SENDS if producer == "loop" else PIPELINED_SENDS
                producers[setting].client.flushall()
                measure(WARMUP)
                began = time.perf_counter()
                latencies.setdefault(key, []).extend(measure(count))
                rates.setdefault(key, []).append(count / (time.perf_counter() - began))
                print(f"{key}: {rates[key][-1]:.0f} enqueues/s", flush=True)
        data_filesystem = filesystem(str(servers["always"].dir))
    finally:
        for each in producers.values():
            each.close()
        for server in servers.values():
            server.close()
    table: list[dict[str, str]] = []
    for setting, _, _ in SETTINGS:
        for producer in PRODUCERS:
            key = f"{setting}_{producer}"
            rate = statistics.median(rates[key])
            base = statistics.median(rates[f"no_aof_{producer}"])
            stats = percentiles(latencies[key])
            table.append(
                {
                    "Redis": setting.replace("_", " "),
                    "producer": producer,
                    "median enqueues/s": f"{rate:.0f}",
                    "vs no AOF": f"{rate / base:.2f}",
                    "p50 ms": f"{stats['p50_ms']:.2f}",
                    "p95 ms": f"{stats['p95_ms']:.2f}",
                    "p99 ms": f"{stats['p99_ms']:.2f}",
                    "latency of": "an enqueue" if producer == "loop" else f"a batch of {BATCH}",
                    "rounds (enqueues/s)": ", ".join(f"{r:.0f}" for r in rates[key]),
                }
            )
    run.save(
        {
            "loop_enqueues_per_round": LOOP_SENDS,
            "pipelined_enqueues_per_round": PIPELINED_SENDS,
            "batch": BATCH,
            "rounds": ROUNDS,
            "warmup": WARMUP,
            "task": TASK,
            "data_filesystem": data_filesystem,
        },
        {"table": table},
        NOTES,
    )


NOTES = [
    "What each setting keeps when Redis dies: always loses no acknowledged enqueue (Redis "
    "writes and fsyncs before it replies). everysec loses up to about 2 s when the node "
    "crashes, and also when only the process crashes while the disk is slow: Redis holds its "
    "AOF writes back while the previous background fsync runs (up to 2 s) and replies anyway "
    "(seen in tests/integration/test_api_durability.py on a busy disk). No AOF loses "
    "everything queued.",
    "always fsyncs once per pass of Redis's event loop, for every command read in that pass: "
    "the enqueues of a pipelined batch (or of many clients at once) share their fsyncs, so "
    "they lose less of their rate than a one-at-a-time producer.",
    "The cost depends on the disk's fsync latency: a virtual disk on a shared host here; "
    "expect it to differ on your PersistentVolume (network block storage is often slower).",
]


if __name__ == "__main__":
    main()
