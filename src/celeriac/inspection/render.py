"""The inspection for people (tables) and for machines (JSON), with a note on what is shown."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict

from celeriac.inspection.report import Report, group_of
from celeriac.worker.registry import LIVE_INTERVALS, LiveWorker
from celeriac.worker.settings import DEFAULT_REGISTRY_INTERVAL_SECONDS

SHOWN_NOTE = (
    f"workers = live celeriac workers consuming exactly the group's queues, pool = their pool "
    f"processes (each worker writes itself to Redis every "
    f"CELERIAC_WORKER_REGISTRY_INTERVAL_SECONDS, {DEFAULT_REGISTRY_INTERVAL_SECONDS:g}s by "
    f"default, and is live for {LIVE_INTERVALS} intervals after, by Redis' clock); "
    "busy = tasks workers hold now (in flight: with acks late and prefetch 1, one pool process "
    "each)."
)

# Workers in no group named in the table's line about them; --json lists every one.
OTHERS_NAMED = 5


def to_json(report: Report) -> str:
    """The report for machines: counts as numbers, unknown ages as null."""
    other = report.other_workers
    return json.dumps(
        {
            "queues": [{**asdict(q), "backlog": q.backlog} for q in report.queues],
            "groups": [
                {**asdict(g), "queues": list(g.queues), "backlog": g.backlog} for g in report.groups
            ],
            "other_workers": {"workers": len(other), "pool": sum(w.pool for w in other)},
            "workers": [
                {**asdict(w), "queues": list(w.queues), "group": group_of(w, report.groups)}
                for w in report.workers
            ],
            "note": SHOWN_NOTE,
        },
        indent=2,
    )


def to_table(report: Report) -> str:
    """The report for people: one table of queues, one of worker groups, and what is shown."""
    queue_rows = [
        [
            q.name,
            str(q.waiting),
            str(q.in_flight),
            str(q.scheduled),
            str(q.dead_letters),
            _age(q.oldest_age_seconds, q.waiting),
        ]
        for q in report.queues
    ]
    blocks = [
        _table(["QUEUE", "WAITING", "IN FLIGHT", "SCHEDULED", "DEAD LETTERS", "OLDEST"], queue_rows)
    ]
    if report.groups:
        group_rows = [
            [
                g.name,
                ",".join(g.queues),
                str(g.waiting),
                str(g.workers),
                str(g.pool),
                str(g.busy),
                str(g.scheduled),
                str(g.dead_letters),
                _age(g.oldest_age_seconds, g.waiting),
            ]
            for g in report.groups
        ]
        headers = [
            "GROUP",
            "QUEUES",
            "WAITING",
            "WORKERS",
            "POOL",
            "BUSY",
            "SCHEDULED",
            "DEAD LETTERS",
            "OLDEST",
        ]
        blocks.append(_table(headers, group_rows))
    other = report.other_workers
    if other:
        blocks.append(_other_workers(other))
    blocks.append(SHOWN_NOTE)
    return "\n\n".join(blocks)


def _other_workers(workers: Sequence[LiveWorker]) -> str:
    """One line: the live workers in no group, and what each consumes."""
    each = ", ".join(
        f"{w.name} ({','.join(w.queues) or 'no queues'})" for w in workers[:OTHERS_NAMED]
    )
    if len(workers) > OTHERS_NAMED:
        each += f" and {len(workers) - OTHERS_NAMED} more (--json lists them)"
    pool = sum(w.pool for w in workers)
    return f"other workers: {len(workers)}, pool {pool}, consuming no group's queues: {each}"


def _age(seconds: float | None, waiting: int) -> str:
    """``-`` when nothing waits, ``?`` when the oldest message carries no publish time."""
    if not waiting:
        return "-"
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned first columns of names, right-aligned numbers."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    text_columns = 2 if headers[1] == "QUEUES" else 1

    def line(cells: list[str]) -> str:
        parts = [
            cell.ljust(width) if i < text_columns else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join(line(row) for row in [headers, *rows])
