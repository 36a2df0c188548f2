"""A stock Celery app for comparison: Celery's own defaults (json serializer, early acks,
prefetch multiplier 4), with the same task name as ``celeriac.demo.add``.

``BENCH_BROKER_URL`` names the broker; ``BENCH_RESULT_BACKEND``, when set, a result backend
(stock Celery has none by default).
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery(
    "stock",
    broker=os.environ.get("BENCH_BROKER_URL", "redis://localhost:6379/0"),
    backend=os.environ.get("BENCH_RESULT_BACKEND") or None,
)


@app.task(name="celeriac.demo.add")
def add(x: float, y: float) -> float:
    return x + y
