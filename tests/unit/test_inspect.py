"""``celeriac inspect`` rendering: ages, a group's oldest wait, aligned tables, JSON fields, and
which group a live worker belongs to."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from celeriac.groups import WorkerGroup
from celeriac.inspection.render import OTHERS_NAMED, _age, to_json, to_table
from celeriac.inspection.report import GroupReport, QueueReport, Report, _oldest, group_of
from celeriac.worker.registry import LiveWorker, info_json, live_workers


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


WORKERS = (
    LiveWorker("web-1", ("a-long-queue-name", "default"), 2),
    LiveWorker("web-2", ("a-long-queue-name", "default"), 4),
    LiveWorker("stray", ("default",), 3),
)
REPORT = Report(
    queues=(_queue("default", 12, 3.0, in_flight=4), _queue("a-long-queue-name", 0, 0.0)),
    groups=(GroupReport("web", ("default", "a-long-queue-name"), 12, 2, 6, 4, 0, 1, 3.0),),
    workers=WORKERS,
)


def test_table_columns_line_up() -> None:
    lines = to_table(REPORT).splitlines()
    header, first, second = lines[:3]
    assert header.startswith("QUEUE")
    # Numbers right-aligned under their header: every row ends where the header does.
    assert len(first) == len(second) == len(header)
    assert first.split() == ["default", "12", "4", "0", "0", "3.0s"]
    group_header = lines[lines.index("") + 1]
    assert group_header.split()[:6] == ["GROUP", "QUEUES", "WAITING", "WORKERS", "POOL", "BUSY"]
    group_row = lines[lines.index("") + 2]
    assert len(group_row) == len(group_header)
    assert group_row.split() == [
        "web",
        "default,a-long-queue-name",
        "12",
        "2",
        "6",
        "4",
        "0",
        "1",
        "3.0s",
    ]
    assert "other workers: 1, pool 3, consuming no group's queues: stray (default)" in lines


def test_no_other_workers_line_when_every_worker_has_a_group() -> None:
    report = Report(queues=REPORT.queues, groups=REPORT.groups, workers=WORKERS[:2])
    assert "other workers" not in to_table(report)


def test_many_other_workers_are_named_up_to_a_few() -> None:
    strays = tuple(LiveWorker(f"w{i}", ("x",), 1) for i in range(OTHERS_NAMED + 2))
    line = to_table(Report(queues=(), groups=(), workers=strays)).splitlines()[-3]
    assert line.startswith(f"other workers: {OTHERS_NAMED + 2}, pool {OTHERS_NAMED + 2}, ")
    assert line.endswith(" and 2 more (--json lists them)")


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
    assert (data["groups"][0]["workers"], data["groups"][0]["pool"]) == (2, 6)
    assert data["other_workers"] == {"workers": 1, "pool": 3}
    assert data["workers"][2] == {
        "name": "stray",
        "queues": ["default"],
        "pool": 3,
        "group": None,
    }
    assert data["workers"][0]["group"] == "web"


def test_a_worker_belongs_to_the_first_group_with_exactly_its_queues() -> None:
    groups = [
        WorkerGroup("one", ("a",)),
        WorkerGroup("both", ("b", "a")),
        WorkerGroup("again", ("a", "b")),
    ]
    assert group_of(LiveWorker("w", ("a", "b"), 1), groups) == "both"
    assert group_of(LiveWorker("w", ("a",), 1), groups) == "one"
    # A subset or a superset of a group's queues is no match.
    assert group_of(LiveWorker("w", ("b",), 1), groups) is None
    assert group_of(LiveWorker("w", ("a", "b", "c"), 1), groups) is None
    assert group_of(LiveWorker("w", (), 0), groups) is None


def test_registry_entries_parse_and_bad_ones_count_in_no_group() -> None:
    reply = [
        [b"w2", b"w1", b"odd", b"gone", b"neg"],
        [
            info_json(["b", "a", "a"], 4).encode(),
            info_json(["a"], 1).encode(),
            b"not json",
            None,
            b'{"queues": ["a"], "pool": -3}',
        ],
    ]
    assert live_workers(reply) == (
        LiveWorker("gone", (), 0),
        LiveWorker("neg", ("a",), 0),
        LiveWorker("odd", (), 0),
        LiveWorker("w1", ("a",), 1),
        LiveWorker("w2", ("a", "b"), 4),
    )
    assert live_workers([[], []]) == ()


def test_inspect_imports_no_celery() -> None:
    """``celeriac inspect`` reads Redis alone: neither it nor the broker package it reads through
    loads Celery (about 0.4 s of start-up a user would wait for)."""
    script = (
        "import sys\n"
        "import celeriac.broker, celeriac.cli.inspect, celeriac.inspection.runner\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'celery'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
