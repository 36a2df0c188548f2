"""Read this process's CPU quota and memory limit from its cgroup (v2, else v1).

Celery 5.7's ``celery.utils.sysinfo.cgroup_cpu_quota`` reads the fixed module paths
``/sys/fs/cgroup`` and ``/proc/self/cgroup`` and has no memory counterpart, so it cannot be
pointed at a test tree nor answer "how much memory may this pod use". This reader follows the
same rules (start at the process's own cgroup, walk up to the root, the smallest limit wins,
v2 first, then v1) with both paths as parameters, and reads memory the same way.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 reports "no memory limit" as the page counter maximum rounded to a page
# (9223372036854771712 on x86-64); anything this large is no limit.
UNLIMITED_MEMORY_BYTES = 1 << 62


class CgroupPaths(NamedTuple):
    """This process's cgroup paths, as ``/proc/self/cgroup`` names them."""

    v2: str | None
    # v1 controller -> (path inside its hierarchy, mount directory name such as "cpu,cpuacct")
    v1: dict[str, tuple[str, str]]


class Limit(NamedTuple):
    """A limit and the file it came from, for the start-up log line."""

    value: float
    source: str


@dataclass(frozen=True)
class CgroupReader:
    """Reads limits below ``root`` for the cgroup named in ``proc_self_cgroup``."""

    root: Path = CGROUP_ROOT
    proc_self_cgroup: Path = PROC_SELF_CGROUP

    def paths(self) -> CgroupPaths:
        text = _read(self.proc_self_cgroup)
        v2: str | None = None
        v1: dict[str, tuple[str, str]] = {}
        for line in (text or "").splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            hierarchy, controllers, path = parts
            if hierarchy == "0" and controllers == "":
                v2 = path
            else:
                for controller in controllers.split(","):
                    v1[controller] = (path, controllers)
        if text is None:  # no /proc: assume the mount root is our own cgroup
            v2 = "/"
            v1 = {"cpu": ("/", "cpu"), "memory": ("/", "memory")}
        return CgroupPaths(v2, v1)

    def cpu_quota(self) -> Limit | None:
        """CPUs this cgroup may use per period (quota / period), or None when unlimited."""
        return self._limit(
            "cpu", _v2_cpu, "cgroup v2 cpu.max", _v1_cpu, "cgroup v1 cpu.cfs_quota_us"
        )

    def memory_limit_bytes(self) -> Limit | None:
        """Bytes this cgroup may use, or None when unlimited."""
        return self._limit(
            "memory",
            _v2_memory,
            "cgroup v2 memory.max",
            _v1_memory,
            "cgroup v1 memory.limit_in_bytes",
        )

    def _limit(
        self, controller: str, v2: _Reader, v2_source: str, v1: _Reader, v1_source: str
    ) -> Limit | None:
        """The smallest limit up the tree: v2 first, then v1's ``controller`` hierarchy."""
        paths = self.paths()
        if paths.v2 is not None:
            found = _smallest(self.root, paths.v2, v2, v2_source)
            if found is not None:
                return found
        if controller in paths.v1:
            path, mount = paths.v1[controller]
            # The hierarchy is mounted under its controller list ("cpu,cpuacct"); most hosts
            # also link it by the controller's own name ("cpu"), some do not.
            for name in dict.fromkeys((mount, controller)):
                found = _smallest(self.root / name, path, v1, v1_source)
                if found is not None:
                    return found
        return None


# Reads one cgroup directory's limit, or None when that level sets none.
_Reader = Callable[[Path], "float | None"]


def _smallest(base: Path, cgroup: str, read: _Reader, source: str) -> Limit | None:
    limits = [
        value
        for directory in _ancestors(cgroup)
        if (value := read(base / directory.lstrip("/"))) is not None
    ]
    return Limit(min(limits), source) if limits else None


def _v2_cpu(directory: Path) -> float | None:
    parts = (_read(directory / "cpu.max") or "").split()
    return _quota(parts[0], parts[1]) if len(parts) == 2 else None


def _v1_cpu(directory: Path) -> float | None:
    quota = _read(directory / "cpu.cfs_quota_us")
    period = _read(directory / "cpu.cfs_period_us")
    return None if quota is None or period is None else _quota(quota, period)


def _v2_memory(directory: Path) -> float | None:
    return _bytes(_read(directory / "memory.max"))


def _v1_memory(directory: Path) -> float | None:
    return _bytes(_read(directory / "memory.limit_in_bytes"))


def _quota(quota: str, period: str) -> float | None:
    """``quota / period`` in CPUs; v2 "max" and v1 "-1" mean no quota."""
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us


def _bytes(text: str | None) -> float | None:
    try:
        value = int((text or "").strip())
    except ValueError:  # "max", missing or garbled
        return None
    return float(value) if 0 < value < UNLIMITED_MEMORY_BYTES else None


def _ancestors(path: str) -> list[str]:
    """``/a/b`` -> ``['/a/b', '/a', '/']`` (as Celery's sysinfo walks it)."""
    current = posixpath.normpath("/" + path.lstrip("/"))
    out = [current]
    while current != "/":
        current = posixpath.dirname(current)
        out.append(current)
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
