"""Exporter scrape latency with 100,000 queued messages over 10 queues with priorities.

Method: a private redis-server; one real Celery message per (queue, priority 0..9) published
with ``send_task``, then copied with pipelined LPUSH until every queue holds 10,000 messages
spread over its four priority lists (LLEN does not depend on content, so copies count the same).
A real kombu consumer also holds 10 countdown messages (scheduled) and 20 others (in flight)
in ``unacked``, as a fleet of workers would. Measured: the collector call alone (in-process,
one MULTI/EXEC of 40 LLEN + HVALS), the full text rendering (``generate_latest``), and
``GET /metrics`` over HTTP against a real ``celeriac exporter`` process (new connection each).
"""

from __future__ import annotations

import http.client
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bench.support import Process, Redis, Run, percentiles
from celeriac.app import create_app
from celeriac.exporter.collector import BacklogCollector, create_registry, redis_client
from celeriac.exporter.settings import ExporterSettings
from celeriac.keys import UNACKED_KEY, priority_list_keys
from celeriac.settings import Settings
from celeriac.testing import celeriac_command, free_port, wait_until

NAME = "scrape"
TITLE = "Exporter scrape latency"
QUEUES = tuple(f"queue{i}" for i in range(10))
PER_QUEUE_PER_PRIORITY = 1000
IN_FLIGHT = 20
SCHEDULED = 10
WARMUP = 50
CALLS = 3000
HTTP_REQUESTS = 1000
HEAVY_UNACKED = ((1000, 200), (10000, 30))


def fill(server: Redis) -> Any:
    """Publish, copy up to 100,000 messages, and hold some in unacked; returns the connection."""
    settings = Settings(broker_url=server.url, queues=QUEUES)
    app = create_app("bench-scrape", settings)
    connection = app.connection_for_read()
    channel: Any = connection.default_channel  # kombu's virtual Channel has basic_get
    # Countdown messages first, while queue0 holds nothing else: a worker would hold them.
    for _ in range(SCHEDULED):
        app.send_task("celeriac.demo.add", args=[1, 2], queue=QUEUES[0], countdown=3600)
        assert channel.basic_get(QUEUES[0], no_ack=False) is not None
    for queue in QUEUES:
        for priority in range(10):
            app.send_task("celeriac.demo.add", args=[1, 2], queue=queue, priority=priority)
    for queue in QUEUES:
        for priority in range(10):
            # The list this priority landed in, and a message published there.
            step = max(s for s in settings.priority_steps if s <= priority)
            key = priority_list_keys(queue, [step])[0]
            message = server.client.lindex(key, 0)
            assert isinstance(message, bytes)
            with server.client.pipeline(transaction=False) as pipe:
                for _ in range(PER_QUEUE_PER_PRIORITY - 1):
                    pipe.lpush(key, message)
                pipe.execute()
    # Twenty more delivered and not acknowledged: tasks running on a fleet of workers.
    for index in range(IN_FLIGHT):
        assert channel.basic_get(QUEUES[1 + index % 9], no_ack=False) is not None
    assert server.client.hlen(UNACKED_KEY) == IN_FLIGHT + SCHEDULED
    return connection


def time_calls(call: Any, count: int) -> list[float]:
    for _ in range(WARMUP):
        call()
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return timings


def unacked_heavy(server: Redis, collector: BacklogCollector) -> dict[str, Any]:
    """The collector call with 1,000 and 10,000 entries in ``unacked`` (e.g. held ETA tasks).

    Every entry is read (HVALS) and parsed to find its queue and ETA, so this part of the scrape
    grows with the size of the hash; the copies are of a real entry with fresh delivery tags.
    """
    entry = next(iter(server.client.hvals(UNACKED_KEY)))
    out = {}
    for size, calls in HEAVY_UNACKED:
        missing = size - int(server.client.hlen(UNACKED_KEY))
        with server.client.pipeline(transaction=False) as pipe:
            for _ in range(missing):
                pipe.hset(UNACKED_KEY, str(uuid.uuid4()), entry)
            pipe.execute()
        out[f"collector_call_with_{size}_unacked"] = percentiles(
            time_calls(lambda: list(collector.collect()), calls)
        )
    return out


