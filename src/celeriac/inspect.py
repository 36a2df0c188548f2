"""``celeriac inspect``: what each queue and worker group holds, read from Redis alone.

The same counts as the exporter and ``GET /v1/queues`` (``celeriac.broker.backlog``: one pipelined
read, constant cost per queue), plus each queue's dead letters (``ZCARD``). Per worker group,
the sums over its queues. No worker is asked anything (no broadcast).

Live workers come from celeriac's worker registry (``celeriac.worker.registry``): Celery keeps
none in Redis, so each celeriac worker writes its node name, queues and pool size there every
``CELERIAC_WORKER_REGISTRY_INTERVAL_SECONDS`` and removes them on a graceful shutdown. A worker
is live for ``LIVE_INTERVALS`` (3) of its intervals after its last write, by Redis' clock (so
the nodes' clocks do not matter): a killed worker stops counting within 3 intervals. Each live
worker belongs to the group whose queues are exactly the queues it consumes (the chart runs one
Deployment per group, consuming the group's queues); per group, its live workers (its replicas
that run) and their pool processes. Workers that consume another set of queues are counted
apart, as other workers. Plain ``celery worker`` processes are not in the registry.

``busy`` is the work workers hold: ``in flight`` counts the messages a worker has taken and not
acknowledged. With acks late and a prefetch multiplier of 1, each is reserved by, or running
in, one pool process: the busy processes of the group (an upper bound while a worker still has
a message reserved for a process that is finishing the one before).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import redis

from celeriac import broker
from celeriac.broker import read_backlog
from celeriac.broker.keys import dead_letters_key
from celeriac.env import Env
from celeriac.groups import WorkerGroup, all_queues, groups_from_env
from celeriac.local.plan import ENV_FILE
from celeriac.local.settings import DEFAULT_STATE_DIR
from celeriac.settings import SENTINEL_SEPARATOR, Settings, redact_url
from celeriac.worker.registry import LIVE_INTERVALS, LiveWorker, live_workers, read_live_workers
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


@dataclass(frozen=True)
class QueueReport:
    name: str
    waiting: int
    in_flight: int
    scheduled: int
    dead_letters: int
    # Seconds since the oldest waiting message was published; None when unknown.
    oldest_age_seconds: float | None

    @property
    def backlog(self) -> int:
        return self.waiting + self.in_flight


@dataclass(frozen=True)
class GroupReport:
    name: str
    queues: tuple[str, ...]
    waiting: int
    # Live workers consuming exactly the group's queues (its running replicas), and the sum
    # of their pool processes.
    workers: int
    pool: int
    # Messages the group's workers hold: its busy pool processes (see the module).
    busy: int
    scheduled: int
    dead_letters: int
    oldest_age_seconds: float | None

    @property
    def backlog(self) -> int:
        return self.waiting + self.busy


@dataclass(frozen=True)
class InspectSettings:
    """What ``celeriac inspect`` reads: the broker and queues, and the worker groups."""

    common: Settings
    groups: tuple[WorkerGroup, ...]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> InspectSettings:
        common = Settings.from_env(environ)
        return cls(common=common, groups=groups_from_env(Env(environ), common.queues))

    @property
    def queues(self) -> tuple[str, ...]:
        return all_queues(self.common.served_queues, self.groups)


def inspect(settings: InspectSettings) -> Report:
    """Read the report from the broker's Redis; an error naming it when Redis cannot be read."""
    timeout = settings.common.redis_socket_timeout_seconds
    # Through Sentinel when the broker URL names sentinels, as every component connects.
    client = broker.polling_client(settings.common, timeout, "celeriac-inspect")
    try:
        return read_report(client, settings.queues, settings.groups, settings.common.priority_steps)
    except (redis.RedisError, OSError) as exc:
        where = redact_url(settings.common.broker_url)
        reason = (
            password_problem(settings.common, exc)
            if isinstance(exc, redis.AuthenticationError)
            else str(exc)
        )
        raise RedisUnavailable(f"cannot read Redis at {where}: {reason}") from None
    finally:
        client.close()


