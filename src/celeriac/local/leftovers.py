"""Processes left behind by an earlier ``celeriac up`` that was killed before it could stop them:
the record each run keeps of its children (pids.json), and stopping what such a record names."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celeriac.local.process import (
    KILL_WAIT_SECONDS,
    POLL_INTERVAL_SECONDS,
    ManagedProcess,
    boot_id,
    group_members,
    is_running,
    read_stat,
)


def record_processes(
    pids_file: Path, processes: Sequence[ManagedProcess], snapshot: bool = False
) -> None:
    """pids.json: each child's process group (``members``: every process in it, once ready)."""
    entries = []
    for process in processes:
        entry: dict[str, Any] = {
            "name": process.name,
            "pid": process.pid,
            "pgid": process.pgid,
            "start_ticks": process.start_ticks,
            "log": str(process.log_path),
        }
        if snapshot:
            entry["members"] = process.group_members()
        entries.append(entry)
    record = {"up": os.getpid(), "boot_id": boot_id(), "processes": entries}
    temporary = pids_file.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    temporary.replace(pids_file)


def stop_leftovers(pids_file: Path) -> int:
    """Kill process groups recorded by an earlier run that never shut down (it was SIGKILLed).

    Only called while holding the state lock, so no live stack owns them. Process and group ids
    are reused, so a process is only taken for ours by what was recorded when it started: this
    boot, its group and session (each child leads a session of its own), and a start no earlier
    than the recorded leader's; a live leader must be the very process recorded.
    """
    try:
        recorded = json.loads(pids_file.read_text())
    except (OSError, ValueError):
        return 0
    killed: list[int] = []
    if isinstance(recorded, dict) and recorded.get("boot_id") == boot_id():
        for entry in recorded.get("processes", []):
            pgid, start_ticks = entry.get("pgid"), entry.get("start_ticks")
            if isinstance(pgid, int) and pgid > 1 and isinstance(start_ticks, int):
                for pid in _our_group_members(pgid, start_ticks):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
    # Until they are gone they still hold their ports, which this run may want.
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    while any(is_running(pid) for pid in killed):
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_INTERVAL_SECONDS)
    pids_file.unlink(missing_ok=True)
    return len(killed)


def _our_group_members(pgid: int, start_ticks: int) -> list[int]:
    leader = read_stat(pgid)
    if leader is not None and (leader.start_ticks != start_ticks or leader.session != pgid):
        return []  # the id now belongs to another process
    members = []
    for pid in group_members(pgid):
        stat = read_stat(pid)
        if stat is not None and stat.session == pgid and stat.start_ticks >= start_ticks:
            members.append(pid)
    return members
