"""The worker registry (``celeriac.worker.registry``) with real workers and a real Redis, read
through ``celeriac inspect``.

Three worker processes: two of group ``web`` (queue ``default``), one of group ``batch``
(``cpu``, ``reports``), plus an entry written in-process for a worker consuming no group's
queues. ``inspect`` counts 2 and 1 live workers with their pool sums and the other worker
apart; a worker shut down gracefully is gone as soon as it has exited; a SIGKILLed one within
its liveness bound (3 refresh intervals), and its keys are pruned by the others' refreshes.
In-process: pruning removes at most a batch per refresh and clears both keys; a Redis outage
is one warning, and the entry comes back after it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from celeriac.broker.keys import WORKER_INFO_KEY, WORKERS_KEY
from celeriac.groups import WorkerGroup
from celeriac.inspection.report import Report, read_report
from celeriac.settings import DEFAULT_PRIORITY_STEPS
from celeriac.testing import Child, RedisServer, celeriac_command, wait_until
from celeriac.worker.registry import (
    LIVE_INTERVALS,
    PRUNE_BATCH,
    WorkerRegistry,
    info_json,
)
from tests.integration.support import workers

pytestmark = pytest.mark.integration

Spawn = Callable[..., Child]
GROUPS = "web:\n  queues: [default]\nbatch:\n  queues: [reports, cpu]\n"
WORKER_GROUPS = (WorkerGroup("web", ("default",)), WorkerGroup("batch", ("reports", "cpu")))
# Short, so a killed worker goes within seconds; the default is 10.
INTERVAL_SECONDS = 1.0
LIVE_SECONDS = LIVE_INTERVALS * INTERVAL_SECONDS


def start_workers(
    spawn: Spawn, broker_url: str, tmp_path: Path, specs: dict[str, dict[str, str]]
) -> dict[str, Child]:
    """Start every worker at once, then wait until each is ready (connected and consuming)."""
    children = {}
    for name, settings in specs.items():
        env = workers.worker_env(
            broker_url,
            tmp_path,
            name,
            worker_hostname=f"{name}@test",
            worker_registry_interval_seconds=f"{INTERVAL_SECONDS:g}",
            **settings,
        )
        children[name] = spawn(celeriac_command("worker"), env=env, name=name)
    for name, child in children.items():
        ready = tmp_path / f"{name}.ready"

        def is_ready(ready: Path = ready, child: Child = child) -> bool:
            child.check_alive()
            return ready.exists()

        wait_until(is_ready, timeout=60, message=f"{name} ready")
    return children


def report(client: redis.Redis) -> Report:
    return read_report(client, [], WORKER_GROUPS, DEFAULT_PRIORITY_STEPS)


def counts(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """Per group: (live workers, pool processes)."""
    return {g.name: (g.workers, g.pool) for g in report(client).groups}


def inspect_json(broker_url: str, groups_file: Path) -> Any:
    done = subprocess.run(
        celeriac_command("inspect", "--json", "--worker-groups-file", str(groups_file)),
        env={"PATH": "/usr/bin:/bin", "CELERIAC_BROKER_URL": broker_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_inspect_counts_live_workers_per_group_and_forgets_stopped_and_killed_ones(
    spawn: Spawn, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    groups_file = tmp_path / "groups.yaml"
    groups_file.write_text(GROUPS)
    children = start_workers(
        spawn,
        redis_url,
        tmp_path,
        {
            "web-1": {"queues": "default", "worker_concurrency": "2"},
            "web-2": {"queues": "default", "worker_concurrency": "1"},
            "batch-1": {
                "queues": "cpu,reports",
                "worker_concurrency": "4",
                "worker_pool": "threads",
            },
        },
    )
    # A worker of no group, written as a worker writes itself (its own client: stop closes it).
    other = WorkerRegistry(
        redis.Redis.from_url(redis_url), "other@test", ["cpu", "default"], 5, interval=60
    )
    assert other.refresh()
    try:
        wait_until(
            lambda: counts(redis_client) == {"web": (2, 3), "batch": (1, 4)},
            timeout=30,
            message="every worker registered",
        )
        data = inspect_json(redis_url, groups_file)
        groups = {g["name"]: g for g in data["groups"]}
        assert (groups["web"]["workers"], groups["web"]["pool"]) == (2, 3)
        assert (groups["batch"]["workers"], groups["batch"]["pool"]) == (1, 4)
        assert data["other_workers"] == {"workers": 1, "pool": 5}
        assert data["workers"] == [
            {"name": "batch-1@test", "queues": ["cpu", "reports"], "pool": 4, "group": "batch"},
            {"name": "other@test", "queues": ["cpu", "default"], "pool": 5, "group": None},
            {"name": "web-1@test", "queues": ["default"], "pool": 2, "group": "web"},
            {"name": "web-2@test", "queues": ["default"], "pool": 1, "group": "web"},
        ]
        assert json.loads(redis_client.hget(WORKER_INFO_KEY, "web-1@test") or "") == {
            "queues": ["default"],
            "pool": 2,
        }

        # Shut down gracefully: gone as soon as the process has exited, no waiting.
        children["web-2"].signal(signal.SIGTERM)
        assert children["web-2"].wait(timeout=30) == 0
        assert counts(redis_client) == {"web": (1, 2), "batch": (1, 4)}
        assert redis_client.zscore(WORKERS_KEY, "web-2@test") is None
        assert not redis_client.hexists(WORKER_INFO_KEY, "web-2@test")

        # SIGKILLed: no shutdown runs. Still counted right after (its last write is at most
        # one interval old), gone within its bound.
        os.killpg(children["batch-1"].pid, signal.SIGKILL)
        killed = time.monotonic()
        children["batch-1"].wait(timeout=10)
        assert counts(redis_client)["batch"] == (1, 4)
        wait_until(
            lambda: counts(redis_client)["batch"] == (0, 0),
            timeout=LIVE_SECONDS + 5,
            message="the killed worker no longer live",
        )
        gone_after = time.monotonic() - killed
        assert gone_after <= LIVE_SECONDS + 1, gone_after
        # And pruned from both keys by web-1's next refresh: only the live workers remain.
        wait_until(
            lambda: redis_client.zcard(WORKERS_KEY) == redis_client.hlen(WORKER_INFO_KEY) == 2,
            timeout=INTERVAL_SECONDS + 5,
            message="the killed worker's entry pruned",
        )
        assert set(redis_client.hkeys(WORKER_INFO_KEY)) == {b"web-1@test", b"other@test"}
        assert counts(redis_client) == {"web": (1, 2), "batch": (0, 0)}
        assert children["web-1"].process.poll() is None
    finally:
        other.stop()
    assert redis_client.zrange(WORKERS_KEY, 0, -1) == [b"web-1@test"]


def test_pruning_takes_a_batch_per_refresh_and_clears_both_keys(
    redis_url: str, redis_client: redis.Redis
) -> None:
    dead = PRUNE_BATCH * 2 + 10
    # Entries whose time passed long ago (score 1 s after the epoch), as killed workers leave.
    redis_client.zadd(WORKERS_KEY, {f"dead-{i}": 1 for i in range(dead)})
    redis_client.hset(
        WORKER_INFO_KEY, mapping={f"dead-{i}": info_json(["default"], 1) for i in range(dead)}
    )
    registry = WorkerRegistry(
        redis.Redis.from_url(redis_url), "live@test", ["default"], 2, interval=60
    )
    try:
        remaining = []
        for _ in range(3):
            assert registry.refresh()
            remaining.append(
                (redis_client.zcard(WORKERS_KEY) - 1, redis_client.hlen(WORKER_INFO_KEY) - 1)
            )
        assert remaining == [
            (dead - PRUNE_BATCH, dead - PRUNE_BATCH),
            (dead - 2 * PRUNE_BATCH, dead - 2 * PRUNE_BATCH),
            (0, 0),
        ]
        workers_now = report(redis_client).workers
        assert [(w.name, w.queues, w.pool) for w in workers_now] == [("live@test", ("default",), 2)]
        # Its score is Redis' TIME plus 3 intervals.
        seconds, micros = redis_client.time()
        score = redis_client.zscore(WORKERS_KEY, "live@test")
        assert score is not None
        assert 0 < score - (seconds + micros / 1e6) <= LIVE_INTERVALS * 60
    finally:
        registry.stop()
    assert redis_client.zcard(WORKERS_KEY) == redis_client.hlen(WORKER_INFO_KEY) == 0


def test_a_redis_outage_is_one_warning_and_the_entry_comes_back(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis.from_url(own_redis.url(), socket_timeout=1, socket_connect_timeout=1)
    registry = WorkerRegistry(client, "w@test", ["default"], 2, interval=60)
    caplog.set_level(logging.INFO, logger="celeriac.worker.registry")
    try:
        assert registry.refresh()

        def warnings() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

        for outage in (1, 2):
            own_redis.kill()  # SIGKILL: the entry is lost with it (no persistence)
            assert [registry.refresh() for _ in range(3)] == [False, False, False]
            assert len(warnings()) == outage, warnings()
            assert "worker registry: cannot write to Redis" in warnings()[-1]
            own_redis.start()
            assert registry.refresh()
            assert caplog.records[-1].getMessage() == "worker registry: written to Redis again"
            with own_redis.client() as check:
                assert check.hget(WORKER_INFO_KEY, "w@test") == info_json(["default"], 2).encode()
                assert check.zscore(WORKERS_KEY, "w@test") is not None
        # Stopped during a third outage: no removal tried, nothing more logged.
        own_redis.kill()
        assert not registry.refresh()
        registry.stop()
        assert len(warnings()) == 3, warnings()
    finally:
        registry.stop()
