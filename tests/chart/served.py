"""The series names celeriac serves, from the code that serves them (no list to keep in step)."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from prometheus_client.core import Metric

from celeriac.exporter.collector import BacklogCollector
from celeriac.worker.metrics import TaskMetrics

# What Prometheus stores for each family type (counters and histograms add suffixes).
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def _series(families: Iterable[Metric]) -> set[str]:
    return {family.name + suffix for family in families for suffix in _SUFFIXES[family.type]}


@functools.cache
def served_series() -> frozenset[str]:
    """Exporter gauges (its describe(), which reads no Redis) and the worker's task metrics."""
    exporter = BacklogCollector.describe(BacklogCollector.__new__(BacklogCollector))
    task = TaskMetrics()
    worker = [
        family
        for metric in (task.succeeded, task.failed, task.retried, task.runtime)
        for family in metric.describe()
    ]
    return frozenset(_series(exporter) | _series(worker))
