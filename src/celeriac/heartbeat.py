"""Heartbeat and ready files: liveness and start-up probes that need no broker round trip.

A component touches its heartbeat file from its own event loop; ``celeriac probe`` reads the
file's age. A frozen loop stops touching it, so the probe fails; a broker outage does not.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def touch(path: Path) -> None:
    """Create ``path`` (and its folder) or bump its modification time to now."""
    try:
        os.utime(path)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def age_seconds(path: Path, now: float | None = None) -> float | None:
    """Seconds since ``path`` was last touched, or None when it does not exist."""
    try:
        modified = path.stat().st_mtime
    except FileNotFoundError:
        return None
    return max(0.0, (time.time() if now is None else now) - modified)


def remove(path: Path) -> None:
    """Delete ``path`` if present (at start, so a stale file from a previous run never passes)."""
    path.unlink(missing_ok=True)
