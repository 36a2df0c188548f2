"""``celeriac beat`` with another scheduler class (CELERIAC_BEAT_SCHEDULER): django-celery-beat's
DatabaseScheduler on real PostgreSQL, behind celeriac's Redis lock.

Entries are written through Django's ORM (``manage.py shell``), as the admin writes them. No
worker runs: beat's messages are read from the queue in Redis, each with its send time (every
entry sets ``expire_seconds``, which Celery turns into an absolute time at publishing).
"""

from __future__ import annotations

import itertools
import json
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from celeriac.testing import Child, celeriac_command, wait_until
from tests.integration.support.django_example import django_env, manage
from tests.integration.support.postgres import PostgresServer

pytestmark = pytest.mark.integration

Spawn = Callable[..., Child]
SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
EXPIRES_SECONDS = 60
LOOP_SECONDS = 1.0

UPSERT = """
import json, time
from django_celery_beat.models import IntervalSchedule, PeriodicTask
every, _ = IntervalSchedule.objects.get_or_create(every={every}, period=IntervalSchedule.SECONDS)
PeriodicTask.objects.update_or_create(name={name!r}, defaults=dict(
    task="orders.pay", interval=every, args=json.dumps({args!r}), expire_seconds={expires},
    enabled={enabled!r}))
print(time.time())
"""


def upsert(
    env: dict[str, str], name: str, every: int, args: list[int], enabled: bool = True
) -> float:
    """Add or change entry ``name`` through the ORM; when it was saved (epoch seconds)."""
    code = UPSERT.format(
        name=name, every=every, args=args, expires=EXPIRES_SECONDS, enabled=enabled
    )
    return float(manage(env, "shell", "-c", code).split()[-1])


def sent(client: redis.Redis, name: str) -> list[tuple[float, list[Any]]]:
    """(send time, args) of each message of entry ``name`` waiting in the queue, oldest first."""
    found = []
    for raw in client.lrange("default", 0, -1):
        message = json.loads(raw)
        headers = message["headers"]
        if headers.get("periodic_task_name") != name:
            continue
        at = datetime.fromisoformat(headers["expires"]) - timedelta(seconds=EXPIRES_SECONDS)
        found.append((at.timestamp(), json.loads(headers["argsrepr"].replace("'", '"'))))
    return sorted(found, key=lambda item: item[0])


def start_beat(spawn: Spawn, tmp_path: Path, env: dict[str, str], name: str) -> Child:
    return spawn(
        celeriac_command("beat"),
        env=env
        | {
            "CELERIAC_BEAT_SCHEDULER": SCHEDULER,
            "CELERIAC_BEAT_MAX_LOOP_INTERVAL_SECONDS": str(LOOP_SECONDS),
            "CELERIAC_BEAT_LOCK_TIMEOUT_SECONDS": "5",
            "CELERIAC_BEAT_HEARTBEAT_FILE": str(tmp_path / f"{name}.heartbeat"),
        },
        name=name,
    )


def test_two_database_beats_send_each_entry_once_per_due_time_across_a_takeover(
    spawn: Spawn,
    tmp_path: Path,
    redis_url: str,
    redis_client: redis.Redis,
    postgres_server: PostgresServer,
    django_db: str,
) -> None:
    env = django_env(postgres_server, django_db, redis_url)
    upsert(env, "every-2s", 2, [1])
    beats = [start_beat(spawn, tmp_path, env, f"beat-{i}") for i in range(2)]

    def holder() -> Child | None:
        for beat in beats:
            beat.check_alive()
        holding = [b for b in beats if "acquired the lock" in b.output()]
        standing = [b for b in beats if "standing by" in b.output()]
        return holding[0] if len(holding) == 1 and len(standing) == 1 else None

    first = wait_until(holder, timeout=30, message="one beat holding the lock, one standing by")
    wait_until(lambda: len(sent(redis_client, "every-2s")) >= 4, timeout=20, message="4 sends")
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=15) == 0
    (second,) = (b for b in beats if b is not first)
    wait_until(lambda: "acquired the lock" in second.output(), message="the standby taking over")
    wait_until(lambda: len(sent(redis_client, "every-2s")) >= 8, timeout=20, message="4 more")
    times = [at for at, _ in sent(redis_client, "every-2s")]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # Once per due time: never two sends of one entry within one interval, the takeover
    # included (the new holder reads the last run its predecessor stored on SIGTERM).
    assert min(gaps) > 1.5, gaps
    assert max(gaps) < 2 * 2 + LOOP_SECONDS, gaps


def test_entries_added_changed_or_disabled_in_the_database_take_effect_without_a_restart(
    spawn: Spawn,
    tmp_path: Path,
    redis_url: str,
    redis_client: redis.Redis,
    postgres_server: PostgresServer,
    django_db: str,
) -> None:
    env = django_env(postgres_server, django_db, redis_url)
    beat = start_beat(spawn, tmp_path, env, "beat")
    wait_until(
        lambda: "acquired the lock" in beat.output() or beat.check_alive(),
        timeout=30,
        message="beat holding the lock",
    )
    # Added: a new interval entry first runs one interval after it was saved.
    added_at = upsert(env, "every-1s", 1, [1])
    first = wait_until(lambda: sent(redis_client, "every-1s"), timeout=15, message="a first send")
    add_delay = first[0][0] - added_at - 1
    # Changed: the next send carries the new arguments.
    changed_at = upsert(env, "every-1s", 1, [2])
    changed = wait_until(
        lambda: [at for at, args in sent(redis_client, "every-1s") if args == [2]],
        timeout=15,
        message="a send with the changed arguments",
    )
    change_delay = changed[0] - changed_at
    # Disabled: sends stop.
    disabled_at = upsert(env, "every-1s", 1, [2], enabled=False)
    bound = 2 * LOOP_SECONDS + 1
    time_after = disabled_at + bound + 2  # when any late send would have been made
    wait_until(lambda: time.time() > time_after, timeout=bound + 5, message="the bound to pass")
    last = sent(redis_client, "every-1s")[-1][0]
    disable_delay = max(0.0, last - disabled_at)
    print(  # the figures README "Django" quotes (pytest -s)
        f"\nschedule change delays: add {add_delay:.2f} s, change {change_delay:.2f} s, "
        f"disable {disable_delay:.2f} s (loop interval {LOOP_SECONDS:g} s)",
        file=sys.stderr,
    )
    for delay in (add_delay, change_delay, disable_delay):
        assert delay <= bound, (add_delay, change_delay, disable_delay)
