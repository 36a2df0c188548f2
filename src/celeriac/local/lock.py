"""The state dir lock: one ``celeriac up`` per state dir."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


class StateDirLocked(Exception):
    """Another stack holds the lock; the message is the one line to show."""


@contextlib.contextmanager
def state_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the state dir: two stacks there would share ready files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateDirLocked(
                f"another `celeriac up` is running with state dir {path.parent}; "
                "stop it, or pass --state-dir to run a second stack"
            ) from None
        yield
    finally:
        handle.close()
