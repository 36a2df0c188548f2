"""``celeriac worker`` as real subprocesses against a real Redis: probes, metrics, kills,
SIGTERM drains and requeues, broker restarts.

Executions are counted in Redis by ``tests.integration.apps.worker_tasks`` (``runs:<id>``,
``done:<id>``), so "ran once", "ran twice" and "lost" are facts, not log lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from celeriac.app import create_app
from celeriac.broker.keys import UNACKED_KEY, in_flight_key, priority_list_keys
from celeriac.settings import DEFAULT_PRIORITY_STEPS, Settings
from celeriac.testing import Child, RedisServer, celeriac_command, free_port, wait_until
from celeriac.worker.metrics import (
    TASK_QUEUE_WAIT,
    TASK_RUNTIME,
    TASKS_FAILED,
    TASKS_RETRIED,
    TASKS_SUCCEEDED,
)
from tests.integration.support import workers
from tests.support import REPO_ROOT

pytestmark = pytest.mark.integration

Spawn = Callable[..., Child]
QUEUE = "work"
TASKS_APP = "tests.integration.apps.worker_tasks:app"


def worker_env(broker_url: str, tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    """A worker of this file's test tasks; ``extra`` as in ``workers.worker_env``."""
    settings = {"app": TASKS_APP, "queues": QUEUE, "worker_hostname": f"{name}@test", **extra}
    return workers.worker_env(broker_url, tmp_path, name, **settings) | {
        "PYTHONPATH": str(REPO_ROOT)
    }


def start_worker(spawn: Spawn, env: dict[str, str], name: str) -> Child:
    """Start a worker and wait for its ready file (the start-up probe's condition)."""
    child = spawn(celeriac_command("worker"), env=env, name=name)
    ready = Path(env["CELERIAC_WORKER_READY_FILE"])

    def is_ready() -> bool:
        if child.process.poll() is not None:
            raise AssertionError(f"worker {name} exited:\n{child.output()}")
        return ready.exists()

    wait_until(is_ready, timeout=30, message=f"worker {name} ready")
    return child


def probe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        celeriac_command("probe", "worker", *args),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def counter(client: redis.Redis, key: str) -> int:
    value = client.get(key)
    return int(value) if value is not None else 0


def waiting(client: redis.Redis) -> int:
    return sum(int(client.llen(key)) for key in priority_list_keys(QUEUE, DEFAULT_PRIORITY_STEPS))


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    app = create_app("test-worker-producer", Settings(broker_url=redis_url, queues=(QUEUE,)))
    yield app
    app.close()


def send(producer: Celery, task: str = "tests.record", **kwargs: float) -> str:
    return str(producer.send_task(task, kwargs=kwargs, queue=QUEUE).id)


