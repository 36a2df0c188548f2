"""Beat settings: where the schedule is, how often the loop wakes, how long the lock lasts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celeriac.env import ConfigError, Env
from celeriac.settings import Settings

# The loop wakes at least this often: it bounds how late a task fires, how old the heartbeat
# file gets and how fast a standby beat notices a released lock.
DEFAULT_MAX_LOOP_INTERVAL_SECONDS = 5.0
# The lock outlives this many loop intervals without an extension; a beat killed without
# releasing it is replaced after at most this long (redbeat's own default is 1500 s).
LOCK_TIMEOUT_LOOP_INTERVALS = 5
# A lock shorter than two loop intervals could expire between two ticks of a healthy beat.
MIN_LOCK_TIMEOUT_LOOP_INTERVALS = 2
DEFAULT_HEARTBEAT_FILE = Path("/tmp/celeriac/beat.heartbeat")
DEFAULT_TIMEZONE = "UTC"
# All of beat's Redis keys start with this, so it shares a database with the broker safely.
KEY_PREFIX = "celeriac:beat:"


@dataclass(frozen=True)
class BeatSettings:
    """What ``celeriac beat`` needs; ``common`` holds the broker, app and queue settings."""

    common: Settings = field(default_factory=Settings)
    schedule_file: Path | None = None
    max_loop_interval_seconds: float = DEFAULT_MAX_LOOP_INTERVAL_SECONDS
    lock_timeout_seconds: float = DEFAULT_MAX_LOOP_INTERVAL_SECONDS * LOCK_TIMEOUT_LOOP_INTERVALS
    heartbeat_file: Path = DEFAULT_HEARTBEAT_FILE
    timezone: str = DEFAULT_TIMEZONE
    key_prefix: str = KEY_PREFIX
    # A Celery scheduler class ("module:Class") run behind celeriac's lock instead of the
    # schedule file; None: celeriac's own scheduler (the file, stored by redbeat).
    scheduler: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BeatSettings:
        # First, so a broken shared setting is reported before a beat one, as before.
        common = Settings.from_env(environ)
        env = Env(environ)
        loop = env.number(
            "BEAT_MAX_LOOP_INTERVAL_SECONDS", DEFAULT_MAX_LOOP_INTERVAL_SECONDS, minimum=0.1
        )
        lock = env.number(
            "BEAT_LOCK_TIMEOUT_SECONDS", loop * LOCK_TIMEOUT_LOOP_INTERVALS, minimum=0.1
        )
        if lock < loop * MIN_LOCK_TIMEOUT_LOOP_INTERVALS:
            raise ConfigError(
                f"CELERIAC_BEAT_LOCK_TIMEOUT_SECONDS={lock:g} must be at least "
                f"{MIN_LOCK_TIMEOUT_LOOP_INTERVALS} x CELERIAC_BEAT_MAX_LOOP_INTERVAL_SECONDS "
                f"({loop:g}), or the lock expires between two ticks"
            )
        schedule_file = env.input_file("BEAT_SCHEDULE_FILE")
        scheduler = _scheduler(env)
        if scheduler is not None and schedule_file is not None:
            raise ConfigError(
                f"CELERIAC_BEAT_SCHEDULER={scheduler!r} and CELERIAC_BEAT_SCHEDULE_FILE are both "
                "set; the schedule file is read only by celeriac's own scheduler: set one"
            )
        return cls(
            common=common,
            schedule_file=schedule_file,
            scheduler=scheduler,
            max_loop_interval_seconds=loop,
            lock_timeout_seconds=lock,
            heartbeat_file=env.output_file("BEAT_HEARTBEAT_FILE", DEFAULT_HEARTBEAT_FILE),
            timezone=_timezone(env),
            # Beside the broker's keys: applications sharing one Redis each have their own
            # lock and schedule.
            key_prefix=f"{common.broker_key_prefix}{KEY_PREFIX}",
        )


def _timezone(env: Env) -> str:
    name = env.string("BEAT_TIMEZONE", DEFAULT_TIMEZONE)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"CELERIAC_BEAT_TIMEZONE={name!r} is not a known time zone; "
            "use an IANA name such as UTC or Europe/Berlin"
        ) from None
    return name


def _scheduler(env: Env) -> str | None:
    name = env.optional_string("BEAT_SCHEDULER")
    if name is None:
        return None
    module, sep, attr = name.replace(":", ".").rpartition(".")
    if not sep or not all(part.isidentifier() for part in (*module.split("."), attr)):
        raise ConfigError(
            f"CELERIAC_BEAT_SCHEDULER={name!r} is not a class path; give 'module:Class', such "
            "as 'django_celery_beat.schedulers:DatabaseScheduler'"
        )
    return name
