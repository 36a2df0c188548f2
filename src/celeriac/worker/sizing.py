"""Pool size from the container's CPU limit, max memory per child from its memory limit.

Celery's own default is the host's CPU count, blind to the pod's limit: on a 64-core node a
pod limited to 2 CPUs would fork 64 processes and be throttled (or OOM-killed) for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from celery.utils import sysinfo

from celeriac.worker.cgroup import CgroupReader
from celeriac.worker.settings import WorkerSettings

MIB = 1024 * 1024
# Children get 80% of the memory limit: the other 20% covers what RSS checks do not see
# (page cache, kernel memory charged to the cgroup) and a child's growth during the task that
# crosses the line (the check runs after each task, not during it).
MEMORY_HEADROOM_FRACTION = 0.8
# The main process: measured ~55 MiB RSS with the demo app; real apps import more.
MAIN_PROCESS_RESERVE_BYTES = 128 * MIB
# A fresh prefork child already reports ~48 MiB RSS (pages shared with the main process count
# too); a smaller cap would recycle every child after every task.
MIN_MAX_MEMORY_PER_CHILD_KIB = 64 * 1024


def available_cpu_count() -> int:
    """CPUs this process may run on (affinity, cpusets), as Celery's ``auto`` sizing counts."""
    count: int = sysinfo.available_cpu_count()  # type: ignore[attr-defined]  # stubs predate 5.7
    return count


@dataclass(frozen=True)
class Sizing:
    """The pool size and memory cap chosen, each with where its number came from."""

    pool: int
    pool_reason: str
    max_memory_per_child_kib: int | None
    memory_reason: str
    warnings: tuple[str, ...] = ()

    def describe(self) -> str:
        """The one start-up log line, e.g. ``pool=2 (cpu limit 2 from ...) max_memory...``."""
        memory = (
            "off"
            if self.max_memory_per_child_kib is None
            else f"{self.max_memory_per_child_kib}KiB"
        )
        return (
            f"pool={self.pool} ({self.pool_reason}) "
            f"max_memory_per_child={memory} ({self.memory_reason})"
        )


def size_worker(
    settings: WorkerSettings,
    cgroup: CgroupReader | None = None,
    cpus_available: Callable[[], int] = available_cpu_count,
) -> Sizing:
    """Decide pool size and max memory per child; see README "Sizing" for the rules."""
    cgroup = cgroup or CgroupReader()
    pool, pool_reason = _pool_size(settings, cgroup, cpus_available)
    memory, memory_reason, warnings = _max_memory_per_child(settings, cgroup, pool)
    return Sizing(pool, pool_reason, memory, memory_reason, warnings)


def _pool_size(
    settings: WorkerSettings, cgroup: CgroupReader, cpus_available: Callable[[], int]
) -> tuple[int, str]:
    if settings.concurrency is not None:
        return settings.concurrency, "from CELERIAC_WORKER_CONCURRENCY"
    available = cpus_available()
    if settings.cpu_limit is not None:
        cpus, reason = (
            settings.cpu_limit,
            f"cpu limit {settings.cpu_limit} from CELERIAC_WORKER_CPU_LIMIT",
        )
    elif (quota := cgroup.cpu_quota()) is not None:
        # Rounded up like Kubernetes' Downward API: a 1.5 CPU limit gets 2 processes.
        cpus = max(1, math.ceil(quota.value))
        reason = f"cpu limit {cpus} from {quota.source} quota {quota.value:g}"
    else:
        cpus, reason = available, f"no cpu limit; {available} cpus usable (affinity)"
    if cpus > available:
        reason += f", capped to the {available} cpus usable (affinity)"
        cpus = available
    if settings.concurrency_per_cpu != 1:
        per_cpu = settings.concurrency_per_cpu
        reason += f" x {per_cpu:g} per cpu from CELERIAC_WORKER_CONCURRENCY_PER_CPU"
        return pool_size(cpus, per_cpu), reason
    return cpus, reason


def pool_size(cpus: int, per_cpu: float) -> int:
    """Processes for ``cpus`` whole CPUs at ``per_cpu`` each: half rounds up, at least 1.

    The chart's "celeriac.worker.groups" repeats this for the KEDA target (tests/chart compare).
    """
    return max(1, math.floor(cpus * per_cpu + 0.5))


def _max_memory_per_child(
    settings: WorkerSettings, cgroup: CgroupReader, pool: int
) -> tuple[int | None, str, tuple[str, ...]]:
    explicit = settings.max_memory_per_child_kib
    if explicit == 0:
        return None, "disabled by CELERIAC_WORKER_MAX_MEMORY_PER_CHILD_KB=0", ()
    if explicit is not None:
        return explicit, "from CELERIAC_WORKER_MAX_MEMORY_PER_CHILD_KB", ()
    if settings.pool != "prefork":
        return None, f"the {settings.pool} pool has no child processes to recycle", ()
    if settings.memory_limit_bytes is not None:
        limit = float(settings.memory_limit_bytes)
        source = "CELERIAC_WORKER_MEMORY_LIMIT_BYTES"
    elif (found := cgroup.memory_limit_bytes()) is not None:
        limit, source = found
    else:
        return None, "no memory limit", ()
    reason = f"memory limit {format_bytes(limit)} from {source}"
    budget = (limit * MEMORY_HEADROOM_FRACTION - MAIN_PROCESS_RESERVE_BYTES) / pool
    kib = math.floor(budget / 1024)
    if kib < MIN_MAX_MEMORY_PER_CHILD_KIB:
        warning = (
            f"memory limit {format_bytes(limit)} leaves {max(kib, 0)}KiB per process for "
            f"{pool} processes; using {MIN_MAX_MEMORY_PER_CHILD_KIB}KiB, the pod may be "
            "OOM-killed: raise the limit or lower the concurrency"
        )
        return MIN_MAX_MEMORY_PER_CHILD_KIB, reason + ", raised to the minimum", (warning,)
    return kib, reason, ()


def format_bytes(value: float) -> str:
    """``1073741824`` -> ``1GiB``, ``1536 * 2**20`` -> ``1.5GiB``, for log lines."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.0f}B"
