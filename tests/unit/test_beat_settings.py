from __future__ import annotations

from pathlib import Path

import pytest

from celeriac.beat.runner import beat_config
from celeriac.beat.settings import BeatSettings
from celeriac.env import ConfigError
from celeriac.settings import Settings


def test_defaults() -> None:
    beat = BeatSettings.from_env({})
    assert beat.schedule_file is None
    assert beat.max_loop_interval_seconds == 5.0
    assert beat.lock_timeout_seconds == 25.0
    assert beat.heartbeat_file == Path("/tmp/celeriac/beat.heartbeat")
    assert beat.timezone == "UTC"
    assert beat.key_prefix == "celeriac:beat:"


def test_lock_timeout_follows_the_loop_interval_unless_set(tmp_path: Path) -> None:
    beat = BeatSettings.from_env({"CELERIAC_BEAT_MAX_LOOP_INTERVAL_SECONDS": "2"})
    assert beat.lock_timeout_seconds == 10.0
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text("{}\n")
    beat = BeatSettings.from_env(
        {
            "CELERIAC_BEAT_MAX_LOOP_INTERVAL_SECONDS": "2",
            "CELERIAC_BEAT_LOCK_TIMEOUT_SECONDS": "4.5",
            "CELERIAC_BEAT_SCHEDULE_FILE": str(schedule),
            "CELERIAC_BEAT_TIMEZONE": "Europe/Berlin",
        }
    )
    assert beat.lock_timeout_seconds == 4.5
    assert beat.schedule_file == schedule
    assert beat.timezone == "Europe/Berlin"


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"CELERIAC_BEAT_MAX_LOOP_INTERVAL_SECONDS": "soon"}, "MAX_LOOP_INTERVAL_SECONDS='soon'"),
        ({"CELERIAC_BEAT_MAX_LOOP_INTERVAL_SECONDS": "0"}, "at least 0.1"),
        ({"CELERIAC_BEAT_LOCK_TIMEOUT_SECONDS": "9"}, "at least 2 x"),
        ({"CELERIAC_BEAT_LOCK_TIMEOUT_SECONDS": "x"}, "CELERIAC_BEAT_LOCK_TIMEOUT_SECONDS"),
        ({"CELERIAC_BEAT_TIMEZONE": "Mars/Olympus"}, "CELERIAC_BEAT_TIMEZONE='Mars/Olympus'"),
        ({"CELERIAC_BEAT_TIMEZONE": "../etc"}, "CELERIAC_BEAT_TIMEZONE"),
        ({"CELERIAC_BEAT_SCHEDULER": "DatabaseScheduler"}, "is not a class path"),
        (
            {"CELERIAC_BEAT_SCHEDULER": "a.b:C", "CELERIAC_BEAT_SCHEDULE_FILE": __file__},
            "are both set",
        ),
    ],
)
def test_bad_settings_name_the_variable(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match="CELERIAC_") as caught:
        BeatSettings.from_env(environ)
    assert fragment in str(caught.value)


def test_beat_config_uses_the_password_and_switches_off_redbeats_own_lock() -> None:
    settings = Settings.from_env(
        {"CELERIAC_BROKER_URL": "redis://redis:6379/2", "CELERIAC_REDIS_PASSWORD": "pw!"}
    )
    config = beat_config(BeatSettings(common=settings, max_loop_interval_seconds=2.0))
    assert config["redbeat_redis_url"] == "redis://:pw%21@redis:6379/2"
    assert config["redbeat_key_prefix"] == "celeriac:beat:"
    assert config["redbeat_lock_key"] is None
    assert config["redbeat_lock_timeout"] == 25.0
    assert config["beat_max_loop_interval"] == 2.0
    assert config["beat_schedule"] == {}
    assert config["timezone"] == "UTC"


def test_beats_keys_start_with_the_broker_key_prefix() -> None:
    beat = BeatSettings.from_env({"CELERIAC_BROKER_KEY_PREFIX": "billing:"})
    assert beat.key_prefix == "billing:celeriac:beat:"
