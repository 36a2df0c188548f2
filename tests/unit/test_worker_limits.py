"""``CELERIAC_TASK_LIMITS``: parsed and checked, errors naming the task and the field."""

from __future__ import annotations

import json

import pytest
from celery import Celery

from celeriac.env import ConfigError
from celeriac.worker.limits import TaskLimits, apply_task_limits, parse_task_limits
from celeriac.worker.settings import WorkerSettings


def test_limits_are_read_with_celerys_field_names() -> None:
    raw = json.dumps(
        {
            "mytasks.resize": {"soft_time_limit": 30, "time_limit": 60, "rate_limit": "10/s"},
            "mytasks.ping": {"rate_limit": 2.5},
        }
    )
    assert parse_task_limits(raw) == {
        "mytasks.resize": TaskLimits(soft_time_limit=30.0, time_limit=60.0, rate_limit="10/s"),
        "mytasks.ping": TaskLimits(rate_limit="2.5"),
    }
    assert parse_task_limits(None) == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{", "CELERIAC_TASK_LIMITS is not valid JSON"),
        ("[]", "CELERIAC_TASK_LIMITS must be a JSON object of task name -> limits"),
        ('{"t.a": 5}', "CELERIAC_TASK_LIMITS: task 't.a' must map to an object"),
        ('{"t.a": {}}', "CELERIAC_TASK_LIMITS: task 't.a' must map to an object"),
        ('{"t.a": {"timeout": 5}}', "CELERIAC_TASK_LIMITS: task 't.a': unknown field 'timeout'"),
        (
            '{"t.a": {"time_limit": 0}}',
            "CELERIAC_TASK_LIMITS: task 't.a': time_limit must be a positive number of "
            "seconds, not 0",
        ),
        (
            '{"t.a": {"soft_time_limit": "30"}}',
            "CELERIAC_TASK_LIMITS: task 't.a': soft_time_limit must be a positive number",
        ),
        (
            '{"t.a": {"time_limit": true}}',
            "CELERIAC_TASK_LIMITS: task 't.a': time_limit must be a positive number",
        ),
        (
            '{"t.a": {"soft_time_limit": 60, "time_limit": 60}}',
            "CELERIAC_TASK_LIMITS: task 't.a': soft_time_limit 60 must be below time_limit 60",
        ),
        (
            '{"t.a": {"rate_limit": "10/d"}}',
            "CELERIAC_TASK_LIMITS: task 't.a': rate_limit must be tasks per second",
        ),
        (
            '{"t.a": {"rate_limit": -1}}',
            "CELERIAC_TASK_LIMITS: task 't.a': rate_limit must be tasks per second",
        ),
        ('{" t.a": {"time_limit": 1}}', "CELERIAC_TASK_LIMITS: task name ' t.a' is empty"),
    ],
)
def test_bad_limits_name_the_task_and_field(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_task_limits(value)
    assert str(raised.value).startswith(message), str(raised.value)


def test_hard_limit_must_stay_under_the_visibility_timeout() -> None:
    environ = {
        "CELERIAC_TASK_LIMITS": '{"t.long": {"time_limit": 3600}}',
        "CELERIAC_VISIBILITY_TIMEOUT_SECONDS": "3600",
    }
    with pytest.raises(ConfigError, match=r"task 't\.long': time_limit 3600 must be below"):
        WorkerSettings.from_env(environ)
    environ["CELERIAC_VISIBILITY_TIMEOUT_SECONDS"] = "3601"
    limits = WorkerSettings.from_env(environ).task_limits
    assert limits == {"t.long": TaskLimits(time_limit=3600.0)}


def test_limits_are_set_on_the_apps_tasks_and_unknown_names_returned() -> None:
    app = Celery("limits-test", set_as_current=False)

    @app.task(name="t.a", rate_limit="1/h", time_limit=5)
    def a() -> None: ...

    missing = apply_task_limits(
        app.tasks,
        {
            "t.a": TaskLimits(soft_time_limit=10.0, rate_limit="10/s"),
            "t.typo": TaskLimits(time_limit=1.0),
        },
    )
    assert missing == ["t.typo"]
    task = app.tasks["t.a"]
    assert (task.soft_time_limit, task.time_limit, task.rate_limit) == (10.0, 5, "10/s")
