"""Real beats against a real Redis: one fires, the other stands by, state survives restarts.

Beat messages are read straight from the queue list in Redis (kombu stores each as a JSON
string). Every entry here sets ``expires: 60``, which Celery turns into an absolute time at
publishing, so each message carries the moment it was sent.
"""

from __future__ import annotations

import itertools
import json
import shlex
import signal
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from celeriac import heartbeat
from celeriac.testing import Child, RedisServer, celeriac_command, wait_until

pytestmark = pytest.mark.integration

Spawn = Callable[..., Child]
EXPIRES_SECONDS = 60
SENT = "Sending due task"
ACQUIRED = "acquired the lock"
EVERY_SECOND = (
    f"tick: {{task: celeriac.demo.add, every: 1, args: [1, 2], expires: {EXPIRES_SECONDS}}}\n"
)


def beat_env(
    broker_url: str, schedule: Path, heartbeat_file: Path, *, lock_timeout: float, **extra: str
) -> dict[str, str]:
    return {
        "CELERIAC_BROKER_URL": broker_url,
        "CELERIAC_APP": "celeriac.demo:app",
        "CELERIAC_BEAT_SCHEDULE_FILE": str(schedule),
        "CELERIAC_BEAT_MAX_LOOP_INTERVAL_SECONDS": "1",
        "CELERIAC_BEAT_LOCK_TIMEOUT_SECONDS": str(lock_timeout),
        "CELERIAC_BEAT_HEARTBEAT_FILE": str(heartbeat_file),
        "CELERIAC_LOG_LEVEL": "INFO",
        **extra,
    }


def published(client: redis.Redis, queue: str = "default") -> list[dict[str, Any]]:
    """Messages waiting in ``queue``, oldest first."""
    messages = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
    return sorted(messages, key=sent_at)


def sent_at(message: dict[str, Any]) -> datetime:
    expires = datetime.fromisoformat(message["headers"]["expires"])
    return expires - timedelta(seconds=EXPIRES_SECONDS)


def gaps(messages: list[dict[str, Any]]) -> list[float]:
    times = [sent_at(message) for message in messages]
    return [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]


def meta(client: redis.Redis, name: str) -> dict[str, Any]:
    raw = client.hget(f"celeriac:beat:{name}", "meta")
    assert raw is not None, f"no state in Redis for entry {name}"
    loaded: dict[str, Any] = json.loads(raw)
    return loaded


def wait_for_log(child: Child, text: str, timeout: float = 30) -> None:
    wait_until(
        lambda: text in child.output() or child.process.poll() is not None,
        timeout=timeout,
        message=f"{text!r} in {child.log_path.name}",
    )
    assert text in child.output(), f"beat exited early:\n{child.output()}"


def stop(child: Child) -> None:
    child.signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 0, child.output()


