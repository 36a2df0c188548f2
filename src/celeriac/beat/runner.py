"""Run beat: configure the app for redbeat, check what can be checked, start Celery's loop."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any, cast

from celery import Celery
from celery.apps.beat import Beat
from celery.beat import Scheduler as CeleryScheduler
from kombu.utils.imports import symbol_by_name
from redis.backoff import NoBackoff
from redis.retry import Retry

from celeriac import broker, heartbeat
from celeriac.app import load_app
from celeriac.beat.entry import Entry
from celeriac.beat.leader import LeaderScheduler
from celeriac.beat.lock import LOCK_SUFFIX
from celeriac.beat.schedule import load_schedule
from celeriac.beat.scheduler import Scheduler
from celeriac.beat.settings import BeatSettings
from celeriac.env import ConfigError
from celeriac.settings import Settings, is_sentinel_url, redact_url

logger = logging.getLogger("celeriac.beat")


def redis_options(settings: Settings) -> dict[str, Any]:
    """redis-py options of beat's client (redbeat's storage and celeriac's lock)."""
    return {
        "socket_timeout": settings.redis_socket_timeout_seconds,
        "socket_connect_timeout": settings.redis_socket_timeout_seconds,
        "socket_keepalive": True,
        "health_check_interval": 10,
        # One quick retry (a pooled connection dropped by a Redis restart), not redis-py's
        # default of three with backoff: a tick stuck on an unreachable Redis for longer
        # would let the heartbeat go stale. A failed tick is retried on the next one.
        "retry": Retry(NoBackoff(), retries=1),
    }


def beat_config(beat: BeatSettings) -> dict[str, Any]:
    """Celery and redbeat settings for the beat process."""
    settings = beat.common
    return {
        # Beat's state lives in the broker's Redis, under its own key prefix.
        "redbeat_redis_url": settings.broker_connection_url,
        "redbeat_redis_options": redis_options(settings),
        "redbeat_key_prefix": beat.key_prefix,
        # None switches off redbeat's own lock, which blocks start-up without ticking;
        # celeriac's Scheduler takes the lock itself (see celeriac.beat.scheduler).
        "redbeat_lock_key": None,
        "redbeat_lock_timeout": beat.lock_timeout_seconds,
        "beat_max_loop_interval": beat.max_loop_interval_seconds,
        # The schedule comes from the file, never from app code.
        "beat_schedule": {},
        "beat_enable_remote_control": False,
        "timezone": beat.timezone,
    }


def scheduler_config(beat: BeatSettings) -> dict[str, Any]:
    """Celery settings for beat with a scheduler class of the user's (CELERIAC_BEAT_SCHEDULER):
    the loop and time zone; its schedule (the app's ``beat_schedule`` included) is its own."""
    return {
        "beat_max_loop_interval": beat.max_loop_interval_seconds,
        "beat_enable_remote_control": False,
        "timezone": beat.timezone,
    }