def http_get(port: int) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET /metrics answered {response.status}")
        return body
    finally:
        connection.close()


def main() -> dict[str, Any]:
    run = Run(NAME, TITLE, __doc__)
    with Redis() as server:
        connection = fill(server)
        try:
            total_waiting = sum(
                server.client.llen(key)
                for queue in QUEUES
                for key in priority_list_keys(queue, (0, 3, 6, 9))
            )
            settings = ExporterSettings(common=Settings(broker_url=server.url, queues=QUEUES))
            client = redis_client(settings)
            collector = BacklogCollector(
                client, settings.queues, settings.groups, settings.common.priority_steps
            )
            registry = create_registry(settings, client)
            collect = time_calls(lambda: list(collector.collect()), CALLS)
            render = time_calls(lambda: generate_latest(registry), CALLS)

            port = free_port()
            log = Path(tempfile.mkstemp(prefix="bench-exporter-", suffix=".log")[1])
            exporter = Process(
                celeriac_command("exporter"),
                {
                    "CELERIAC_BROKER_URL": server.url,
                    "CELERIAC_QUEUES": ",".join(QUEUES),
                    "CELERIAC_EXPORTER_HOST": "127.0.0.1",
                    "CELERIAC_EXPORTER_PORT": str(port),
                    "CELERIAC_LOG_LEVEL": "WARNING",
                },
                log,
            )
            try:
                wait_until(lambda: http_get(port), timeout=30, interval=0.005, message="exporter")
                body = http_get(port).decode()
                http_timings = time_calls(lambda: http_get(port), HTTP_REQUESTS)
            finally:
                exporter.stop()
            heavy = unacked_heavy(server, collector)
            client.close()
        finally:
            connection.close()

    values = {
        (sample.name, tuple(sample.labels.values())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
    reported_waiting = sum(values[("celeriac_queue_waiting_messages", (q,))] for q in QUEUES)
    check = {
        "messages_waiting_in_redis": total_waiting,
        "exporter_waiting_total": reported_waiting,
        "exporter_in_flight_total": sum(
            values[("celeriac_queue_in_flight_messages", (q,))] for q in QUEUES
        ),
        "exporter_scheduled_total": sum(
            values[("celeriac_queue_scheduled_messages", (q,))] for q in QUEUES
        ),
        "exporter_group_backlog": values[("celeriac_group_backlog_messages", ("default",))],
    }
    if reported_waiting != total_waiting:
        raise RuntimeError(f"exporter reported {reported_waiting}, Redis holds {total_waiting}")
    results = {
        "collector_call": percentiles(collect),
        "collect_and_render_text": percentiles(render),
        "http_get_metrics": percentiles(http_timings),
        **heavy,
        "check": check,
    }
    http_p95 = results["http_get_metrics"]["p95_ms"]
    notes = [
        f"Target p95 under 5 ms over HTTP: {'met' if http_p95 < 5 else 'NOT met'} "
        f"({http_p95:.2f} ms). celery-exporter needs ~2,000 ms per scrape (DESIGN.md).",
        "LLEN is O(1): the scrape cost grows with the number of queues x priority steps and "
        "the size of the unacked hash (HVALS), not with the number of waiting messages.",
        "The unacked rows show the one part that grows with content: every unacked entry is "
        "transferred and parsed (~1 KB each) to find its queue and ETA. With acks late and "
        "prefetch 1 the hash holds about one entry per pool process plus held ETA tasks, so "
        "thousands of countdown tasks make the scrape slower (still far under KEDA's 3 s).",
        "HTTP timings include connect, the WSGI server and text rendering; the client runs "
        "on the same 2 cores as the exporter and Redis.",
    ]
    run.save(
        {
            "queues": len(QUEUES),
            "priority_lists_per_queue": 4,
            "waiting_messages": total_waiting,
            "in_flight": IN_FLIGHT,
            "scheduled": SCHEDULED,
            "collector_calls": CALLS,
            "http_requests": HTTP_REQUESTS,
            "warmup": WARMUP,
        },
        results,
        notes,
    )
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
