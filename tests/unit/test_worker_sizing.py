"""Pool size and max memory per child over fake cgroup trees and Downward API values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from celeriac.worker.cgroup import CgroupReader
from celeriac.worker.settings import WorkerSettings
from celeriac.worker.sizing import (
    MAIN_PROCESS_RESERVE_BYTES,
    MIN_MAX_MEMORY_PER_CHILD_KIB,
    Sizing,
    format_bytes,
    size_worker,
)

GIB = 1 << 30
V2_ONLY = "0::/\n"
# A cgroup v1 host as seen from a container without a cgroup namespace.
V1_NESTED = (
    "12:memory:/kubepods/burstable/pod1/ctr\n"
    "4:cpu,cpuacct:/kubepods/burstable/pod1/ctr\n"
    "1:name=systemd:/kubepods/burstable/pod1/ctr\n"
)


class FakeCgroup:
    """A cgroup tree under tmp_path: ``root`` for /sys/fs/cgroup, a /proc/self/cgroup file."""

    def __init__(self, tmp_path: Path, proc_self_cgroup: str) -> None:
        self.root = tmp_path / "sys" / "fs" / "cgroup"
        self.root.mkdir(parents=True)
        self.proc = tmp_path / "proc-self-cgroup"
        self.proc.write_text(proc_self_cgroup)

    def write(self, relative: str, name: str, content: str) -> None:
        directory = self.root / relative.lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(content + "\n")

    @property
    def reader(self) -> CgroupReader:
        return CgroupReader(root=self.root, proc_self_cgroup=self.proc)


def size(fake: FakeCgroup | CgroupReader, cpus: int = 8, **settings: Any) -> Sizing:
    reader = fake.reader if isinstance(fake, FakeCgroup) else fake
    return size_worker(WorkerSettings(**settings), reader, lambda: cpus)


@pytest.fixture
def v2(tmp_path: Path) -> FakeCgroup:
    return FakeCgroup(tmp_path, V2_ONLY)


def test_explicit_concurrency_wins_over_every_limit(v2: FakeCgroup) -> None:
    v2.write("/", "cpu.max", "100000 100000")
    sizing = size(v2, concurrency=7, cpu_limit=3, concurrency_per_cpu=4.0)
    assert (sizing.pool, sizing.pool_reason) == (7, "from CELERIAC_WORKER_CONCURRENCY")


def test_downward_api_cpu_limit_wins_over_the_cgroup_quota(v2: FakeCgroup) -> None:
    v2.write("/", "cpu.max", "100000 100000")
    sizing = size(v2, cpu_limit=3)
    assert sizing.pool == 3
    assert sizing.pool_reason == "cpu limit 3 from CELERIAC_WORKER_CPU_LIMIT"


@pytest.mark.parametrize(
    ("cpu_max", "pool"),
    [("150000 100000", 2), ("100000 100000", 1), ("50000 100000", 1), ("400000 100000", 4)],
)
def test_cgroup_v2_quota_rounds_up(v2: FakeCgroup, cpu_max: str, pool: int) -> None:
    v2.write("/", "cpu.max", cpu_max)
    sizing = size(v2)
    assert sizing.pool == pool
    assert "from cgroup v2 cpu.max" in sizing.pool_reason


def test_cgroup_v2_unlimited_uses_the_cpus_the_process_may_run_on(v2: FakeCgroup) -> None:
    v2.write("/", "cpu.max", "max 100000")
    sizing = size(v2, cpus=6)
    assert (sizing.pool, sizing.pool_reason) == (6, "no cpu limit; 6 cpus usable (affinity)")


def test_no_cgroup_files_at_all_uses_affinity(tmp_path: Path) -> None:
    reader = CgroupReader(root=tmp_path / "none", proc_self_cgroup=tmp_path / "missing")
    assert size(reader, cpus=3).pool == 3


def test_nested_v2_cgroup_takes_the_smallest_quota_on_the_way_up(tmp_path: Path) -> None:
    fake = FakeCgroup(tmp_path, "0::/kubepods/pod1/ctr\n")
    fake.write("/kubepods", "cpu.max", "300000 100000")
    fake.write("/kubepods/pod1", "cpu.max", "250000 100000")
    fake.write("/kubepods/pod1/ctr", "cpu.max", "max 100000")
    sizing = size(fake)
    assert sizing.pool == 3
    assert "quota 2.5" in sizing.pool_reason


@pytest.mark.parametrize(("quota", "pool"), [("-1", 8), ("150000", 2), ("200000", 2)])
def test_cgroup_v1_quota_in_a_nested_cpu_cpuacct_hierarchy(
    tmp_path: Path, quota: str, pool: int
) -> None:
    fake = FakeCgroup(tmp_path, V1_NESTED)
    ctr = "/cpu,cpuacct/kubepods/burstable/pod1/ctr"
    fake.write(ctr, "cpu.cfs_quota_us", quota)
    fake.write(ctr, "cpu.cfs_period_us", "100000")
    sizing = size(fake, cpus=8)
    assert sizing.pool == pool
    if quota != "-1":
        assert "from cgroup v1 cpu.cfs_quota_us" in sizing.pool_reason


def test_cgroup_v1_quota_through_the_cpu_link_when_the_list_is_not_mounted(
    tmp_path: Path,
) -> None:
    fake = FakeCgroup(tmp_path, V1_NESTED)
    fake.write("/cpu/kubepods/burstable/pod1/ctr", "cpu.cfs_quota_us", "300000")
    fake.write("/cpu/kubepods/burstable/pod1/ctr", "cpu.cfs_period_us", "100000")
    assert size(fake).pool == 3


def test_a_limit_above_the_usable_cpus_is_capped_to_them(v2: FakeCgroup) -> None:
    v2.write("/", "cpu.max", "800000 100000")
    sizing = size(v2, cpus=2)
    assert sizing.pool == 2
    assert "capped to the 2 cpus usable (affinity)" in sizing.pool_reason


@pytest.mark.parametrize(("per_cpu", "pool"), [(4.0, 8), (2.5, 5), (1.25, 3), (0.1, 1), (0.5, 1)])
def test_per_cpu_multiplier_rounds_and_keeps_one(v2: FakeCgroup, per_cpu: float, pool: int) -> None:
    sizing = size(v2, cpu_limit=2, concurrency_per_cpu=per_cpu)
    assert sizing.pool == pool
    assert sizing.pool_reason.endswith("per cpu from CELERIAC_WORKER_CONCURRENCY_PER_CPU")


def test_memory_per_child_from_the_downward_api_limit(v2: FakeCgroup) -> None:
    v2.write("/", "memory.max", str(8 * GIB))  # ignored: the Downward API value wins
    sizing = size(v2, cpu_limit=2, memory_limit_bytes=GIB)
    expected = int((GIB * 0.8 - MAIN_PROCESS_RESERVE_BYTES) / 2 / 1024)
    assert sizing.max_memory_per_child_kib == expected
    assert sizing.memory_reason == "memory limit 1GiB from CELERIAC_WORKER_MEMORY_LIMIT_BYTES"
    assert sizing.describe() == (
        "pool=2 (cpu limit 2 from CELERIAC_WORKER_CPU_LIMIT) "
        f"max_memory_per_child={expected}KiB "
        "(memory limit 1GiB from CELERIAC_WORKER_MEMORY_LIMIT_BYTES)"
    )


def test_memory_per_child_from_cgroup_v2_memory_max(tmp_path: Path) -> None:
    fake = FakeCgroup(tmp_path, "0::/pod/ctr\n")
    fake.write("/pod", "memory.max", str(2 * GIB))
    fake.write("/pod/ctr", "memory.max", "max")
    sizing = size(fake, cpu_limit=4)
    assert sizing.max_memory_per_child_kib == int((2 * GIB * 0.8 - 128 * 2**20) / 4 / 1024)
    assert sizing.memory_reason == "memory limit 2GiB from cgroup v2 memory.max"


def test_memory_per_child_from_cgroup_v1_ignoring_the_unlimited_value(tmp_path: Path) -> None:
    fake = FakeCgroup(tmp_path, V1_NESTED)
    fake.write("/memory", "memory.limit_in_bytes", "9223372036854771712")
    fake.write("/memory/kubepods/burstable/pod1/ctr", "memory.limit_in_bytes", str(GIB))
    sizing = size(fake, concurrency=1)
    assert sizing.max_memory_per_child_kib == int((GIB * 0.8 - 128 * 2**20) / 1024)
    assert sizing.memory_reason == "memory limit 1GiB from cgroup v1 memory.limit_in_bytes"


def test_no_memory_limit_means_no_recycling(tmp_path: Path) -> None:
    fake = FakeCgroup(tmp_path, V1_NESTED)
    fake.write("/memory/kubepods/burstable/pod1/ctr", "memory.limit_in_bytes", str(1 << 63))
    sizing = size(fake)
    assert (sizing.max_memory_per_child_kib, sizing.memory_reason) == (None, "no memory limit")
    assert "max_memory_per_child=off (no memory limit)" in sizing.describe()


def test_explicit_max_memory_per_child_wins_and_zero_disables(v2: FakeCgroup) -> None:
    v2.write("/", "memory.max", str(GIB))
    assert size(v2, max_memory_per_child_kib=300_000).max_memory_per_child_kib == 300_000
    disabled = size(v2, max_memory_per_child_kib=0)
    assert disabled.max_memory_per_child_kib is None
    assert disabled.memory_reason == "disabled by CELERIAC_WORKER_MAX_MEMORY_PER_CHILD_KB=0"


def test_a_limit_too_small_for_the_pool_is_raised_to_the_minimum_with_a_warning(
    v2: FakeCgroup,
) -> None:
    sizing = size(v2, cpu_limit=4, memory_limit_bytes=256 * 2**20)
    assert sizing.max_memory_per_child_kib == MIN_MAX_MEMORY_PER_CHILD_KIB
    assert len(sizing.warnings) == 1
    assert "may be OOM-killed" in sizing.warnings[0]


def test_threads_pool_has_no_children_to_recycle(v2: FakeCgroup) -> None:
    sizing = size(v2, pool="threads", memory_limit_bytes=GIB)
    assert sizing.max_memory_per_child_kib is None


@pytest.mark.parametrize(
    ("value", "text"),
    [(GIB, "1GiB"), (1.5 * GIB, "1.5GiB"), (512 * 2**20, "512MiB"), (2048, "2KiB"), (10, "10B")],
)
def test_format_bytes(value: float, text: str) -> None:
    assert format_bytes(value) == text


def test_new_pool_processes_outlast_a_reconnect_before_celery_kills_them() -> None:
    """While the consumer reconnects nobody reads the UP messages of new pool processes; with
    Celery's 4 s they were SIGKILLed after every failover longer than that."""
    from celery import Celery

    from celeriac.worker.runner import PROC_ALIVE_TIMEOUT_SECONDS, configure_worker
    from celeriac.worker.settings import WorkerSettings

    sizing = Sizing(pool=2, pool_reason="test", max_memory_per_child_kib=None, memory_reason="")
    app = Celery("a", set_as_current=False)
    configure_worker(app, WorkerSettings(), sizing)
    assert app.conf.worker_proc_alive_timeout == PROC_ALIVE_TIMEOUT_SECONDS >= 30
    patient = Celery("b", set_as_current=False)
    patient.conf.worker_proc_alive_timeout = 600
    configure_worker(patient, WorkerSettings(), sizing)
    assert patient.conf.worker_proc_alive_timeout == 600
