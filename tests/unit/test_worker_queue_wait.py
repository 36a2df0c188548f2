"""The queue wait a worker records: publish to start, ETA tasks from their ETA."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from celeriac.broker import PUBLISHED_AT_PROPERTY
from celeriac.worker.metrics import queue_wait


def request(eta: object = None, **properties: object) -> SimpleNamespace:
    """A task's request as Celery's worker builds it: message properties in ``properties``."""
    return SimpleNamespace(delivery_info={"routing_key": "cpu"}, eta=eta, properties=properties)


def test_wait_from_publish_to_start() -> None:
    assert queue_wait(request(**{PUBLISHED_AT_PROPERTY: 100.0}), now=102.5) == ("cpu", 2.5)


def test_an_eta_task_waits_from_its_eta() -> None:
    eta = datetime.fromtimestamp(160.0, UTC).isoformat()
    assert queue_wait(request(eta=eta, **{PUBLISHED_AT_PROPERTY: 100.0}), now=161.0) == ("cpu", 1.0)


def test_no_publish_time_records_nothing() -> None:
    assert queue_wait(request(), now=1.0) is None
    assert queue_wait(None, now=1.0) is None
    # A clock behind the producer's never records a negative wait.
    assert queue_wait(request(**{PUBLISHED_AT_PROPERTY: 10.0}), now=9.0) == ("cpu", 0.0)
