"""``celeriac inspect`` against a real Redis: messages published by Celery, held messages and
dead letters as the transport writes them, shown per queue and per worker group, as a table
and as JSON, through the real command; and through Sentinel, with a worker registered through
it. Live workers per group: ``test_worker_registry.py``."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celeriac.app import create_app
from celeriac.broker.keys import dead_letters_key, in_flight_key
from celeriac.settings import Settings
from celeriac.testing import (
    Child,
    RedisServer,
    SentinelGroup,
    celeriac_command,
    free_port,
    wait_until,
)
from tests.integration.support.workers import worker_env

pytestmark = pytest.mark.integration

SENTINEL_PASSWORD = "inspect-s3ntinel"
GROUPS = "web:\n  queues: [default]\nbatch:\n  queues: [cpu, reports]\n"


@pytest.fixture
def celery_app(redis_url: str) -> Iterator[Celery]:
    settings = Settings(broker_url=redis_url, queues=("default", "cpu", "reports"))
    app = create_app("test-inspect", settings)
    yield app
    app.close()


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        celeriac_command("inspect", *args),
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _fill(celery_app: Celery, client: redis.Redis) -> None:
    for _ in range(3):
        celery_app.send_task("t.a", queue="default")
    celery_app.send_task("t.b", queue="cpu", priority=7)
    # Held by workers as the transport records them: score = ETA, 0 without one.
    client.zadd(in_flight_key("default"), {"tag-1": 0, "tag-2": 0})
    client.zadd(in_flight_key("cpu"), {"tag-3": 0, "tag-4": time.time() + 600})
    client.zadd(dead_letters_key("reports"), {"id-1": time.time(), "id-2": time.time()})


def test_json_per_queue_and_group(
    celery_app: Celery, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    _fill(celery_app, redis_client)
    groups = tmp_path / "groups.yaml"
    groups.write_text(GROUPS)
    env = {"CELERIAC_BROKER_URL": redis_url, "CELERIAC_QUEUES": "default,cpu,reports"}
    done = _run(env, "--json", "--worker-groups-file", str(groups))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    queues = {q["name"]: q for q in report["queues"]}
    assert list(queues) == ["default", "cpu", "reports"]
    counts = {
        name: (q["waiting"], q["in_flight"], q["scheduled"], q["dead_letters"], q["backlog"])
        for name, q in queues.items()
    }
    assert counts == {
        "default": (3, 2, 0, 0, 5),
        "cpu": (1, 1, 1, 0, 2),
        "reports": (0, 0, 0, 2, 0),
    }
    assert 0 <= queues["default"]["oldest_age_seconds"] < 60
    assert queues["reports"]["oldest_age_seconds"] == 0.0
    groups_by_name = {g["name"]: g for g in report["groups"]}
    assert groups_by_name["web"]["queues"] == ["default"]
    batch = groups_by_name["batch"]
    assert batch["queues"] == ["cpu", "reports"]
    assert (batch["waiting"], batch["busy"], batch["scheduled"], batch["dead_letters"]) == (
        1,
        1,
        1,
        2,
    )
    # No worker runs: none live, none elsewhere.
    assert (batch["workers"], batch["pool"]) == (0, 0)
    assert report["other_workers"] == {"workers": 0, "pool": 0}
    assert report["workers"] == []
    assert "live for 3 intervals" in report["note"]


def test_table_by_default_with_the_default_group(
    celery_app: Celery, redis_client: redis.Redis, redis_url: str
) -> None:
    _fill(celery_app, redis_client)
    done = _run({"CELERIAC_BROKER_URL": redis_url, "CELERIAC_QUEUES": "default,cpu,reports"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "QUEUE",
        "WAITING",
        "IN",
        "FLIGHT",
        "SCHEDULED",
        "DEAD",
        "LETTERS",
        "OLDEST",
    ]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:4]}
    assert rows["default"][:4] == ["3", "2", "0", "0"]
    assert rows["default"][4].endswith("s")
    assert rows["reports"] == ["0", "0", "0", "2", "-"]
    group = lines[lines.index(next(line for line in lines if line.startswith("GROUP"))) + 1]
    assert group.split() == [
        "default",
        "default,cpu,reports",
        "4",
        "0",
        "0",
        "3",
        "1",
        "2",
        group.split()[-1],
    ]
    assert "WORKERS  POOL  BUSY" in done.stdout
    assert "other workers" not in done.stdout


def test_redis_unreachable_is_one_line_and_exit_1() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    done = _run({"CELERIAC_BROKER_URL": url})
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("celeriac: error: cannot read Redis at redis://")
    assert "hunter2" not in done.stderr


@pytest.mark.parametrize("password", [None, "not-it"])
def test_redis_password_missing_or_refused_says_where_it_is(password: str | None) -> None:
    """Not Redis's own "HELLO must be called with the client already authenticated"."""
    server = RedisServer(password="inspect-redis-pass").start()
    try:
        env = {"CELERIAC_BROKER_URL": f"redis://127.0.0.1:{server.port}/0"}
        if password is not None:
            env["CELERIAC_REDIS_PASSWORD"] = password
        done = _run(env)
    finally:
        server.close()
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    missing = "Redis requires a password and none was given"
    refused = "Redis refused the password"
    assert (missing if password is None else refused) in lines[0]
    assert "HELLO" not in lines[0]
    assert "CELERIAC_REDIS_PASSWORD" in lines[0]
    assert ".celeriac/stack.env" in lines[0]
    assert "Secret" in lines[0]
    assert "not-it" not in done.stderr


