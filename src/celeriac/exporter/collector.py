"""The Prometheus collector: per-queue and per-group gauges from one round of Redis reads.

Families are built fresh on every scrape, so a queue's numbers are never stale. When Redis
cannot be read, only ``celeriac_redis_up 0`` and the scrape duration are reported: the backlog
gauges are left out rather than reported as 0, because a false 0 would let KEDA scale workers
away; an absent series makes KEDA count a scaler failure and apply its fallback instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from celeriac import broker
from celeriac.broker import QueueBacklog, read_backlog
from celeriac.exporter.settings import ExporterSettings
from celeriac.groups import WorkerGroup, all_queues
from celeriac.settings import redact_url

log = logging.getLogger(__name__)

QUEUE_WAITING = "celeriac_queue_waiting_messages"
QUEUE_IN_FLIGHT = "celeriac_queue_in_flight_messages"
QUEUE_SCHEDULED = "celeriac_queue_scheduled_messages"
QUEUE_BACKLOG = "celeriac_queue_backlog_messages"
GROUP_BACKLOG = "celeriac_group_backlog_messages"
QUEUE_OLDEST_AGE = "celeriac_queue_oldest_age_seconds"
QUEUE_DEAD_LETTERS = "celeriac_queue_dead_letters"
GROUP_OLDEST_AGE = "celeriac_group_oldest_age_seconds"
SCRAPE_ERRORS = "celeriac_scrape_errors_total"
REDIS_UP = "celeriac_redis_up"
SCRAPE_DURATION = "celeriac_scrape_duration_seconds"
QUEUE_LABEL = "queue"
# KEDA's trigger selects GROUP_BACKLOG by this label (charts/celeriac/templates/_helpers.tpl).
GROUP_LABEL = "group"

_HELP = {
    QUEUE_WAITING: "Messages waiting in the queue's lists, summed over every priority sub-list.",
    QUEUE_IN_FLIGHT: "Messages delivered to a worker and not yet acknowledged (reserved or "
    "running), without ETA/countdown messages whose time has not come.",
    QUEUE_SCHEDULED: "ETA/countdown messages a worker holds until their time; not load yet.",
    QUEUE_BACKLOG: "Work to do now: waiting plus in-flight messages.",
    GROUP_BACKLOG: "Backlog summed over the queues a worker group consumes; KEDA scales on it.",
    QUEUE_OLDEST_AGE: "Seconds since the oldest waiting message was published (ETA tasks "
    "passed over; 0 when none waits; absent when unknown, e.g. from a plain Celery producer).",
    QUEUE_DEAD_LETTERS: "Tasks set aside because their worker was lost on each of their last "
    "deliveries (out of memory, a segfault); replay or discard them through the API.",
    GROUP_OLDEST_AGE: "The oldest age over the queues a worker group consumes; absent when "
    "one of them is unknown. KEDA can scale on it as a second trigger.",
    SCRAPE_ERRORS: "Scrapes that could not read Redis in time (the backlog gauges were absent).",
    REDIS_UP: "1 when this scrape read Redis; 0 when it could not, and backlog gauges are absent.",
    SCRAPE_DURATION: "Seconds this scrape spent reading Redis.",
}


class BacklogCollector(Collector):
    """Reads every queue's counts with one pipeline per scrape; never talks to workers."""

    def __init__(
        self,
        client: redis.Redis,
        queues: Sequence[str],
        groups: Sequence[WorkerGroup],
        priority_steps: Sequence[int],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._client = client
        self._queues = all_queues(queues, groups)
        self._groups = tuple(groups)
        self._priority_steps = tuple(priority_steps)
        self._clock = clock
        self._failing = False
        self._errors = 0

    def describe(self) -> Iterable[Metric]:
        # Names only: registering this collector must not read Redis.
        return _Families().all()

    def collect(self) -> Iterable[Metric]:
        started = self._clock()
        counts = self._read()
        elapsed = self._clock() - started
        families = _Families()
        families.redis_up.add_metric([], 0.0 if counts is None else 1.0)
        families.duration.add_metric([], elapsed)
        families.errors.add_metric([], self._errors)
        if counts is not None:
            for queue in self._queues:
                count = counts.get(queue, QueueBacklog())
                families.waiting.add_metric([queue], count.waiting)
                families.in_flight.add_metric([queue], count.in_flight)
                families.scheduled.add_metric([queue], count.scheduled)
                families.backlog.add_metric([queue], count.backlog)
                families.dead_letters.add_metric([queue], count.dead_letters)
                if count.oldest_age_seconds is not None:
                    families.oldest_age.add_metric([queue], count.oldest_age_seconds)
            for group in self._groups:
                members = [counts.get(q, QueueBacklog()) for q in group.queues]
                families.group_backlog.add_metric([group.name], sum(m.backlog for m in members))
                ages = [m.oldest_age_seconds for m in members]
                if all(age is not None for age in ages):
                    families.group_oldest_age.add_metric([group.name], max(a or 0.0 for a in ages))
        # Leave out empty families too: when Redis is down, no HELP/TYPE lines without series.
        return [family for family in families.all() if family.samples]

    def _read(self) -> dict[str, QueueBacklog] | None:
        try:
            counts = read_backlog(self._client, self._queues, self._priority_steps)
        except (redis.RedisError, OSError) as exc:
            # Log on the change only: Prometheus and KEDA scrape every few seconds.
            if not self._failing:
                log.warning(
                    "cannot read Redis, backlog gauges are absent until it answers: %s", exc
                )
            self._failing = True
            self._errors += 1
            return None
        if self._failing:
            log.info("Redis answers again")
        self._failing = False
        return counts


class _Families:
    """Fresh metric families for one scrape."""

    def __init__(self) -> None:
        def gauge(name: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, _HELP[name], labels=labels)

        self.waiting = gauge(QUEUE_WAITING, [QUEUE_LABEL])
        self.in_flight = gauge(QUEUE_IN_FLIGHT, [QUEUE_LABEL])
        self.scheduled = gauge(QUEUE_SCHEDULED, [QUEUE_LABEL])
        self.backlog = gauge(QUEUE_BACKLOG, [QUEUE_LABEL])
        self.oldest_age = gauge(QUEUE_OLDEST_AGE, [QUEUE_LABEL])
        self.dead_letters = gauge(QUEUE_DEAD_LETTERS, [QUEUE_LABEL])
        self.group_backlog = gauge(GROUP_BACKLOG, [GROUP_LABEL])
        self.group_oldest_age = gauge(GROUP_OLDEST_AGE, [GROUP_LABEL])
        self.redis_up = gauge(REDIS_UP)
        self.duration = gauge(SCRAPE_DURATION)
        # CounterMetricFamily adds the _total suffix itself.
        self.errors = CounterMetricFamily(
            SCRAPE_ERRORS.removesuffix("_total"), _HELP[SCRAPE_ERRORS]
        )

    def all(self) -> list[Metric]:
        return [
            self.waiting,
            self.in_flight,
            self.scheduled,
            self.backlog,
            self.oldest_age,
            self.dead_letters,
            self.group_backlog,
            self.group_oldest_age,
            self.redis_up,
            self.duration,
            self.errors,
        ]


def redis_client(settings: ExporterSettings) -> redis.Redis:
    """A client that gives up fast: a scrape must answer before KEDA's timeout, Redis or not."""
    return broker.polling_client(
        settings.common, settings.redis_timeout_seconds, "celeriac-exporter"
    )


def create_registry(settings: ExporterSettings, client: redis.Redis) -> CollectorRegistry:
    """A registry of its own holding only the backlog collector (no global registration)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(
        BacklogCollector(client, settings.queues, settings.groups, settings.common.priority_steps)
    )
    return registry


def describe_source(settings: ExporterSettings) -> str:
    """One log line's worth: the Redis URL (password hidden), queues and groups."""
    groups = ", ".join(f"{g.name}=[{','.join(g.queues)}]" for g in settings.groups)
    return (
        f"redis {redact_url(settings.common.broker_url)}, "
        f"queues {','.join(settings.queues)}, groups {groups}"
    )