def test_two_beats_fire_each_interval_once_and_hand_over_on_sigterm(
    spawn: Spawn, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text(EVERY_SECOND)
    # A lock timeout far above the observed takeover time proves the lock was released,
    # not left to expire.
    env_a = beat_env(redis_url, schedule, tmp_path / "a.heartbeat", lock_timeout=20)
    env_b = beat_env(redis_url, schedule, tmp_path / "b.heartbeat", lock_timeout=20)
    first = spawn(celeriac_command("beat"), env=env_a, name="beat-a")
    wait_for_log(first, ACQUIRED)
    second = spawn(celeriac_command("beat"), env=env_b, name="beat-b")
    wait_for_log(second, "standing by")

    # Both run for several intervals: only the lock holder fires.
    before = len(published(redis_client))
    wait_until(lambda: len(published(redis_client)) >= before + 4, timeout=30, message="4 runs")
    # The standby beat keeps ticking (its liveness probe passes) while it waits.
    wait_until(
        lambda: (heartbeat.age_seconds(tmp_path / "b.heartbeat") or 99) < 2,
        timeout=30,
        message="a fresh heartbeat from the standby beat",
    )
    assert SENT not in second.output()

    stopped_at = time.monotonic()
    stop(first)
    assert "released the lock" in first.output()
    wait_for_log(second, ACQUIRED)
    takeover_seconds = time.monotonic() - stopped_at
    assert takeover_seconds < 10, f"takeover took {takeover_seconds:.1f}s"

    handed_over = len(published(redis_client))
    wait_until(
        lambda: len(published(redis_client)) >= handed_over + 3,
        timeout=30,
        message="3 runs from the second beat",
    )
    stop(second)

    messages = published(redis_client)
    log_a, log_b = first.output(), second.output()
    # Exactly one message per run, each run announced by exactly one beat ...
    assert log_a.count(SENT) + log_b.count(SENT) == len(messages)
    assert meta(redis_client, "tick")["total_run_count"] == len(messages)
    # ... the second beat sent nothing before it held the lock ...
    assert log_b.index(ACQUIRED) < log_b.index(SENT)
    # ... and no interval fired twice, across the handover too.
    assert min(gaps(messages)) >= 0.8, gaps(messages)
    assert {m["headers"]["task"] for m in messages} == {"celeriac.demo.add"}


def test_killed_beat_is_replaced_when_its_lock_expires(spawn: Spawn, tmp_path: Path) -> None:
    # A password-protected Redis: beat must use the password and never print it.
    password = "s3cret-beat-pw"
    server = RedisServer(password=password).start()
    try:
        broker_url = f"redis://127.0.0.1:{server.port}/0"
        client = server.client()
        schedule = tmp_path / "schedule.yaml"
        schedule.write_text(EVERY_SECOND)
        extra = {"CELERIAC_REDIS_PASSWORD": password}
        lock_timeout = 3.0
        first = spawn(
            celeriac_command("beat"),
            env=beat_env(broker_url, schedule, tmp_path / "a.hb", lock_timeout=3, **extra),
            name="beat-a",
        )
        wait_for_log(first, ACQUIRED)
        second = spawn(
            celeriac_command("beat"),
            env=beat_env(broker_url, schedule, tmp_path / "b.hb", lock_timeout=3, **extra),
            name="beat-b",
        )
        wait_for_log(second, "standing by")
        wait_until(lambda: len(published(client)) >= 2, timeout=30, message="2 runs")

        # SIGKILL: no release; the standby waits for the lock to expire, then takes over.
        first.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        first.wait(timeout=10)
        wait_for_log(second, ACQUIRED)
        takeover_seconds = time.monotonic() - killed_at
        # The holder extended the lock to 3 s at most 1 s before it died: at least ~2 s left.
        assert 1.5 <= takeover_seconds < lock_timeout + 12, takeover_seconds

        count = len(published(client))
        wait_until(lambda: len(published(client)) >= count + 2, timeout=30, message="2 more runs")
        stop(second)
        messages = published(client)
        assert first.output().count(SENT) + second.output().count(SENT) == len(messages)
        assert min(gaps(messages)) >= 0.8, gaps(messages)
        for child in (first, second):
            assert password not in child.output()
    finally:
        server.close()


def test_restart_keeps_last_run_and_drops_removed_entries(
    spawn: Spawn, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    schedule = tmp_path / "schedule.yaml"
    kept = (
        f"kept: {{task: celeriac.demo.add, every: 2, args: [1, 1], expires: {EXPIRES_SECONDS}}}\n"
    )
    gone = "gone: {task: celeriac.demo.sleep, every: 3600}\n"
    schedule.write_text(kept + gone)
    # Run from an empty working directory to show beat writes no schedule file to disk.
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    command = ["sh", "-c", f'cd {shlex.quote(str(workdir))} && exec "$0" "$@"']
    command += celeriac_command("beat")
    env = beat_env(redis_url, schedule, tmp_path / "beat.heartbeat", lock_timeout=5)

    first = spawn(command, env=env, name="beat-first")
    wait_for_log(first, "2 new, 0 kept")
    assert redis_client.exists("celeriac:beat:gone")
    # A new interval entry first fires one interval after it was added, not at once.
    wait_until(lambda: len(published(redis_client)) >= 1, timeout=30, message="the first run")
    stop(first)
    state = meta(redis_client, "kept")
    assert state["total_run_count"] == 1

    schedule.write_text(kept)
    second = spawn(command, env=env, name="beat-second")
    wait_for_log(second, "1 kept their last run); removed: gone")
    assert not redis_client.exists("celeriac:beat:gone")
    members = redis_client.zrange("celeriac:beat::schedule", 0, -1)
    assert members == [b"celeriac:beat:kept"]
    wait_until(lambda: len(published(redis_client)) >= 2, timeout=30, message="the second run")
    stop(second)

    messages = published(redis_client)
    assert len(messages) == 2
    # Not re-fired early by the restart: the second run is a full interval after the first ...
    assert gaps(messages)[0] >= 1.8, gaps(messages)
    # ... and the entry kept its state (a reset would restart the count at 1).
    assert meta(redis_client, "kept")["total_run_count"] == 2
    assert all(m["headers"]["argsrepr"] == "[1, 1]" for m in messages)
    assert list(workdir.iterdir()) == []


def test_beat_waits_out_a_redis_outage(
    spawn: Spawn, own_redis: RedisServer, tmp_path: Path
) -> None:
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text(EVERY_SECOND)
    own_redis.stop()
    beat_heartbeat = tmp_path / "beat.heartbeat"
    child = spawn(
        celeriac_command("beat"),
        env=beat_env(own_redis.url(), schedule, beat_heartbeat, lock_timeout=5),
        name="beat",
    )
    wait_for_log(child, "Redis is unavailable")
    # Still ticking: a broker outage must not fail the liveness probe.
    wait_until(
        lambda: (heartbeat.age_seconds(beat_heartbeat) or 99) < 2,
        timeout=30,
        message="a fresh heartbeat during the outage",
    )
    assert child.output().count("Redis is unavailable") == 1

    own_redis.start()
    wait_for_log(child, ACQUIRED)
    wait_until(lambda: published(own_redis.client()), timeout=30, message="a run after the outage")
    assert "Redis is reachable again" in child.output()
    stop(child)
