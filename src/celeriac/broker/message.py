"""What celeriac adds to and reads from a kombu message: its publish time, its ETA."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

# A message property with the Unix time it was published: the age of the oldest waiting message
# (exporter) and the time a task waited before it started (worker metrics) are read from it.
# Celery's message protocol has no publish time of its own. A property, not a header: consumers
# (Celery's tasks, kombu's message.headers) see exactly the headers the producer sent.
PUBLISHED_AT_PROPERTY = "celeriac_published_at"


def eta_score(raw_message: dict[str, Any]) -> float:
    """The message's ETA as a Unix time, or 0 when it has none (runs as soon as delivered)."""
    headers = raw_message.get("headers")
    eta = headers.get("eta") if isinstance(headers, dict) else None
    parsed = parse_eta(eta)
    return 0.0 if parsed is None else parsed.timestamp()


def parse_eta(value: object) -> datetime | None:
    """An ETA header as an aware datetime; None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        eta = datetime.fromisoformat(value)
    except ValueError:
        return None
    # Celery sends UTC-aware ETAs; a naive one (enable_utc off) is read as UTC.
    return eta if eta.tzinfo is not None else eta.replace(tzinfo=UTC)
