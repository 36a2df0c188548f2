"""Kubernetes CPU quantities and the pool size a worker derives from its CPU limit."""

from __future__ import annotations

import math


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
    """Pool processes: the rounded-up CPU limit times the per-CPU factor, half rounded up, >= 1."""
    return max(1, math.floor(downward_cpu(quantity) * per_cpu + 0.5))
