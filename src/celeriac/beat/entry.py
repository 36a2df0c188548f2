"""One entry of the schedule file: its fields, how each is validated, and the ``Entry`` the
scheduler runs."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery.schedules import BaseSchedule, crontab, schedule

from celeriac.settings import MAX_PRIORITY, MIN_PRIORITY, QUEUE_NAME

FIELDS = ("task", "every", "cron", "args", "kwargs", "queue", "priority", "expires", "enabled")
# Names become Redis keys (``celeriac:beat:<name>``): no spaces, no glob characters, and a
# leading letter or digit so no name can collide with beat's own ``celeriac:beat::lock``.
_TASK = re.compile(r"^\S{1,255}$")
_CRON_FIELD = re.compile(r"^[A-Za-z0-9*/,-]+$")
# (crontab keyword, what a reader calls it, what it accepts), in "m h dom mon dow" order.
_CRON_FIELDS = (
    ("minute", "minute", "0-59"),
    ("hour", "hour", "0-23"),
    ("day_of_month", "day of month", "1-31"),
    ("month_of_year", "month", "1-12 or jan-dec"),
    ("day_of_week", "day of week", "0-6 or sun-sat, 0 = Sunday"),
)


@dataclass(frozen=True)
class Entry:
    """One validated schedule entry, ready for the scheduler."""

    name: str
    task: str
    schedule: BaseSchedule
    # The schedule as written, for logs: "every 30s" or "cron '0 3 * * *'".
    when: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True

    def definition(self) -> dict[str, Any]:
        """Keyword arguments for a Celery/redbeat schedule entry."""
        return {
            "task": self.task,
            "schedule": self.schedule,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "options": dict(self.options),
            "enabled": self.enabled,
        }

    def describe(self) -> str:
        state = "" if self.enabled else ", disabled"
        return f"{self.name} ({self.task}, {self.when}{state})"


def parse_entry(name: object, body: object, problems: list[str]) -> Entry | None:
    """Validate one entry; append each problem to ``problems``, return the entry if none."""
    # An entry name keys beat's state in Redis, as a queue name does: the same rule.
    if not isinstance(name, str) or not QUEUE_NAME.match(name):
        problems.append(
            f"entry {name!r}: the name must be a string of letters, digits, '_', '.', ':' or '-' "
            "starting with a letter or digit"
        )
        return None
    if not isinstance(body, Mapping):
        problems.append(
            f"entry {name!r}: must be a mapping with at least 'task' and 'every' or 'cron', "
            f"not a {kind_of(body)}"
        )
        return None
    before = len(problems)

    def bad(field_name: str, message: str) -> None:
        problems.append(f"entry {name!r}: field {field_name!r} {message}")

    for key in body:
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(
                f"entry {name!r}: unknown field {key!r}{hint}; known fields: {', '.join(FIELDS)}"
            )

    task = body.get("task")
    if task is None:
        problems.append(f"entry {name!r}: field 'task' is missing; name the task to send")
    elif not isinstance(task, str) or not _TASK.match(task):
        bad("task", f"must be a task name such as 'myapp.tasks.report', got {task!r}")

    when: tuple[BaseSchedule, str] | None = None
    if "every" in body and "cron" in body:
        problems.append(f"entry {name!r}: give exactly one of 'every' and 'cron', not both")
    elif "every" in body:
        seconds = _positive_number(body["every"])
        if seconds is None:
            bad("every", f"must be a number of seconds > 0, got {body['every']!r}")
        else:
            when = (schedule(run_every=timedelta(seconds=seconds)), f"every {seconds:g}s")
    elif "cron" in body:
        cron = _cron(body["cron"], bad)
        when = None if cron is None else (cron, f"cron {' '.join(str(body['cron']).split())!r}")
    else:
        problems.append(
            f"entry {name!r}: give one of 'every' (seconds) or 'cron' ('m h dom mon dow')"
        )

    args = body.get("args", [])
    if not isinstance(args, list) or not _is_json(args):
        bad("args", f"must be a list of JSON values (quote dates), got {args!r}")
    kwargs = body.get("kwargs", {})
    if (
        not isinstance(kwargs, Mapping)
        or not all(isinstance(key, str) for key in kwargs)
        or not _is_json(list(kwargs.values()))
    ):
        bad("kwargs", f"must be a mapping of names to JSON values (quote dates), got {kwargs!r}")

    options: dict[str, Any] = {}
    if "queue" in body:
        queue = body["queue"]
        if not isinstance(queue, str) or not QUEUE_NAME.match(queue):
            bad(
                "queue",
                f"must be a queue name (letters, digits, '_', '.', ':', '-'), got {queue!r}",
            )
        else:
            options["queue"] = queue
    if "priority" in body:
        priority = body["priority"]
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or not MIN_PRIORITY <= priority <= MAX_PRIORITY
        ):
            bad(
                "priority",
                f"must be a whole number {MIN_PRIORITY}-{MAX_PRIORITY} "
                f"({MIN_PRIORITY} is the highest), got {priority!r}",
            )
        else:
            options["priority"] = priority
    if "expires" in body:
        expires = _positive_number(body["expires"])
        if expires is None:
            bad("expires", f"must be a number of seconds > 0, got {body['expires']!r}")
        else:
            options["expires"] = expires
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        bad("enabled", f"must be true or false, got {enabled!r}")

    if len(problems) > before or when is None:
        return None
    return Entry(
        name=name,
        task=str(task),
        schedule=when[0],
        when=when[1],
        args=list(args),
        kwargs=dict(kwargs),
        options=options,
        enabled=bool(enabled),
    )


def _cron(value: object, bad: Any) -> crontab | None:
    if not isinstance(value, str):
        bad("cron", f"must be a string 'm h dom mon dow' such as '0 3 * * *', got {value!r}")
        return None
    parts = value.split()
    if len(parts) != len(_CRON_FIELDS):
        bad(
            "cron",
            f"{value!r} has {len(parts)} fields; give 5: minute hour day-of-month month "
            "day-of-week, such as '0 3 * * *'",
        )
        return None
    fields = {}
    ok = True
    for (keyword, label, accepts), part in zip(_CRON_FIELDS, parts, strict=True):
        if not _CRON_FIELD.match(part) or not _builds(**{keyword: part}):
            bad("cron", f"{value!r}: {label} {part!r} is invalid; {label} takes {accepts}")
            ok = False
        fields[keyword] = part
    if not ok:
        return None
    try:
        return crontab(**fields)
    except Exception as exc:  # e.g. "day_of_month '31' never occurs in month_of_year '2'"
        bad("cron", f"{value!r} is invalid: {exc}")
        return None


def _builds(**field_value: str) -> bool:
    try:
        crontab(**field_value)
    except Exception:  # celery raises ValueError or its own ParseException; both mean invalid
        return False
    return True


def _positive_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        return None
    return number


def _is_json(value: object) -> bool:
    if value is None or isinstance(value, str | bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_is_json(item) for item in value)
    if isinstance(value, Mapping):
        return all(isinstance(key, str) and _is_json(item) for key, item in value.items())
    return False


def kind_of(value: object) -> str:
    """What YAML made ``value``, in the words of a problem report."""
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return type(value).__name__
