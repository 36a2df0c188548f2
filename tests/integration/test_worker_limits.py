"""``CELERIAC_TASK_LIMITS`` on a real worker: soft and hard time limits, rate limits, and the
hard limit counted in the worker's metrics."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from celeriac.app import create_app
from celeriac.settings import Settings
from celeriac.testing import Child, celeriac_command, free_port, wait_until
from celeriac.worker.metrics import TASKS_TIME_LIMIT_EXCEEDED
from tests.integration.support import workers
from tests.support import REPO_ROOT

pytestmark = pytest.mark.integration

Spawn = Callable[..., Child]
QUEUE = "limits"
TASKS_APP = "tests.integration.apps.worker_tasks:app"
LIMITS = {
    "tests.sleep": {"soft_time_limit": 1, "time_limit": 30},
    "tests.record": {"time_limit": 1, "rate_limit": "7/m"},
    "tests.not_a_task": {"rate_limit": "1/s"},
}


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    app = create_app("test-limits-producer", Settings(broker_url=redis_url, queues=(QUEUE,)))
    yield app
    app.close()


@pytest.fixture
def worker(spawn: Spawn, redis_url: str, tmp_path: Path) -> tuple[Child, int]:
    port = free_port()
    env = workers.worker_env(
        redis_url,
        tmp_path,
        "l",
        app=TASKS_APP,
        queues=QUEUE,
        worker_hostname="l@test",
        worker_metrics_port=str(port),
        task_limits=json.dumps(LIMITS),
    ) | {"PYTHONPATH": str(REPO_ROOT)}
    child = spawn(celeriac_command("worker"), env=env, name="l")
    ready = Path(env["CELERIAC_WORKER_READY_FILE"])
    wait_until(lambda: _ready(ready, child), timeout=60, message="ready")
    return child, port


def _ready(ready: Path, child: Child) -> bool:
    child.check_alive()  # a worker that exited fails the test, with its log
    return ready.exists()


def result_meta(client: redis.Redis, task_id: str) -> dict[str, object] | None:
    raw = client.get(f"celery-task-meta-{task_id}")
    return None if raw is None else dict(json.loads(raw))


def finished_meta(client: redis.Redis, task_id: str) -> dict[str, object]:
    def done() -> bool:
        meta = result_meta(client, task_id)
        return meta is not None and meta["status"] in ("SUCCESS", "FAILURE")

    wait_until(done, timeout=60, message=f"task {task_id} finished")
    meta = result_meta(client, task_id)
    assert meta is not None
    return meta


def time_limit_exceeded(port: int, task: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == TASKS_TIME_LIMIT_EXCEEDED and sample.labels.get("task") == task:
                return float(sample.value)
    return 0.0


def test_the_worker_reports_the_configured_limits_of_each_task(
    worker: tuple[Child, int], producer: Celery
) -> None:
    child, _ = worker
    # Ready means consuming tasks; the broadcast subscription comes with the event loop's first
    # poll, and a broadcast sent before it is lost (on a busy machine, seen in CI).
    wait_until(
        lambda: producer.control.ping(destination=["l@test"], timeout=1),
        timeout=30,
        message="the worker answers broadcasts",
    )
    replies = producer.control.inspect(destination=["l@test"], timeout=10).registered(
        "rate_limit", "time_limit", "soft_time_limit"
    )
    assert replies is not None, child.output()
    registered = set(replies["l@test"])
    assert "tests.record [rate_limit=7/m time_limit=1.0]" in registered
    assert "tests.sleep [time_limit=30.0 soft_time_limit=1.0]" in registered
    assert "tests.pid" in registered  # no limits: none shown
    assert "the app has no task 'tests.not_a_task': its limits do nothing" in child.output()


def test_over_its_soft_limit_a_task_gets_soft_time_limit_exceeded(
    worker: tuple[Child, int], producer: Celery, redis_client: redis.Redis
) -> None:
    task_id = producer.send_task("tests.sleep", args=(20,), queue=QUEUE).id
    meta = finished_meta(redis_client, task_id)
    assert meta["status"] == "FAILURE"
    result = meta["result"]
    assert isinstance(result, dict)
    assert result["exc_type"] == "SoftTimeLimitExceeded"


def test_over_its_hard_limit_its_process_is_killed_and_counted(
    worker: tuple[Child, int], producer: Celery, redis_client: redis.Redis
) -> None:
    child, port = worker
    assert time_limit_exceeded(port, "tests.record") == 0.0
    pids_before = producer.send_task("tests.pid", queue=QUEUE).id
    task_id = producer.send_task("tests.record", kwargs={"seconds": 20}, queue=QUEUE).id
    meta = finished_meta(redis_client, task_id)
    assert meta["status"] == "FAILURE"
    result = meta["result"]
    assert isinstance(result, dict)
    assert result["exc_type"] == "TimeLimitExceeded"
    # It started and never finished: its process was killed at the limit.
    assert redis_client.get(f"runs:{task_id}") == b"1"
    assert redis_client.get(f"done:{task_id}") is None
    wait_until(
        lambda: time_limit_exceeded(port, "tests.record") == 1.0,
        timeout=30,
        message=f"the counter to rise; log:\n{child.output()}",
    )
    assert "Hard time limit (1.0s) exceeded for tests.record" in child.output()
    # The worker goes on with a new pool process.
    after = producer.send_task("tests.record", kwargs={"seconds": 0}, queue=QUEUE).id
    assert finished_meta(redis_client, after)["status"] == "SUCCESS"
    assert finished_meta(redis_client, pids_before)["status"] == "SUCCESS"
    # Counted once, though Celery reports the timeout twice.
    assert time_limit_exceeded(port, "tests.record") == 1.0
    assert child.process.poll() is None