def password_problem(settings: Settings, exc: redis.AuthenticationError) -> str:
    """What to do about Redis refusing us, instead of its own words: without a password redis-py's
    first command (``HELLO``) fails with "HELLO must be called with the client already
    authenticated", which does not say that a password is what is missing."""
    where = (
        f"the local stack of `celeriac up` writes it into {DEFAULT_STATE_DIR / ENV_FILE}; in "
        "Kubernetes it is key redis-password of the chart's Secret <fullname>-redis, or the "
        "Secret named by redis.auth.existingSecret or externalRedis.existingSecret"
    )
    if urlsplit(settings.broker_connection_url.split(SENTINEL_SEPARATOR, 1)[0]).password is None:
        return (
            "Redis requires a password and none was given: set CELERIAC_REDIS_PASSWORD or "
            f"CELERIAC_REDIS_PASSWORD_FILE; {where}"
        )
    return f"Redis refused the password ({exc}); check CELERIAC_REDIS_PASSWORD: {where}"


class RedisUnavailable(Exception):
    """Redis could not be read; the message names it (without its password)."""


@dataclass(frozen=True)
class Report:
    queues: tuple[QueueReport, ...]
    groups: tuple[GroupReport, ...]
    # Every live worker, by name.
    workers: tuple[LiveWorker, ...] = ()

    @property
    def other_workers(self) -> tuple[LiveWorker, ...]:
        """Live workers whose queues are no group's: counted in no group."""
        return tuple(w for w in self.workers if group_of(w, self.groups) is None)


def read_report(
    client: redis.Redis,
    queues: Sequence[str],
    groups: Sequence[WorkerGroup],
    priority_steps: Sequence[int],
) -> Report:
    """Read every queue of ``queues`` and of ``groups``; raises ``redis.RedisError``."""
    names = list(dict.fromkeys([*queues, *(q for group in groups for q in group.queues)]))
    counts = read_backlog(client, names, priority_steps)
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zcard(dead_letters_key(name))
        read_live_workers(pipe)
        *dead, live = pipe.execute()
    workers = live_workers(live)
    by_name = {
        name: QueueReport(
            name=name,
            waiting=counts[name].waiting,
            in_flight=counts[name].in_flight,
            scheduled=counts[name].scheduled,
            dead_letters=dead[index],
            oldest_age_seconds=counts[name].oldest_age_seconds,
        )
        for index, name in enumerate(names)
    }
    return Report(
        queues=tuple(by_name.values()),
        groups=tuple(
            _group(
                group,
                [by_name[q] for q in group.queues],
                [w for w in workers if group_of(w, groups) == group.name],
            )
            for group in groups
        ),
        workers=workers,
    )


def group_of(worker: LiveWorker, groups: Sequence[WorkerGroup | GroupReport]) -> str | None:
    """The first group whose queues are exactly the worker's; None when there is none."""
    consumed = set(worker.queues)
    return next((group.name for group in groups if set(group.queues) == consumed), None)


def _group(group: WorkerGroup, queues: list[QueueReport], workers: list[LiveWorker]) -> GroupReport:
    return GroupReport(
        name=group.name,
        queues=group.queues,
        waiting=sum(q.waiting for q in queues),
        workers=len(workers),
        pool=sum(w.pool for w in workers),
        busy=sum(q.in_flight for q in queues),
        scheduled=sum(q.scheduled for q in queues),
        dead_letters=sum(q.dead_letters for q in queues),
        oldest_age_seconds=_oldest(queues),
    )


def _oldest(queues: list[QueueReport]) -> float | None:
    """The oldest wait among the queues; None when a queue with messages waiting has none known."""
    ages = [q.oldest_age_seconds for q in queues if q.waiting]
    if any(age is None for age in ages):
        return None
    return max((age for age in ages if age is not None), default=0.0)


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
