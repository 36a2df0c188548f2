"""Free ports for the servers and components a test starts."""

from __future__ import annotations

from celeriac.local.ports import any_free_port


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return any_free_port()
