from __future__ import annotations

from datetime import timedelta
from importlib import resources
from pathlib import Path

import pytest
from celery.schedules import crontab, schedule

from celeriac.beat.schedule import ScheduleError, load_schedule, parse_schedule
from celeriac.env import ConfigError

GOOD = """
report:
  task: celeriac.demo.add
  every: 30
  args: [1, 2]
fast:
  task: celeriac.demo.add
  every: 0.5
  kwargs: {x: 1, y: 2}
  queue: reports
  priority: 0
  expires: 10
  enabled: false
nightly:
  task: celeriac.demo.sleep
  cron: "0 3 * * *"
  kwargs: {seconds: 1}
  queue: default
weekdays:
  task: celeriac.demo.sleep
  cron: "*/15 9-17 * jan-jun mon-fri"
"""


def test_good_schedule_parses_into_celery_schedules() -> None:
    entries = {entry.name: entry for entry in parse_schedule(GOOD)}
    assert list(entries) == ["report", "fast", "nightly", "weekdays"]

    report = entries["report"]
    assert isinstance(report.schedule, schedule)
    assert not isinstance(report.schedule, crontab)
    assert report.schedule.run_every == timedelta(seconds=30)
    assert report.definition() == {
        "task": "celeriac.demo.add",
        "schedule": report.schedule,
        "args": [1, 2],
        "kwargs": {},
        "options": {},
        "enabled": True,
    }

    fast = entries["fast"]
    assert fast.schedule.run_every == timedelta(seconds=0.5)  # type: ignore[attr-defined]
    assert fast.kwargs == {"x": 1, "y": 2}
    assert fast.options == {"queue": "reports", "priority": 0, "expires": 10.0}
    assert fast.enabled is False

    nightly = entries["nightly"]
    assert isinstance(nightly.schedule, crontab)
    assert nightly.schedule.minute == {0}
    assert nightly.schedule.hour == {3}
    assert nightly.schedule.day_of_month == set(range(1, 32))
    assert nightly.options == {"queue": "default"}
    assert nightly.describe() == "nightly (celeriac.demo.sleep, cron '0 3 * * *')"

    weekdays = entries["weekdays"].schedule
    assert isinstance(weekdays, crontab)
    assert weekdays.minute == {0, 15, 30, 45}
    assert weekdays.hour == set(range(9, 18))
    assert weekdays.month_of_year == set(range(1, 7))
    assert weekdays.day_of_week == {1, 2, 3, 4, 5}


def test_empty_mapping_is_an_empty_schedule() -> None:
    assert parse_schedule("{}") == ()


def test_local_stacks_demo_schedule_is_valid() -> None:
    # `celeriac up` hands this file (owned by celeriac.local) to beat.
    path = Path(str(resources.files("celeriac.local") / "demo_schedule.yaml"))
    entries = load_schedule(path)
    assert {entry.task for entry in entries} <= {"celeriac.demo.add", "celeriac.demo.sleep"}
    assert entries


