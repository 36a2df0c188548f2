"""Per-task time and rate limits from ``CELERIAC_TASK_LIMITS``, applied to the app's tasks.

The variable holds a JSON object: task name -> any of Celery's ``soft_time_limit`` and
``time_limit`` (seconds) and ``rate_limit`` (Celery's ``"10/s"``, ``"100/m"``, ``"5/h"`` or a
number of tasks per second)::

    {"mytasks.resize": {"soft_time_limit": 30, "time_limit": 60, "rate_limit": "10/s"}}

Read with the worker's settings (imports nothing of Celery: ``celeriac probe`` reads those
settings too); every error names the variable, the task and the field. The worker applies the
limits to its tasks before it starts consuming, as Celery's ``task_annotations`` would, so
every worker of the app enforces them: the soft limit raises ``SoftTimeLimitExceeded`` inside
the task, the hard limit kills the pool process (prefork pool only; Celery's threads pool cannot
stop a task), the rate limit holds tasks in the worker until their turn.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celeriac.env import PREFIX, ConfigError

logger = logging.getLogger(__name__)

VARIABLE = f"{PREFIX}TASK_LIMITS"
# Celery's rate limit syntax (celery.utils.time.rate): a number, optionally per s, m or h.
RATE_LIMIT = re.compile(r"^\d+(\.\d+)?(/[smh])?$")
FIELDS = ("soft_time_limit", "time_limit", "rate_limit")


@dataclass(frozen=True)
class TaskLimits:
    """One task's limits; None leaves the task's own value (from its decorator) in place."""

    soft_time_limit: float | None = None
    time_limit: float | None = None
    rate_limit: str | None = None

    def attributes(self) -> dict[str, float | str]:
        """The Celery task attributes to set (only the limits given)."""
        return {name: value for name in FIELDS if (value := getattr(self, name)) is not None}

    def describe(self) -> str:
        return " ".join(f"{name}={value}" for name, value in self.attributes().items())


def parse_task_limits(
    raw: str | None, visibility_timeout_seconds: float | None = None
) -> dict[str, TaskLimits]:
    """The limits in ``raw`` (the variable's JSON), checked; {} when unset.

    A hard limit must stay under the visibility timeout: a task still running past it is
    delivered again to another worker.
    """
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{VARIABLE} is not valid JSON: {exc.msg} at character {exc.pos}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{VARIABLE} must be a JSON object of task name -> limits, e.g. "
            '{"mytasks.resize": {"time_limit": 60}}'
        )
    limits: dict[str, TaskLimits] = {}
    for name, fields in data.items():
        if not name.strip() or name != name.strip():
            raise ConfigError(f"{VARIABLE}: task name {name!r} is empty or has spaces around it")
        limits[name] = _task_limits(name, fields, visibility_timeout_seconds)
    return limits


def _task_limits(name: str, fields: object, visibility_timeout: float | None) -> TaskLimits:
    where = f"{VARIABLE}: task {name!r}"
    if not isinstance(fields, dict) or not fields:
        raise ConfigError(f"{where} must map to an object with any of {', '.join(FIELDS)}")
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; use {', '.join(FIELDS)}")
    soft = _seconds(where, "soft_time_limit", fields.get("soft_time_limit"))
    hard = _seconds(where, "time_limit", fields.get("time_limit"))
    rate = _rate(where, fields.get("rate_limit"))
    if soft is not None and hard is not None and soft >= hard:
        raise ConfigError(
            f"{where}: soft_time_limit {soft:g} must be below time_limit {hard:g} "
            "(the soft limit warns the task before the hard limit kills it)"
        )
    if hard is not None and visibility_timeout is not None and hard >= visibility_timeout:
        raise ConfigError(
            f"{where}: time_limit {hard:g} must be below CELERIAC_VISIBILITY_TIMEOUT_SECONDS "
            f"({visibility_timeout:g}), or a task still running is delivered again"
        )
    return TaskLimits(soft_time_limit=soft, time_limit=hard, rate_limit=rate)


def _seconds(where: str, field: str, value: object) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{where}: {field} must be a positive number of seconds, not {value!r}")
    return float(value)


def _rate(where: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return f"{value:g}"
    if isinstance(value, str) and RATE_LIMIT.match(value.strip()):
        return value.strip()
    raise ConfigError(
        f"{where}: rate_limit must be tasks per second as a number or Celery's "
        f"'N/s', 'N/m' or 'N/h', not {value!r}"
    )


def apply_task_limits(tasks: Mapping[str, Any], limits: Mapping[str, TaskLimits]) -> list[str]:
    """Set each task's limits on the registered task (what ``task_annotations`` does).

    Before the worker starts: its consumer reads ``rate_limit`` and each request's default
    time limits from the task when it starts. Returns the names of ``limits`` the app does not
    have (a typo, or a task registered later), which the caller reports.
    """
    missing = []
    for name, task_limits in limits.items():
        task = tasks.get(name)
        if task is None:
            missing.append(name)
            continue
        for attribute, value in task_limits.attributes().items():
            setattr(task, attribute, value)
    return missing
