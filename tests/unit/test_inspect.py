"""``celeriac inspect`` rendering: ages, a group's oldest wait, aligned tables, JSON fields."""

from __future__ import annotations

import json

import pytest

from celeriac.inspect import GroupReport, QueueReport, Report, _age, _oldest, to_json, to_table


def _queue(name: str, waiting: int, age: float | None, in_flight: int = 0) -> QueueReport:
    return QueueReport(name, waiting, in_flight, 0, 0, age)


@pytest.mark.parametrize(
    ("seconds", "waiting", "shown"),
    [
        (0.0, 0, "-"),
        (None, 0, "-"),
        (None, 2, "?"),
        (3.21, 1, "3.2s"),
        (90, 1, "1.5m"),
        (7200, 1, "2.0h"),
    ],
)
def test_age(seconds: float | None, waiting: int, shown: str) -> None:
    assert _age(seconds, waiting) == shown


def test_a_groups_oldest_is_its_queues_oldest_and_unknown_wins() -> None:
    assert _oldest([_queue("a", 1, 5.0), _queue("b", 2, 9.0), _queue("c", 0, 0.0)]) == 9.0
    assert _oldest([_queue("a", 1, 5.0), _queue("b", 1, None)]) is None
    # A queue with nothing waiting has no unknown age to spoil the group's.
    assert _oldest([_queue("a", 0, None), _queue("b", 1, 2.0)]) == 2.0
    assert _oldest([]) == 0.0


REPORT = Report(
    queues=(_queue("default", 12, 3.0, in_flight=4), _queue("a-long-queue-name", 0, 0.0)),
    groups=(GroupReport("web", ("default", "a-long-queue-name"), 12, 4, 0, 1, 3.0),),
)


def test_table_columns_line_up() -> None:
    lines = to_table(REPORT).splitlines()
    header, first, second = lines[:3]
    assert header.startswith("QUEUE")
    # Numbers right-aligned under their header: every row ends where the header does.
    assert len(first) == len(second) == len(header)
    assert first.split() == ["default", "12", "4", "0", "0", "3.0s"]
    group_header = lines[lines.index("") + 1]
    assert group_header.split()[:4] == ["GROUP", "QUEUES", "WAITING", "BUSY"]
    assert lines[lines.index("") + 2].split() == [
        "web",
        "default,a-long-queue-name",
        "12",
        "4",
        "0",
        "1",
        "3.0s",
    ]


def test_json_has_backlogs_and_lists() -> None:
    data = json.loads(to_json(REPORT))
    assert data["queues"][0] == {
        "name": "default",
        "waiting": 12,
        "in_flight": 4,
        "scheduled": 0,
        "dead_letters": 0,
        "oldest_age_seconds": 3.0,
        "backlog": 16,
    }
    assert data["groups"][0]["queues"] == ["default", "a-long-queue-name"]
    assert data["groups"][0]["backlog"] == 16
