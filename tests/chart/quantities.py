"""Kubernetes CPU quantities and the pool size a worker derives from its CPU limit."""

from __future__ import annotations

import math

from celeriac.worker.sizing import pool_size as worker_pool_size


def cpu_cores(quantity: str | float) -> float:
    """ "500m" -> 0.5, "2" -> 2.0, 1.5 -> 1.5."""
    text = str(quantity)
    if text.endswith("m"):
        return int(text[:-1]) / 1000
    return float(text)


def downward_cpu(quantity: str | float) -> int:
    """What the Downward API hands the pod for limits.cpu with divisor 1: rounded up."""
    return math.ceil(cpu_cores(quantity))


def pool_size(quantity: str | float, per_cpu: float) -> int:
    """The pool a worker with this CPU limit sizes itself to (the worker's own formula)."""
    return worker_pool_size(downward_cpu(quantity), per_cpu)
