"""Silent consumers: a worker that could take waiting messages but takes none fails liveness.

``celeriac probe worker`` fails while the worker's stalled marker exists
(``celeriac.worker.stall``). Deterministically: a worker whose consumer is cancelled through
Celery's remote control, with messages waiting and free processes, fails its probe, and passes
again once it consumes. Under faults: Redis SIGKILLed and restarted and every connection
killed while workers idle, then a burst: every worker consumes again, or its probe fails.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from celeriac.app import create_app
from celeriac.broker.keys import priority_list_keys
from celeriac.settings import DEFAULT_PRIORITY_STEPS, Settings
from celeriac.testing import Child, RedisServer, celeriac_command, wait_until
from tests.integration.support import workers
from tests.support import REPO_ROOT

pytestmark = pytest.mark.integration

Spawn = Callable[..., Child]
QUEUE = "stall"
TASKS_APP = "tests.integration.apps.worker_tasks:app"
# Short, so the tests need not wait a minute; the default is 60.
STALL_SECONDS = "3"
# Every worker must consume again, or fail its probe, within this after the burst (the issue's
# bound; the stall time plus a probe are well inside it).
RECOVERY_DEADLINE_SECONDS = 60


def worker_env(broker_url: str, tmp_path: Path, name: str) -> dict[str, str]:
    settings = {
        "app": TASKS_APP,
        "queues": QUEUE,
        "worker_hostname": f"{name}@test",
        "worker_stall_seconds": STALL_SECONDS,
    }
    return workers.worker_env(broker_url, tmp_path, name, **settings) | {
        "PYTHONPATH": str(REPO_ROOT)
    }


def start_worker(spawn: Spawn, env: dict[str, str], name: str) -> Child:
    child = spawn(celeriac_command("worker"), env=env, name=name)
    ready = Path(env["CELERIAC_WORKER_READY_FILE"])
    wait_until(lambda: _ready(ready, child), timeout=60, message=f"{name} ready")
    return child


def _ready(ready: Path, child: Child) -> bool:
    child.check_alive()  # a worker that exited fails the test, with its log
    return ready.exists()


def probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        celeriac_command("probe", "worker"),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def waiting(client: redis.Redis) -> int:
    return sum(int(client.llen(key)) for key in priority_list_keys(QUEUE, DEFAULT_PRIORITY_STEPS))


def producer_for(url: str) -> Celery:
    return create_app("test-stall-producer", Settings(broker_url=url, queues=(QUEUE,)))


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    app = producer_for(redis_url)
    yield app
    app.close()


def test_probe_fails_while_the_consumer_takes_nothing_and_passes_once_it_consumes(
    spawn: Spawn, redis_url: str, redis_client: redis.Redis, tmp_path: Path, producer: Celery
) -> None:
    env = worker_env(redis_url, tmp_path, "s")
    worker = start_worker(spawn, env, "s")
    assert probe(env).returncode == 0
    # The consumer stops taking messages (as a silent consumer does) while connected, its
    # event loop and heartbeat alive and both pool processes free.
    replies = producer.control.cancel_consumer(QUEUE, destination=["s@test"], reply=True)
    assert replies, "no reply to cancel_consumer"
    assert "ok" in replies[0]["s@test"], replies
    ids = [producer.send_task("tests.whoami", queue=QUEUE, ignore_result=True).id for _ in range(3)]
    assert ids
    wait_until(
        lambda: probe(env).returncode == 1,
        timeout=30,
        message=f"the probe to fail on the stalled consumer; log:\n{worker.output()}",
    )
    failed = probe(env)
    assert failed.returncode == 1
    assert "worker unhealthy: consumer stalled: 3 messages wait in its queues" in failed.stderr
    assert waiting(redis_client) == 3  # nothing was taken meanwhile
    assert "consumer stalled, liveness fails from now" in worker.output()

    # It consumes again: every message is taken and the probe passes.
    replies = producer.control.add_consumer(QUEUE, destination=["s@test"], reply=True)
    assert replies, "no reply to add_consumer"
    assert "ok" in replies[0]["s@test"], replies
    wait_until(lambda: waiting(redis_client) == 0, timeout=30, message="the queue drained")
    wait_until(
        lambda: probe(env).returncode == 0,
        timeout=30,
        message=f"the probe to pass again; log:\n{worker.output()}",
    )
    assert redis_client.smembers("hosts") == {b"s@test"}
    assert worker.process.poll() is None


def client_count(server: RedisServer) -> int:
    """Connections to ``server`` other than the one asking."""
    with server.client() as client:
        return len(client.client_list()) - 1


def kill_connections(server: RedisServer) -> int:
    """CLIENT KILL every connection but our own; returns how many were killed."""
    killed = 0
    with server.client() as client:
        own = int(client.client_id())
        for info in client.client_list():
            if int(info["id"]) != own:
                client.client_kill_filter(_id=info["id"])
                killed += 1
    return killed


def test_after_redis_restarts_and_killed_connections_every_worker_consumes_or_fails_its_probe(
    # Redis before the children: torn down after them, so they stop against a live Redis.
    own_redis: RedisServer,
    spawn: Spawn,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = own_redis.url()
    names = ["w1", "w2"]
    envs = {name: worker_env(url, tmp_path, name) for name in names}
    children = {name: start_worker(spawn, envs[name], name) for name in names}
    # While the workers idle: Redis SIGKILLed and restarted, then every connection killed,
    # twice over.
    ready = [Path(env["CELERIAC_WORKER_READY_FILE"]) for env in envs.values()]
    for _ in range(2):
        own_redis.kill()
        own_redis.start()
        # The ready files may still exist from before the fault: wait for connections too.
        wait_until(
            lambda: all(path.exists() for path in ready) and client_count(own_redis) > 0,
            timeout=60,
            message="workers connected again",
        )
        assert kill_connections(own_redis) > 0
    # A burst that one worker alone needs about 20 s for (pool 2, 0.2 s each), well over the
    # stall time: a worker that takes nothing is seen to stall before the queue empties.
    app = producer_for(url)
    client = own_redis.client()
    try:
        with app.producer_or_acquire() as publisher:
            for _ in range(200):
                app.send_task(
                    "tests.whoami",
                    kwargs={"seconds": 0.2},
                    queue=QUEUE,
                    producer=publisher,
                    ignore_result=True,
                )
        outcome: dict[str, str] = {}

        def each_consumed_or_failed_its_probe() -> bool:
            hosts = {
                str(host, "utf-8") if isinstance(host, bytes) else host
                for host in client.smembers("hosts")
            }
            for name in names:
                children[name].check_alive()
                if name in outcome:
                    continue
                if f"{name}@test" in hosts:
                    outcome[name] = "consumed"
                elif probe(envs[name]).returncode == 1:
                    outcome[name] = "stalled: probe failed"
            return len(outcome) == len(names)

        wait_until(
            each_consumed_or_failed_its_probe,
            timeout=RECOVERY_DEADLINE_SECONDS,
            message="every worker consumes again or fails its probe",
        )
    finally:
        app.close()
        client.close()
    with capsys.disabled():
        print(f"\nafter Redis restarts and connection kills: {outcome}")
    assert set(outcome) == set(names)