def entry(**fields: object) -> str:
    """A one-entry schedule named 'job' with the given fields, as YAML flow mappings."""
    body = ", ".join(f"{key}: {value}" for key, value in fields.items())
    return f"job: {{{body}}}\n"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        # cron: wrong field count, out-of-range values, garbage, impossible dates, wrong type
        (entry(task="t", cron='"0 3 * *"'), ["entry 'job'", "'cron'", "has 4 fields"]),
        (entry(task="t", cron='"0 3 * * * *"'), ["entry 'job'", "has 6 fields"]),
        (entry(task="t", cron='"61 * * * *"'), ["entry 'job'", "minute '61'", "0-59"]),
        (entry(task="t", cron='"0 24 * * *"'), ["entry 'job'", "hour '24'", "0-23"]),
        (entry(task="t", cron='"0 0 32 * *"'), ["entry 'job'", "day of month '32'"]),
        (entry(task="t", cron='"0 0 0 * *"'), ["entry 'job'", "day of month '0'"]),
        (entry(task="t", cron='"0 0 * 13 *"'), ["entry 'job'", "month '13'", "1-12"]),
        (entry(task="t", cron='"0 0 * * 8"'), ["entry 'job'", "day of week '8'", "0-6"]),
        (entry(task="t", cron='"a b c d e"'), ["entry 'job'", "minute 'a'", "hour 'b'"]),
        (entry(task="t", cron='"*/0 * * * *"'), ["entry 'job'", "minute '*/0'"]),
        (entry(task="t", cron='"1,,2 * * * *"'), ["entry 'job'", "minute '1,,2'"]),
        (entry(task="t", cron='"@daily"'), ["entry 'job'", "has 1 fields"]),
        (entry(task="t", cron='"0 0 31 2 *"'), ["entry 'job'", "never occurs"]),
        (entry(task="t", cron="5"), ["entry 'job'", "'cron' must be a string"]),
        # every: <= 0, not a number
        (entry(task="t", every=0), ["entry 'job'", "'every'", "> 0", "got 0"]),
        (entry(task="t", every=-5), ["entry 'job'", "'every'", "got -5"]),
        (entry(task="t", every='"30"'), ["entry 'job'", "'every'", "got '30'"]),
        (entry(task="t", every="30s"), ["entry 'job'", "'every'", "got '30s'"]),
        (entry(task="t", every="true"), ["entry 'job'", "'every'", "got True"]),
        (entry(task="t", every=".inf"), ["entry 'job'", "'every'"]),
        # exactly one of every/cron
        (entry(task="t", every=1, cron='"* * * * *"'), ["entry 'job'", "not both"]),
        (entry(task="t"), ["entry 'job'", "give one of 'every'"]),
        # task
        (entry(every=1), ["entry 'job'", "'task' is missing"]),
        (entry(task='""', every=1), ["entry 'job'", "'task' must be a task name"]),
        (entry(task="[a]", every=1), ["entry 'job'", "'task' must be a task name"]),
        # unknown fields (with a suggestion)
        (entry(task="t", every=1, arg="[1]"), ["entry 'job'", "unknown field 'arg'", "'args'"]),
        (entry(task="t", every=1, schedule=5), ["entry 'job'", "unknown field 'schedule'"]),
        # args, kwargs
        (entry(task="t", every=1, args="{a: 1}"), ["entry 'job'", "'args' must be a list"]),
        (entry(task="t", every=1, args="5"), ["entry 'job'", "'args' must be a list"]),
        (entry(task="t", every=1, args="[2024-01-01]"), ["entry 'job'", "'args'", "dates"]),
        (entry(task="t", every=1, kwargs="[1, 2]"), ["entry 'job'", "'kwargs' must be a mapping"]),
        (entry(task="t", every=1, kwargs="{1: a}"), ["entry 'job'", "'kwargs' must be a mapping"]),
        # priority, queue, expires, enabled
        (entry(task="t", every=1, priority=10), ["entry 'job'", "'priority'", "0-9", "got 10"]),
        (entry(task="t", every=1, priority=-1), ["entry 'job'", "'priority'", "got -1"]),
        (entry(task="t", every=1, priority=1.5), ["entry 'job'", "'priority'", "got 1.5"]),
        (entry(task="t", every=1, priority="high"), ["entry 'job'", "'priority'"]),
        (entry(task="t", every=1, queue='"a b"'), ["entry 'job'", "'queue'", "got 'a b'"]),
        (entry(task="t", every=1, queue="[a]"), ["entry 'job'", "'queue'"]),
        (entry(task="t", every=1, expires=0), ["entry 'job'", "'expires'", "> 0"]),
        (entry(task="t", every=1, enabled='"no"'), ["entry 'job'", "'enabled'", "true or false"]),
        # entry shape and name
        ("job: celeriac.demo.add\n", ["entry 'job'", "must be a mapping", "not a string"]),
        ("job:\n", ["entry 'job'", "must be a mapping", "not a null"]),
        ("'bad name': {task: t, every: 1}\n", ["entry 'bad name'", "the name must be"]),
        ("':lock': {task: t, every: 1}\n", ["entry ':lock'", "the name must be"]),
        ("5: {task: t, every: 1}\n", ["entry 5", "the name must be"]),
        # file level
        ("", ["the file is empty", "{}"]),
        ("# only a comment\n", ["the file is empty"]),
        ("- task: t\n", ["top level must be a mapping", "not a list"]),
        ("just text\n", ["top level must be a mapping", "not a string"]),
        ("a:\n  task: t\n every: 1\n", ["YAML syntax error at line 3"]),
        ("a: {task: t, every: 1\n", ["YAML syntax error at line 2"]),
        ("a: {task: t, every: 1}\na: {task: u, every: 2}\n", ["line 2", "'a' is given twice"]),
        ("a: {task: t, every: 1, every: 2}\n", ["line 1", "'every' is given twice"]),
    ],
)
def test_bad_schedule_is_rejected_naming_entry_and_field(text: str, fragments: list[str]) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_schedule(text, source="schedule.yaml")
    message = str(caught.value)
    assert message.startswith("schedule schedule.yaml has ")
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_every_problem_is_reported_at_once() -> None:
    text = """
ok: {task: t, every: 1}
first: {task: t, every: 0}
second: {task: t, cron: "0 3 * *", priority: 11}
"""
    with pytest.raises(ScheduleError) as caught:
        parse_schedule(text)
    problems = caught.value.problems
    assert len(problems) == 3
    assert problems[0].startswith("entry 'first': field 'every'")
    assert problems[1].startswith("entry 'second': field 'cron'")
    assert problems[2].startswith("entry 'second': field 'priority'")
    assert "'ok'" not in str(caught.value)


def test_schedule_error_is_a_config_error() -> None:
    # main() turns ConfigError into exit 2 with one line.
    assert issubclass(ScheduleError, ConfigError)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_schedule(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_schedule(binary)