def test_ready_file_heartbeat_and_probes(spawn: Spawn, redis_url: str, tmp_path: Path) -> None:
    env = worker_env(redis_url, tmp_path, "a")
    heartbeat = Path(env["CELERIAC_WORKER_HEARTBEAT_FILE"])
    ready = Path(env["CELERIAC_WORKER_READY_FILE"])
    # Files of an earlier run (an hour old, marked) must be replaced, never pass as ours.
    for stale in (heartbeat, ready):
        stale.write_text("stale")
        os.utime(stale, (time.time() - 3600, time.time() - 3600))
    assert probe(env, "--max-age-seconds", "5").returncode == 1

    started = time.monotonic()
    worker = spawn(celeriac_command("worker"), env=env, name="a")
    wait_until(
        lambda: ready.exists() and ready.read_text() == "",
        timeout=30,
        message=f"a fresh ready file; log:\n{worker.output()}",
    )
    print(f"cold start to ready file: {time.monotonic() - started:.2f}s (incl. interpreter)")
    assert heartbeat.read_text() == ""
    assert "sizing: pool=2 (from CELERIAC_WORKER_CONCURRENCY)" in worker.output()
    assert probe(env, "--ready").returncode == 0
    # The heartbeat keeps moving: two more touches from the event loop's timer.
    first = heartbeat.stat().st_mtime
    wait_until(lambda: heartbeat.stat().st_mtime > first, timeout=10, message="a heartbeat")
    second = heartbeat.stat().st_mtime
    wait_until(lambda: heartbeat.stat().st_mtime > second, timeout=10, message="another")
    result = probe(env, "--max-age-seconds", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("worker healthy: heartbeat")


def test_task_metrics_by_task_name(
    spawn: Spawn, redis_url: str, tmp_path: Path, producer: Celery
) -> None:
    port = free_port()
    env = worker_env(redis_url, tmp_path, "m", worker_metrics_port=str(port))
    # A metric file left by an earlier run would add its counts; it must be wiped at start.
    metrics_dir = Path(env["CELERIAC_WORKER_METRICS_DIR"])
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"not a metrics file")
    start_worker(spawn, env, "m")
    assert not (metrics_dir / "counter_1.db").exists()

    results = [
        producer.send_task("tests.record", kwargs={"seconds": 0.05}, queue=QUEUE),
        producer.send_task("tests.record", kwargs={"seconds": 0.05}, queue=QUEUE),
        producer.send_task("tests.fail", queue=QUEUE),
        producer.send_task("tests.retry_once", queue=QUEUE),
    ]
    for result in results:
        result.get(timeout=30, propagate=False)

    def scrape() -> dict[tuple[str, str], float]:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return {
            (sample.name, sample.labels.get("task") or sample.labels.get("queue", "")): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if "le" not in sample.labels
        }

    expected = {
        (TASKS_SUCCEEDED, "tests.record"): 2.0,
        (TASKS_SUCCEEDED, "tests.retry_once"): 1.0,
        (TASKS_FAILED, "tests.fail"): 1.0,
        (TASKS_RETRIED, "tests.retry_once"): 1.0,
        (f"{TASK_RUNTIME}_count", "tests.record"): 2.0,
        (f"{TASK_RUNTIME}_count", "tests.fail"): 1.0,
        # The first run raised Retry, the second succeeded: two runs.
        (f"{TASK_RUNTIME}_count", "tests.retry_once"): 2.0,
        # Publish to start, per queue: every run, the retry's included.
        (f"{TASK_QUEUE_WAIT}_count", QUEUE): 5.0,
    }
    # The signal handlers run in the pool processes after the result is stored: poll briefly.
    found = wait_until(
        lambda: (lambda s: s if all(s.get(k) == v for k, v in expected.items()) else None)(
            scrape()
        ),
        timeout=30,
        message="task metrics",
    )
    assert found[(f"{TASK_RUNTIME}_sum", "tests.record")] >= 0.1
    assert (TASKS_FAILED, "tests.record") not in found


def test_pool_process_over_its_memory_share_is_replaced(
    spawn: Spawn, redis_url: str, tmp_path: Path, producer: Celery
) -> None:
    # 300 MiB for one process: (300 x 0.8 - 128) MiB = 112 MiB per child, derived at start.
    env = worker_env(
        redis_url, tmp_path, "mem", worker_concurrency="1", worker_memory_limit_bytes=str(300 << 20)
    )
    worker = start_worker(spawn, env, "mem")
    assert (
        "max_memory_per_child=114688KiB "
        "(memory limit 300MiB from CELERIAC_WORKER_MEMORY_LIMIT_BYTES)" in worker.output()
    )

    def run(task: str, **kwargs: int) -> int:
        return int(producer.send_task(task, kwargs=kwargs, queue=QUEUE).get(timeout=30))

    before = run("tests.pid")
    assert run("tests.pid") == before  # small tasks keep the same process
    assert run("tests.allocate", megabytes=200) == before
    # Celery checked its peak RSS after that task and replaced it.
    assert run("tests.pid") != before


def test_killed_worker_task_completes_on_another_worker(
    spawn: Spawn, redis_url: str, redis_client: redis.Redis, tmp_path: Path, producer: Celery
) -> None:
    # As the OOM killer or a lost node would: the whole process group at once, no cleanup.
    visibility = {"visibility_timeout_seconds": "3"}
    first = start_worker(spawn, worker_env(redis_url, tmp_path, "k1", **visibility), "k1")
    task_id = send(producer, seconds=0.1, first_run_seconds=600)
    wait_until(lambda: redis_client.sismember("started", task_id), timeout=30, message="start")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    assert redis_client.hlen(UNACKED_KEY) == 1  # stranded until the visibility timeout
    # ... and still counted as in flight, so the group is not scaled away meanwhile.
    assert redis_client.zcard(in_flight_key(QUEUE)) == 1

    start_worker(spawn, worker_env(redis_url, tmp_path, "k2", **visibility), "k2")
    # kombu's sweep (every max(1, timeout / 4) s here) restores it after 3 s; k2 runs it.
    wait_until(lambda: counter(redis_client, f"done:{task_id}") == 1, timeout=30, message="done")
    assert counter(redis_client, f"runs:{task_id}") == 2
    # The restore by another worker and its ack left nothing counted as held.
    wait_until(
        lambda: redis_client.zcard(in_flight_key(QUEUE)) == 0 == redis_client.hlen(UNACKED_KEY),
        timeout=10,
        message="no message held",
    )


