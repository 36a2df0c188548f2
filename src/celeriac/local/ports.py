"""Port selection: the default port when it is free, else a nearby free one, and say so.

A port the user asked for explicitly is never swapped silently: if it is taken, that is an
error. There is a short window between the check and the child binding the port; a child that
loses that race fails at start and ``celeriac up`` names it.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass

from celeriac.env import ConfigError

LOCALHOST = "127.0.0.1"
# Ports tried after a taken default (default+1 ...) before asking the kernel for any free one:
# 8001 is easier to remember than 43117.
NEARBY_PORTS = 20


@dataclass(frozen=True)
class PortChoice:
    name: str
    port: int
    # Set when the default was taken and another port was picked.
    note: str | None = None


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    """True when a server could listen on ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do (redis, uvicorn): a port held only by TIME_WAIT sockets counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
        return True


def any_free_port(host: str = LOCALHOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def choose_port(
    name: str,
    requested: int | None,
    default: int,
    reserved: Collection[int] = (),
    *,
    is_free: Callable[[int], bool] = port_is_free,
    any_free: Callable[[], int] = any_free_port,
) -> PortChoice:
    """The port for ``name``: ``requested`` exactly (0 = any free), else ``default`` or a free one.

    ``reserved`` holds ports already given to other components of this stack.
    """
    if requested is not None and requested != 0:
        if requested in reserved:
            raise ConfigError(f"{name} port {requested} is already used by another component")
        if not is_free(requested):
            raise ConfigError(
                f"{name} port {requested} is taken by another process; "
                "choose another, or leave it unset to pick a free one"
            )
        return PortChoice(name, requested)
    if requested is None:
        for candidate in range(default, min(default + NEARBY_PORTS, 65535) + 1):
            if candidate not in reserved and is_free(candidate):
                note = None if candidate == default else f"port {default} is taken"
                return PortChoice(name, candidate, note)
    for _ in range(100):
        candidate = any_free()
        if candidate not in reserved:
            note = f"port {default} is taken" if requested is None else None
            return PortChoice(name, candidate, note)
    raise ConfigError(f"found no free port for {name}")
