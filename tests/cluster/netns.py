"""The host side of a pod sandbox: bridge, addresses, network namespaces, veths, cgroups.

Every name the agent creates carries a prefix (netns ``ckpod-``, host veth ``ckv``, cgroup
folder ``celeriac-pods``), so `reap()` at start removes what a crashed agent left behind.
Only 10.231.0.0/16 is used: 10.231.0.1 on the bridge (the host, the node's InternalIP) and
10.231.1.2-254 for pods.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import math
import os
import signal
import subprocess
import threading
from pathlib import Path

BRIDGE = "celeriac0"
HOST_ADDRESS = "10.231.0.1"
PREFIX_LENGTH = 16
POD_ADDRESSES = tuple(f"10.231.1.{n}" for n in range(2, 255))
NETNS_PREFIX = "ckpod-"
VETH_PREFIX = "ckv"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_FOLDER = "celeriac-pods"
CGROUP_CONTROLLERS = ("cpu", "memory")
CFS_PERIOD_US = 100_000


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def ensure_bridge() -> None:
    """The bridge `celeriac0` with 10.231.0.1/16, up (idempotent; tests/cluster/network.py makes
    the same one)."""
    if ip("link", "show", BRIDGE, check=False).returncode != 0:
        ip("link", "add", BRIDGE, "type", "bridge")
    address = f"{HOST_ADDRESS}/{PREFIX_LENGTH}"
    if address not in ip("-o", "addr", "show", "dev", BRIDGE).stdout:
        ip("addr", "add", address, "dev", BRIDGE)
    ip("link", "set", BRIDGE, "up")


class Addresses:
    """Pod addresses 10.231.1.2-254, handed out lowest first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: set[str] = set()

    def take(self) -> str:
        with self._lock:
            for address in POD_ADDRESSES:
                if address not in self._used:
                    self._used.add(address)
                    return address
        raise RuntimeError("no free pod address in 10.231.1.2-254")

    def give_back(self, address: str) -> None:
        with self._lock:
            self._used.discard(address)


def names(uid: str) -> tuple[str, str]:
    """(netns, host veth) names for a pod uid: ≤15 characters, prefixed for the reaper."""
    short = uid.replace("-", "")[:11]
    return NETNS_PREFIX + short, VETH_PREFIX + short


def create_netns(uid: str, address: str) -> str:
    """A network namespace with lo up and eth0 at ``address``/16 on the bridge; its path."""
    netns, veth = names(uid)
    delete_netns(uid)
    ip("netns", "add", netns)
    ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
    ip("link", "set", veth, "master", BRIDGE, "up")
    ipaddress.ip_address(address)  # refuse anything but an address
    ip("-n", netns, "addr", "add", f"{address}/{PREFIX_LENGTH}", "dev", "eth0")
    ip("-n", netns, "link", "set", "eth0", "up")
    ip("-n", netns, "link", "set", "lo", "up")
    ip("-n", netns, "route", "add", "default", "via", HOST_ADDRESS)
    return f"/run/netns/{netns}"


def delete_netns(uid: str) -> None:
    netns, veth = names(uid)
    ip("link", "del", veth, check=False)
    ip("netns", "del", netns, check=False)


# --- cgroups (v1: cpu and memory hierarchies) ------------------------------------------------


def cgroup_dirs(name: str) -> list[Path]:
    return [CGROUP_ROOT / c / CGROUP_FOLDER / name for c in CGROUP_CONTROLLERS]


def create_cgroup(
    name: str, cpu_limit: float | None, cpu_request: float | None, memory: int | None
) -> list[str]:
    """A cgroup per controller with the container's limits; the cgroup.procs files to join."""
    delete_cgroup(name)
    cpu_dir, memory_dir = cgroup_dirs(name)
    for folder in (cpu_dir, memory_dir):
        folder.mkdir(parents=True)
    (cpu_dir / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
    quota = -1 if cpu_limit is None else max(1000, math.ceil(cpu_limit * CFS_PERIOD_US))
    (cpu_dir / "cpu.cfs_quota_us").write_text(str(quota))
    if cpu_request is not None:  # the kubelet's shares: 1024 per CPU, at least 2
        (cpu_dir / "cpu.shares").write_text(str(max(2, math.floor(cpu_request * 1024))))
    if memory is not None:
        (memory_dir / "memory.limit_in_bytes").write_text(str(memory))
    return [str(cpu_dir / "cgroup.procs"), str(memory_dir / "cgroup.procs")]


def oom_kills(name: str) -> int:
    """How many processes the kernel's OOM killer ended in this cgroup."""
    with contextlib.suppress(OSError):
        for line in (cgroup_dirs(name)[1] / "memory.oom_control").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    return 0


def kill_cgroup(name: str) -> None:
    """SIGKILL every process left in the container's cgroups (its children, probes)."""
    for folder in cgroup_dirs(name):
        with contextlib.suppress(OSError):
            for pid in (folder / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def delete_cgroup(name: str) -> None:
    kill_cgroup(name)
    for folder in cgroup_dirs(name):
        try:
            folder.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:  # busy: processes still exiting; the reaper retries next start
            if exc.errno != errno.EBUSY:
                raise


# --- reaper ----------------------------------------------------------------------------------


def reap() -> None:
    """Remove every netns, veth and cgroup an earlier agent left (after a crash)."""
    for line in ip("netns", "list").stdout.splitlines():
        netns = line.split()[0] if line.split() else ""
        if netns.startswith(NETNS_PREFIX):
            pids = ip("netns", "pids", netns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            ip("netns", "del", netns, check=False)
    for line in ip("-o", "link", "show").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(VETH_PREFIX):
            ip("link", "del", name, check=False)
    for controller in CGROUP_CONTROLLERS:
        folder = CGROUP_ROOT / controller / CGROUP_FOLDER
        if folder.is_dir():
            for child in folder.iterdir():
                if child.is_dir():
                    delete_cgroup(child.name)
