"""Processes left behind by an earlier ``celeriac up`` that was killed before it could stop them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

from celeriac.local.process import (
    KILL_WAIT_SECONDS,
    POLL_INTERVAL_SECONDS,
    command_line,
    group_members,
    is_running,
)

# What a process left behind by an earlier, killed `celeriac up` looks like.
_OUR_COMMANDS = ("celeriac", "redis-server")


def stop_leftovers(pids_file: Path) -> int:
    """Kill process groups recorded by an earlier run that never shut down (it was SIGKILLed).

    Only called while holding the state lock, so no live stack owns them; a group id is only
    trusted if its processes still look like ours (process ids are reused).
    """
    try:
        recorded = json.loads(pids_file.read_text())
    except (OSError, ValueError):
        return 0
    killed: list[int] = []
    for entry in recorded.get("processes", []):
        pgid = entry.get("pgid")
        if not isinstance(pgid, int) or pgid <= 1:
            continue
        for pid in group_members(pgid):
            if any(name in command_line(pid) for name in _OUR_COMMANDS):
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
