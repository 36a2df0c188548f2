"""``celeriac exporter`` against a real Redis, real Celery producers and a real worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from celeriac.app import create_app
from celeriac.broker.keys import UNACKED_KEY, priority_list_keys
from celeriac.exporter.collector import (
    GROUP_BACKLOG,
    GROUP_OLDEST_AGE,
    QUEUE_BACKLOG,
    QUEUE_IN_FLIGHT,
    QUEUE_OLDEST_AGE,
    QUEUE_SCHEDULED,
    QUEUE_WAITING,
    REDIS_UP,
    SCRAPE_DURATION,
    SCRAPE_ERRORS,
)
from celeriac.settings import Settings
from celeriac.testing import Child, RedisServer, celeriac_command, free_port, wait_until
from tests.integration.support.workers import worker_env
from tests.support import PROMETHEUS_HOW_TO_GET, require_tool

pytestmark = pytest.mark.integration

Spawn = Callable[..., Child]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

STEPS = (0, 3, 6, 9)
QUEUE_GAUGES = (
    QUEUE_WAITING,
    QUEUE_IN_FLIGHT,
    QUEUE_SCHEDULED,
    QUEUE_BACKLOG,
)


def scrape(port: int, path: str = "/metrics", timeout: float = 10) -> tuple[int, str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


def samples(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


class Exporter(NamedTuple):
    child: Child
    port: int


def start_exporter(spawn: Spawn, broker_url: str, extra: dict[str, str] | None = None) -> Exporter:
    port = free_port()
    env = {
        "CELERIAC_BROKER_URL": broker_url,
        "CELERIAC_EXPORTER_HOST": "127.0.0.1",
        "CELERIAC_EXPORTER_PORT": str(port),
        **(extra or {}),
    }
    child = spawn(celeriac_command("exporter"), env=env, name="exporter")

    def healthy() -> bool:
        if child.process.poll() is not None:
            raise AssertionError(f"exporter exited:\n{child.output()}")
        return scrape(port, "/healthz")[0] == 200

    wait_until(healthy, timeout=30, message="exporter /healthz")
    return Exporter(child, port)


def kill_group(child: Child) -> None:
    """SIGKILL a worker and its pool at once: warm shutdown would wait for the long tasks."""
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(timeout=10)


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    app = create_app("test-exporter-producer", Settings(broker_url=redis_url))
    yield app
    app.close()


@pytest.fixture
def own_client(own_redis: RedisServer) -> Iterator[redis.Redis]:
    client = own_redis.client()
    yield client
    client.close()


def test_exact_counts_from_real_producers_and_a_real_worker(
    spawn: Spawn,
    producer: Celery,
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    # Queues a and b have no worker: messages at every priority 0..9 land in the sub-lists.
    for priority in range(10):
        for _ in range(priority + 1):
            producer.send_task("celeriac.demo.add", args=[1, 2], queue="a", priority=priority)
        for _ in range(2):
            producer.send_task("celeriac.demo.add", args=[1, 2], queue="b", priority=priority)
    assert [redis_client.llen(key) for key in priority_list_keys("a", STEPS)] == [6, 15, 24, 10]

    # Queue slow has a real worker (pool 2, acks late, prefetch 1 per process).
    worker = spawn(
        celeriac_command("worker"),
        env=worker_env(redis_url, tmp_path, queues="slow"),
        name="worker",
    )
    try:
        # Countdown tasks first: the worker holds each in unacked and raises its prefetch by one.
        for _ in range(3):
            producer.send_task("celeriac.demo.add", args=[1, 2], queue="slow", countdown=600)
        wait_until(
            lambda: redis_client.hlen(UNACKED_KEY) == 3,
            timeout=30,
            message=f"3 countdown tasks delivered; worker log:\n{worker.output()}",
        )
        # Two long tasks fill both pool processes; four more then wait in their lists.
        for priority in (0, 9):
            producer.send_task("celeriac.demo.sleep", args=[300], queue="slow", priority=priority)
        wait_until(
            lambda: (
                redis_client.hlen(UNACKED_KEY) == 5
                and sum(redis_client.llen(key) for key in priority_list_keys("slow", STEPS)) == 0
            ),
            timeout=30,
            message="2 long tasks delivered",
        )
        for priority in (1, 4, 7, 9):
            producer.send_task("celeriac.demo.sleep", args=[300], queue="slow", priority=priority)

        groups = tmp_path / "groups.yaml"
        groups.write_text(
            "ab:\n  queues: [a, b]\n"
            "work:\n  queues: [slow, c]\n"
            "everything:\n  queues: [a, b, c, slow, idle]\n"
            "idle:\n  queues: [idle]\n"
        )
        port = start_exporter(
            spawn,
            redis_url,
            {
                "CELERIAC_QUEUES": "a,b,c,slow",
                "CELERIAC_DEFAULT_QUEUE": "a",  # the default queue is always measured
                "CELERIAC_WORKER_GROUPS_FILE": str(groups),
            },
        ).port
        expected_queues = {
            # queue: (waiting, in flight, scheduled, backlog)
            "a": (55, 0, 0, 55),
            "b": (20, 0, 0, 20),
            "c": (0, 0, 0, 0),
            "slow": (4, 2, 3, 6),
            "idle": (0, 0, 0, 0),
        }

        # The worker may still be taking its last message: wait for the numbers to settle.
        def settled() -> Samples | None:
            found = samples(scrape(port)[2])
            actual = value(found, QUEUE_WAITING, queue="slow")
            return found if actual == 4 else None

        found = wait_until(settled, timeout=30, message="slow queue settled at 4 waiting")
        # Redis agrees with what we meant to build: four waiting, five held by the worker.
        assert sum(redis_client.llen(key) for key in priority_list_keys("slow", STEPS)) == 4
        assert redis_client.hlen(UNACKED_KEY) == 5
    finally:
        kill_group(worker)

    for queue, numbers in expected_queues.items():
        actual = tuple(value(found, name, queue=queue) for name in QUEUE_GAUGES)
        assert actual == numbers, queue
    expected_groups = {"ab": 75, "work": 6, "everything": 81, "idle": 0}
    for group, backlog in expected_groups.items():
        assert value(found, GROUP_BACKLOG, group=group) == backlog, group
    # Only configured queues and groups appear, nothing else.
    queue_labels = {dict(labels)["queue"] for name, labels in found if name in QUEUE_GAUGES}
    assert queue_labels == set(expected_queues)
    group_labels = {dict(labels)["group"] for name, labels in found if name == GROUP_BACKLOG}
    assert group_labels == set(expected_groups)
    assert value(found, REDIS_UP) == 1
    duration = value(found, SCRAPE_DURATION)
    assert duration is not None
    assert 0 < duration < 1


def test_configured_queues_read_zero_before_anything_exists(
    spawn: Spawn, redis_url: str, redis_client: redis.Redis
) -> None:
    assert redis_client.dbsize() == 0
    port = start_exporter(spawn, redis_url, {"CELERIAC_QUEUES": "default,cpu"}).port
    found = samples(scrape(port)[2])
    for queue in ("default", "cpu"):
        for name in QUEUE_GAUGES:
            assert value(found, name, queue=queue) == 0, (name, queue)
    # Unset groups file: one group "default" over CELERIAC_QUEUES.
    assert value(found, GROUP_BACKLOG, group="default") == 0
    assert value(found, REDIS_UP) == 1


def test_an_empty_groups_file_reports_queues_only(
    spawn: Spawn, redis_url: str, tmp_path: Path
) -> None:
    groups = tmp_path / "groups.yaml"
    groups.write_text("{}\n")
    port = start_exporter(
        spawn, redis_url, {"CELERIAC_QUEUES": "a", "CELERIAC_WORKER_GROUPS_FILE": str(groups)}
    ).port
    text = scrape(port)[2]
    assert value(samples(text), QUEUE_BACKLOG, queue="a") == 0
    assert GROUP_BACKLOG not in text


def test_one_transaction_per_scrape(
    spawn: Spawn, producer: Celery, redis_url: str, redis_client: redis.Redis
) -> None:
    producer.send_task("celeriac.demo.add", args=[1, 2], queue="q1", priority=5)
    environ = {"CELERIAC_QUEUES": "q1,q2,q3", "CELERIAC_DEFAULT_QUEUE": "q1"}
    port = start_exporter(spawn, redis_url, environ).port
    scrape(port)  # connect first: the connection handshake is not part of the count
    redis_client.config_resetstat()
    for _ in range(5):
        scrape(port)
    stats = redis_client.info("commandstats")
    # Five scrapes: five MULTI/EXEC rounds, each with one LLEN and one LINDEX (the oldest
    # message) per list and two ZCOUNTs (in flight, scheduled) per queue.
    assert stats["cmdstat_exec"]["calls"] == 5
    assert stats["cmdstat_llen"]["calls"] == 5 * 3 * len(STEPS)
    assert stats["cmdstat_lindex"]["calls"] == 5 * 3 * len(STEPS)
    assert stats["cmdstat_zcount"]["calls"] == 5 * 3 * 2
    assert stats["cmdstat_zcard"]["calls"] == 5 * 3  # dead letters
    # No other reads: nothing per message (no HVALS, HGETALL, LRANGE), no worker broadcasts.
    allowed = {
        "cmdstat_multi",
        "cmdstat_exec",
        "cmdstat_llen",
        "cmdstat_lindex",
        "cmdstat_zcount",
        "cmdstat_zcard",
    }
    ours = {name for name in stats if not name.startswith(("cmdstat_config", "cmdstat_info"))}
    assert ours == allowed


def test_promtool_accepts_a_real_scrape(
    spawn: Spawn, own_redis: RedisServer, own_client: redis.Redis
) -> None:
    promtool = require_tool("promtool", PROMETHEUS_HOW_TO_GET)
    port = start_exporter(spawn, own_redis.url(), {"CELERIAC_QUEUES": "default,cpu"}).port
    own_client.lpush("default", "x")
    own_client.lpush("cpu\x06\x166", "x")
    status, content_type, up_text = scrape(port)
    assert (status, content_type) == (200, "text/plain; version=0.0.4; charset=utf-8")
    own_redis.stop()
    _, _, down_text = scrape(port)
    for text in (up_text, down_text):
        result = subprocess.run(
            [promtool, "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
            timeout=30,
        )
        # promtool exits non-zero on parse errors and on lint problems (names, units, help).
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), text


def keda_value(text: str, name: str, labels: dict[str, str]) -> float:
    """What KEDA's metrics-api scaler (format prometheus) reads: the first exact-label match."""
    for family in text_string_to_metric_families(text.replace("\r\n", "\n") + "\n"):
        if family.name != name:
            continue
        assert family.type == "gauge"
        for sample in family.samples:
            if all(sample.labels.get(key) == want for key, want in labels.items()):
                return sample.value
        raise LookupError(f"value {name}{labels} not found")
    raise LookupError(f"metric {name!r} not found")