def test_bad_settings_exit_2() -> None:
    done = _run({"CELERIAC_WORKER_GROUPS_FILE": "/nonexistent/groups.yaml"})
    assert done.returncode == 2
    assert done.stderr.startswith("celeriac: configuration error: CELERIAC_WORKER_GROUPS_FILE=")


def test_through_sentinel_with_a_worker_registered_through_it(
    spawn: Callable[..., Child], tmp_path: Path
) -> None:
    with SentinelGroup(SENTINEL_PASSWORD, replicas=0, sentinels=1, quorum=1) as group:
        sentinel_env = {
            "CELERIAC_BROKER_URL": group.url(),
            "CELERIAC_REDIS_SENTINEL_MASTER": group.master_name,
            "CELERIAC_REDIS_PASSWORD": SENTINEL_PASSWORD,
        }
        worker = spawn(
            celeriac_command("worker"),
            env=worker_env(
                group.url(),
                tmp_path,
                "w",
                queues="default",
                worker_hostname="w@sentinel",
                worker_concurrency="3",
                worker_pool="threads",
            )
            | sentinel_env,
            name="worker",
        )
        settings = Settings(
            broker_url=group.url(),
            redis_password=SENTINEL_PASSWORD,
            redis_sentinel_master=group.master_name,
            queues=("default", "cpu"),
        )
        producer = create_app("test-inspect-sentinel", settings)
        try:
            # Nobody consumes cpu: its messages wait.
            for _ in range(2):
                producer.send_task("t.b", queue="cpu")
        finally:
            producer.close()
        groups = tmp_path / "groups.yaml"
        groups.write_text("web:\n  queues: [default]\nbatch:\n  queues: [cpu]\n")
        env = sentinel_env | {"CELERIAC_QUEUES": "default,cpu"}

        def registered() -> dict[str, Any] | None:
            worker.check_alive()
            done = _run(env, "--json", "--worker-groups-file", str(groups))
            assert done.returncode == 0, done.stderr
            report: dict[str, Any] = json.loads(done.stdout)
            return report if report["groups"][0]["workers"] == 1 else None

        report = wait_until(registered, timeout=60, message="the worker seen through Sentinel")
        web, batch = report["groups"]
        assert (web["name"], web["workers"], web["pool"]) == ("web", 1, 3)
        assert (batch["name"], batch["workers"], batch["waiting"]) == ("batch", 0, 2)
        assert [w["name"] for w in report["workers"]] == ["w@sentinel"]
        # The table too, and the password never shown.
        done = _run(env, "--worker-groups-file", str(groups))
        assert done.returncode == 0, done.stderr
        assert SENTINEL_PASSWORD not in done.stdout + done.stderr
        rows = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line}
        assert rows["web"][:5] == ["web", "default", "0", "1", "3"]
        assert rows["cpu"][:2] == ["cpu", "2"]
        worker.terminate()
        worker.wait(timeout=30)
