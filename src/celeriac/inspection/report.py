"""The report of ``celeriac inspect``: what each queue and worker group holds, read from Redis.

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

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from celeriac.broker import read_backlog
from celeriac.broker.keys import dead_letters_key
from celeriac.groups import WorkerGroup
from celeriac.worker.registry import LiveWorker, live_workers, read_live_workers


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