def test_redis_down_reports_up_0_and_no_backlog_then_recovers(
    spawn: Spawn, own_redis: RedisServer, own_client: redis.Redis
) -> None:
    port = start_exporter(spawn, own_redis.url(), {"CELERIAC_QUEUES": "default,cpu"}).port
    own_client.lpush("default", "m1", "m2")
    _, _, text = scrape(port)
    assert keda_value(text, GROUP_BACKLOG, {"group": "default"}) == 2

    own_redis.stop()
    started = time.monotonic()
    status, _, text = scrape(port)
    assert status == 200
    assert time.monotonic() - started < 5
    found = samples(text)
    assert value(found, REDIS_UP) == 0
    assert value(found, SCRAPE_DURATION) is not None
    # Absent, not 0: a false 0 would let KEDA scale the workers away; the failure is counted.
    assert set(found) == {
        (REDIS_UP, ()),
        (SCRAPE_DURATION, ()),
        (SCRAPE_ERRORS, ()),
    }
    assert value(found, SCRAPE_ERRORS) == 1
    assert "celeriac_queue_" not in text
    assert "celeriac_group_" not in text
    with pytest.raises(LookupError, match="not found"):
        keda_value(text, GROUP_BACKLOG, {"group": "default"})

    own_redis.start()  # same port, empty database
    own_client.lpush("cpu\x06\x169", "m3")

    def recovered() -> Samples | None:
        found = samples(scrape(port)[2])
        return found if value(found, REDIS_UP) == 1 else None

    found = wait_until(recovered, timeout=30, message="exporter reconnects")
    assert value(found, QUEUE_WAITING, queue="cpu") == 1
    assert value(found, GROUP_BACKLOG, group="default") == 1