def test_sigterm_exits_as_soon_as_running_tasks_finish(
    spawn: Spawn, redis_url: str, redis_client: redis.Redis, tmp_path: Path, producer: Celery
) -> None:
    env = worker_env(redis_url, tmp_path, "t", worker_shutdown_timeout_seconds="60")
    worker = start_worker(spawn, env, "t")
    ids = [send(producer, seconds=3) for _ in range(2)]
    wait_until(lambda: redis_client.scard("started") == 2, timeout=30, message="both started")

    worker.signal(signal.SIGTERM)
    # Stops taking tasks at once: the ready file goes while both tasks still run.
    ready = Path(env["CELERIAC_WORKER_READY_FILE"])
    wait_until(lambda: not ready.exists(), timeout=10, message="ready file removed")
    late = send(producer, seconds=0)
    assert worker.wait(timeout=40) == 0
    exited = time.time()
    for task_id in ids:
        assert counter(redis_client, f"runs:{task_id}") == 1
        assert counter(redis_client, f"done:{task_id}") == 1
    # Far sooner than the 60 s deadline; the rest is Celery's own pool shutdown (~3 s).
    assert exited - last_finished_at(redis_client, ids) < 15, worker.output()
    # The task sent after SIGTERM was not taken: it waits for the next worker.
    assert counter(redis_client, f"runs:{late}") == 0
    assert waiting(redis_client) == 1
    assert redis_client.hlen(UNACKED_KEY) == 0
    assert redis_client.zcard(in_flight_key(QUEUE)) == 0


def last_finished_at(client: redis.Redis, ids: list[str]) -> float:
    """Wall-clock time the last of ``ids`` finished (the tasks record it)."""
    return max(float(client.get(f"finished_at:{task_id}") or "inf") for task_id in ids)


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_sigterm_requeues_tasks_still_running_at_the_deadline(
    spawn: Spawn,
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
    producer: Celery,
    pool: str,
) -> None:
    env = worker_env(
        redis_url,
        tmp_path,
        "d1",
        worker_pool=pool,
        worker_concurrency="3",
        worker_shutdown_timeout_seconds="4",
    )
    worker = start_worker(spawn, env, "d1")
    short = [send(producer, seconds=1) for _ in range(2)]
    long = send(producer, seconds=0.1, first_run_seconds=600)
    wait_until(lambda: redis_client.scard("started") == 3, timeout=30, message="all started")

    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=40) == 0, worker.output()
    elapsed = time.monotonic() - signalled
    assert 4 <= elapsed < 20, worker.output()
    # prefork kills the pool process (Celery's cold path); a thread cannot be killed, so the
    # threads pool requeues and ends the process.
    assert ("threads cannot be stopped" in worker.output()) == (pool == "threads")
    # Requeued at once: back in its list, not stranded in unacked for the visibility timeout.
    assert waiting(redis_client) == 1
    assert redis_client.hlen(UNACKED_KEY) == 0
    assert redis_client.zcard(in_flight_key(QUEUE)) == 0
    for task_id in short:
        assert counter(redis_client, f"runs:{task_id}") == 1
        assert counter(redis_client, f"done:{task_id}") == 1
    assert counter(redis_client, f"done:{long}") == 0

    start_worker(spawn, worker_env(redis_url, tmp_path, "d2"), "d2")
    wait_until(lambda: counter(redis_client, f"done:{long}") == 1, timeout=30, message="rerun")
    assert counter(redis_client, f"runs:{long}") == 2
    for task_id in short:
        assert counter(redis_client, f"runs:{task_id}") == 1


