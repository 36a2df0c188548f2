"""A stock Celery app for comparison: Celery's own defaults (json serializer, early acks,
prefetch multiplier 4, no result backend), with the same task name as ``celeriac.demo.add``.

``BENCH_BROKER_URL`` names the broker; ``BENCH_RESULT_BACKEND``, when set, a result backend.
``BENCH_SETTINGS`` adds celeriac's settings one group at a time (comma list, see ``GROUPS``),
so the throughput benchmark can say what each costs on the same worker code.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from celeriac.broker import TRANSPORT
from celeriac.settings import DEFAULT_PRIORITY_STEPS

# What celeriac.app.celery_config sets, by group.
GROUPS: dict[str, dict[str, Any]] = {
    # The settings that keep tasks safe: JSON only, acks late + reject on worker lost,
    # prefetch 1, priority lists and celeriac's transport (the in-flight index).
    "safety": {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport": TRANSPORT,
        "broker_transport_options": {
            "visibility_timeout": 3600,
            "priority_steps": list(DEFAULT_PRIORITY_STEPS),
            "queue_order_strategy": "priority",
        },
    },
    # kombu's own Redis transport instead of celeriac's (apply after "safety").
    "kombu_transport": {"broker_transport": "redis"},
    "started": {"task_track_started": True},
    "extended": {"result_extended": True},
}

app = Celery(
    "stock",
    broker=os.environ.get("BENCH_BROKER_URL", "redis://localhost:6379/0"),
    backend=os.environ.get("BENCH_RESULT_BACKEND") or None,
)
for group in filter(None, os.environ.get("BENCH_SETTINGS", "").split(",")):
    app.conf.update(GROUPS[group])


@app.task(name="celeriac.demo.add")
def add(x: float, y: float) -> float:
    return x + y