def test_a_redis_that_never_answers_costs_at_most_the_timeout(spawn: Spawn) -> None:
    # A socket that accepts connections (the kernel completes the handshake) but never replies.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        port = start_exporter(spawn, url, {"CELERIAC_EXPORTER_REDIS_TIMEOUT_SECONDS": "0.3"}).port
        for _ in range(2):
            started = time.monotonic()
            status, _, text = scrape(port)
            elapsed = time.monotonic() - started
            assert status == 200
            assert value(samples(text), REDIS_UP) == 0
            # 0.3 s socket timeout, no retries; generous margin for a loaded machine.
            assert 0.25 < elapsed < 2.5


def test_sigterm_stops_the_exporter_cleanly(spawn: Spawn, redis_url: str) -> None:
    exporter = start_exporter(spawn, redis_url)
    assert "/metrics" in scrape(exporter.port, "/")[2]
    exporter.child.signal(signal.SIGTERM)
    assert exporter.child.wait(timeout=30) == 0
    log = exporter.child.output()
    assert "serving /metrics on 127.0.0.1" in log
    assert "received SIGTERM, stopping" in log
    assert "Traceback" not in log


def test_a_real_prometheus_scrapes_the_exporter(
    spawn: Spawn, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    prometheus_binary = require_tool("prometheus", PROMETHEUS_HOW_TO_GET)
    redis_client.lpush("default\x06\x163", "m1", "m2", "m3")
    exporter = start_exporter(spawn, redis_url)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: celeriac\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{exporter.port}']}}]\n"
    )
    web_port = free_port()
    prometheus = spawn(
        [
            prometheus_binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web_port}",
        ],
        name="prometheus",
    )
    query = urllib.parse.quote(f'{GROUP_BACKLOG}{{group="default"}}')

    def scraped() -> str | None:
        if prometheus.process.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{prometheus.output()}")
        url = f"http://127.0.0.1:{web_port}/api/v1/query?query={query}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                result = json.load(response)["data"]["result"]
        except urllib.error.HTTPError as exc:
            # Prometheus answers 503 while it starts; the error holds the open response.
            exc.close()
            return None
        return result[0]["value"][1] if result else None

    assert wait_until(scraped, timeout=60, message="prometheus scraped the exporter") == "3"