def test_reconnects_after_redis_restarts(
    spawn: Spawn, own_redis: RedisServer, tmp_path: Path
) -> None:
    env = worker_env(own_redis.url(), tmp_path, "r")
    worker = start_worker(spawn, env, "r")
    heartbeat = Path(env["CELERIAC_WORKER_HEARTBEAT_FILE"])
    ready = Path(env["CELERIAC_WORKER_READY_FILE"])

    own_redis.stop()
    stopped = time.time()
    wait_until(lambda: not ready.exists(), timeout=30, message="not ready while Redis is down")
    # Liveness must not restart a worker because Redis is away: the heartbeat keeps moving
    # while the consumer retries the connection.
    wait_until(
        lambda: heartbeat.stat().st_mtime > stopped + 2.5,
        timeout=30,
        message=f"heartbeat during the outage; log:\n{worker.output()}",
    )
    own_redis.start()
    wait_until(ready.exists, timeout=60, message=f"ready again; log:\n{worker.output()}")

    app = create_app("test-worker-restart", Settings(broker_url=own_redis.url(), queues=(QUEUE,)))
    client = own_redis.client()
    try:
        task_id = send(app, seconds=0)
        wait_until(
            lambda: counter(client, f"done:{task_id}") == 1, timeout=30, message="task after"
        )
    finally:
        app.close()
        client.close()
    assert worker.process.poll() is None


def test_bad_app_is_one_line_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        celeriac_command("worker", "--app", "tests.integration.no_such_module:app"),
        env={**os.environ, **worker_env("redis://127.0.0.1:1/0", tmp_path, "bad")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "cannot import 'tests.integration.no_such_module'" in result.stderr


def result_meta(client: redis.Redis, task_id: str) -> dict[str, object] | None:
    raw = client.get(f"celery-task-meta-{task_id}")
    return None if raw is None else dict(json.loads(raw))


def finished(client: redis.Redis, task_id: str) -> bool:
    # With acks late the ack comes after the result is stored: nothing more will be written.
    return counter(client, f"done:{task_id}") == 1 and client.hlen(UNACKED_KEY) == 0


def test_results_stored_with_task_and_queue_unless_ignored(
    spawn: Spawn, redis_url: str, redis_client: redis.Redis, tmp_path: Path, producer: Celery
) -> None:
    start_worker(spawn, worker_env(redis_url, tmp_path, "r"), "r")
    ignored = send(producer, "tests.no_result")
    stored = send(producer)
    wait_until(lambda: finished(redis_client, ignored), timeout=30, message="ignored task done")
    wait_until(lambda: finished(redis_client, stored), timeout=30, message="stored task done")
    assert result_meta(redis_client, ignored) is None
    meta = result_meta(redis_client, stored)
    assert meta is not None
    assert (meta["status"], meta["result"]) == ("SUCCESS", 1)
    # result_extended: what the API shows for tasks other producers sent.
    assert (meta["name"], meta["queue"]) == ("tests.record", QUEUE)


def test_task_ignore_result_setting_stores_no_result(
    spawn: Spawn, redis_url: str, redis_client: redis.Redis, tmp_path: Path, producer: Celery
) -> None:
    env = worker_env(redis_url, tmp_path, "i", task_ignore_result="true")
    start_worker(spawn, env, "i")
    task_id = send(producer)
    wait_until(lambda: finished(redis_client, task_id), timeout=30, message="task done")
    assert result_meta(redis_client, task_id) is None


@pytest.mark.parametrize("log_tasks", ["false", "true"])
def test_per_task_log_lines_only_when_asked_failures_always(
    spawn: Spawn,
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
    producer: Celery,
    log_tasks: str,
) -> None:
    env = worker_env(redis_url, tmp_path, "l", log_level="INFO", worker_log_tasks=log_tasks)
    worker = start_worker(spawn, env, "l")
    task_id = send(producer)
    failed = producer.send_task("tests.fail", queue=QUEUE)
    failed.get(timeout=30, propagate=False)
    wait_until(lambda: finished(redis_client, task_id), timeout=30, message="task done")
    output = worker.output()
    assert f"Task tests.fail[{failed.id}] raised unexpected" in output
    assert (f"Task tests.record[{task_id}] received" in output) is (log_tasks == "true")
    assert (f"Task tests.record[{task_id}] succeeded" in output) is (log_tasks == "true")
