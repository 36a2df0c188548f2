"""What each of celeriac's settings costs a worker draining no-op tasks (one worker, pool 2).

Method: as ``bench.throughput`` (same workers, rounds, polling and CPU accounting), with one
worker per step of a ladder: stock Celery, then celeriac's settings added to that same stock
worker one group at a time (``BENCH_SETTINGS``, see ``bench/stock_app.py``), then
``celeriac worker`` with its defaults, with per-task log lines, and without task metrics. The
cost of a setting is the difference between its row and the row it adds to, in the same run.
"""

from __future__ import annotations

import json
from typing import Any

from bench.support import Run
from bench.throughput import (
    CELERIAC,
    SAFETY_ONLY,
    STOCK,
    STOCK_WITH_RESULTS,
    TASKS_PER_ROUND,
    Variant,
    measure,
    parameters,
    ratio,
)

NAME = "throughput_settings"
TITLE = "Worker throughput: what each of celeriac's settings costs"
ROUNDS = 6
STARTED_EXTENDED = ("safety", "started", "extended")
LADDER = (
    STOCK,
    SAFETY_ONLY,
    Variant(
        "safety_kombu_transport",
        "safety with kombu's own Redis transport (BRPOP, then MULTI; no in-flight index)",
        ("safety", "kombu_transport"),
    ),
    STOCK_WITH_RESULTS,
    Variant("safety_results", "safety + Redis result backend", ("safety",), results=True),
    Variant(
        "safety_results_started",
        "safety + result backend + STARTED state (task_track_started)",
        ("safety", "started"),
        results=True,
    ),
    Variant(
        "safety_results_started_extended",
        "safety + result backend + STARTED + result_extended (Celery's own backend)",
        STARTED_EXTENDED,
        results=True,
    ),
    Variant(
        "safety_results_started_extended_one_trip",
        "the same with celeriac's result backend (one round trip per state)",
        STARTED_EXTENDED,
        results=True,
        one_trip_backend=True,
    ),
    CELERIAC,
    Variant(
        "celeriac_log_tasks",
        "celeriac worker, per-task log lines on (CELERIAC_WORKER_LOG_TASKS)",
        celeriac=True,
        env={"CELERIAC_WORKER_LOG_TASKS": "true"},
    ),
    Variant(
        "celeriac_no_metrics",
        "celeriac worker, task metrics off",
        celeriac=True,
        env={"CELERIAC_WORKER_METRICS_PORT": "0"},
    ),
)
# (setting, its row, the row it adds to)
COSTS = (
    ("safety settings (acks late, prefetch 1, priorities, transport...)", "safety", "stock"),
    ("celeriac's transport vs kombu's", "safety", "safety_kombu_transport"),
    ("result backend (Celery's)", "safety_results", "safety"),
    ("STARTED state (Celery's backend)", "safety_results_started", "safety_results"),
    ("result_extended", "safety_results_started_extended", "safety_results_started"),
    (
        "celeriac's one-round-trip backend",
        "safety_results_started_extended_one_trip",
        "safety_results_started_extended",
    ),
    ("per-task log lines", "celeriac_log_tasks", "celeriac"),
    ("task metrics", "celeriac", "celeriac_no_metrics"),
)


def main() -> dict[str, Any]:
    run = Run(NAME, TITLE, __doc__)
    measured = measure(LADDER, ROUNDS, TASKS_PER_ROUND)
    medians = measured.medians()
    cpu = {name: sorted(values)[len(values) // 2] for name, values in measured.worker_cpu.items()}
    results = {
        "table": measured.table(LADDER),
        "costs": {
            label: (
                f"throughput x{ratio(medians, row, base)}, "
                f"worker CPU {cpu[row] - cpu[base]:+.2f} ms/task"
            )
            for label, row, base in COSTS
        },
    }
    run.save(parameters(ROUNDS), results, NOTES)
    return results


NOTES = [
    "A cost is the row's median against the row it adds to, both from this run; worker CPU "
    "per task is steadier than the rates on a shared machine, and differences of about "
    "0.1 ms or less are noise.",
    "See bench.throughput for the targets (celeriac's safety settings vs stock, celeriac's "
    "defaults vs stock with the same result backend), measured with more rounds.",
]


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