def load_scheduler(name: str) -> type[CeleryScheduler]:
    """The scheduler class ``name`` names; a ConfigError naming the variable otherwise."""
    try:
        cls = symbol_by_name(name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"CELERIAC_BEAT_SCHEDULER={name!r} cannot be imported: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, CeleryScheduler)):
        raise ConfigError(
            f"CELERIAC_BEAT_SCHEDULER={name!r} is not a celery.beat.Scheduler subclass"
        )
    return cls


def entries_from(beat: BeatSettings) -> tuple[Entry, ...]:
    """The validated entries of the schedule file; none (with a warning) when there is none."""
    if beat.schedule_file is None:
        logger.warning(
            "beat: CELERIAC_BEAT_SCHEDULE_FILE is not set; the schedule is empty and any "
            "entries left in Redis are removed"
        )
        return ()
    return load_schedule(beat.schedule_file)


def check_beat(beat: BeatSettings) -> list[str]:
    """What ``run_beat`` would fire, without firing it: the lines ``--check`` prints.

    Imports the app, so an entry's arguments are checked against its task as at start.
    """
    settings = beat.common
    if beat.scheduler is not None:
        load_app(settings.app, settings)  # first: a Django scheduler needs Django set up
        cls = load_scheduler(beat.scheduler)
        return [
            f"celeriac: scheduler {cls.__module__}.{cls.__name__} imports for app {settings.app}; "
            "its schedule is its own"
        ]
    if beat.schedule_file is None:
        return ["celeriac: no schedule file given (--schedule or CELERIAC_BEAT_SCHEDULE_FILE)"]
    entries = load_schedule(beat.schedule_file)
    _check_tasks(load_app(settings.app, settings), entries)
    return [
        f"celeriac: schedule {beat.schedule_file} is valid for app {settings.app}: "
        f"{len(entries)} entries",
        *(f"  {entry.describe()}" for entry in entries),
    ]


def run_beat(beat: BeatSettings) -> None:
    """Validate the schedule, then run beat until SIGTERM or SIGINT."""
    settings = beat.common
    app = load_app(settings.app, settings)
    if beat.scheduler is not None:
        _run_other_scheduler(app, beat, beat.scheduler)
        return
    app.conf.update(beat_config(beat))
    if is_sentinel_url(settings.broker_url):
        # redbeat's own Sentinel support drops the timeouts and retry; celeriac's client asks
        # the sentinels for the master on every new connection (celeriac.broker.clients).
        app.redbeat_redis = broker.client(  # type: ignore[attr-defined]
            settings,
            settings.broker_connection_url,
            decode_responses=True,
            **redis_options(settings),
        )
    app.set_current()
    # Before any other beat work, so start-up messages use Celery's log format.
    app.log.setup(
        loglevel=logging.getLevelNamesMapping()[settings.log_level], redirect_stdouts=False
    )
    entries = entries_from(beat)
    _check_tasks(app, entries)
    _prepare_heartbeat(beat)
    logger.info(
        "beat: starting with %d entries from %s; Redis %s, keys %s*, loop <= %gs, "
        "lock timeout %gs, timezone %s",
        len(entries),
        beat.schedule_file or "(no file)",
        redact_url(settings.broker_url),
        beat.key_prefix,
        beat.max_loop_interval_seconds,
        beat.lock_timeout_seconds,
        beat.timezone,
    )
    for entry in entries:
        logger.info("beat: entry %s", entry.describe())
    scheduler = functools.partial(
        Scheduler,
        entries=entries,
        heartbeat_file=beat.heartbeat_file,
        lock_timeout=beat.lock_timeout_seconds,
    )
    _run_beat(app, beat, scheduler)


def _run_other_scheduler(app: Celery, beat: BeatSettings, name: str) -> None:
    """Run the scheduler class ``name`` behind celeriac's lock (celeriac.beat.leader)."""
    settings = beat.common
    app.conf.update(scheduler_config(beat))
    app.set_current()
    app.log.setup(
        loglevel=logging.getLevelNamesMapping()[settings.log_level], redirect_stdouts=False
    )
    app.loader.import_default_modules()  # Django: django.setup(), before the scheduler imports
    cls = load_scheduler(name)
    _prepare_heartbeat(beat)
    # Plain or through Sentinel, as the broker URL says.
    client = broker.client(
        settings, settings.broker_connection_url, decode_responses=True, **redis_options(settings)
    )
    logger.info(
        "beat: starting with scheduler %s behind the lock %s in Redis %s, loop <= %gs, "
        "lock timeout %gs, timezone %s",
        name,
        beat.key_prefix + LOCK_SUFFIX,
        redact_url(settings.broker_url),
        beat.max_loop_interval_seconds,
        beat.lock_timeout_seconds,
        beat.timezone,
    )
    scheduler = functools.partial(
        LeaderScheduler,
        scheduler_cls=cls,
        client=client,
        key_prefix=beat.key_prefix,
        heartbeat_file=beat.heartbeat_file,
        lock_timeout=beat.lock_timeout_seconds,
    )
    _run_beat(app, beat, scheduler)


def _run_beat(app: Celery, beat: BeatSettings, scheduler: Any) -> None:
    # Celery's hints say str and int; it resolves a class (or factory) and takes a float too.
    Beat(
        app=app,
        scheduler=cast(Any, scheduler),
        max_interval=cast(Any, beat.max_loop_interval_seconds),
        loglevel=beat.common.log_level,
        quiet=True,
        # Keep stdout and stderr as they are: the CLI's one-line errors must not become logs.
        redirect_stdouts=False,
    ).run()


def _prepare_heartbeat(beat: BeatSettings) -> None:
    # A file left by a previous run must not pass the probe; and an unwritable path should fail
    # now, with its name, not on the first tick.
    try:
        heartbeat.remove(beat.heartbeat_file)
        heartbeat.touch(beat.heartbeat_file)
        heartbeat.remove(beat.heartbeat_file)
    except OSError as exc:
        raise ConfigError(
            f"CELERIAC_BEAT_HEARTBEAT_FILE={str(beat.heartbeat_file)!r} cannot be written: "
            f"{exc.strerror}; mount a writable volume there"
        ) from None


def _check_tasks(app: Celery, entries: Sequence[Entry]) -> None:
    """Check each entry's arguments against its task's signature, where the app knows the task.

    Celery checks them at every send, so a mismatch would otherwise fail each run, in the log.
    """
    app.loader.import_default_modules()
    problems = []
    for entry in entries:
        task = app.tasks.get(entry.task)
        if task is None:
            logger.warning(
                "beat: entry %s sends task %r, which app %s does not register; it is sent by "
                "name, so a worker that knows it must consume its queue",
                entry.name,
                entry.task,
                app.main,
            )
            continue
        # Celery's own argument check, as apply_async runs it (absent when typing is off).
        check = getattr(task, "__header__", None) if task.typing else None
        if check is None:
            continue
        try:
            check(*entry.args, **entry.kwargs)
        except TypeError as exc:
            problems.append(f"entry {entry.name!r}: 'args'/'kwargs' do not fit {entry.task}: {exc}")
    if problems:
        raise ConfigError("; ".join(problems))