def test_password_from_file_is_used_and_never_logged(spawn: Spawn, tmp_path: Path) -> None:
    secret = "s3cret-Pa55"
    server = RedisServer(password=secret).start()
    try:
        password_file = tmp_path / "password"
        password_file.write_text(secret + "\n")
        url_without_password = f"redis://127.0.0.1:{server.port}/0"
        good = start_exporter(
            spawn, url_without_password, {"CELERIAC_REDIS_PASSWORD_FILE": str(password_file)}
        )
        wrong_file = tmp_path / "wrong"
        wrong_file.write_text("not-the-password")
        wrong = start_exporter(
            spawn, url_without_password, {"CELERIAC_REDIS_PASSWORD_FILE": str(wrong_file)}
        )
        inline = start_exporter(spawn, f"redis://:{secret}@127.0.0.1:{server.port}/0")
        assert value(samples(scrape(good.port)[2]), REDIS_UP) == 1
        assert value(samples(scrape(inline.port)[2]), REDIS_UP) == 1
        for _ in range(3):
            assert value(samples(scrape(wrong.port)[2]), REDIS_UP) == 0
        wrong_log = wrong.child.output()
        # One warning for the outage, not one per scrape.
        assert wrong_log.count("cannot read Redis") == 1, wrong_log
        assert "redis://:***@127.0.0.1" in inline.child.output()
        for exporter in (good, wrong, inline):
            assert secret not in exporter.child.output()
    finally:
        server.close()


def test_oldest_age_per_queue_and_group(spawn: Spawn, producer: Celery, redis_url: str) -> None:
    port = start_exporter(spawn, redis_url, {"CELERIAC_QUEUES": "q1,q2"}).port
    found = samples(scrape(port)[2])
    # Nothing waits: a true 0, per queue and for the group.
    assert value(found, QUEUE_OLDEST_AGE, queue="q1") == 0
    assert value(found, GROUP_OLDEST_AGE, group="default") == 0
    producer.send_task("celeriac.demo.add", args=[1, 2], queue="q1", priority=9)
    published = time.time()

    def aged() -> Samples | None:
        found = samples(scrape(port)[2])
        age = value(found, QUEUE_OLDEST_AGE, queue="q1")
        return found if age is not None and age >= 0.2 else None

    found = wait_until(aged, timeout=10, message="the waiting message to age")
    age = value(found, QUEUE_OLDEST_AGE, queue="q1")
    assert age is not None
    assert age <= time.time() - published + 0.1
    assert value(found, QUEUE_OLDEST_AGE, queue="q2") == 0
    assert value(found, GROUP_OLDEST_AGE, group="default") == pytest.approx(age, abs=0.5)
