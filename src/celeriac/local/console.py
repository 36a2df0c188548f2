"""The terminal of ``celeriac up``: its own messages and the children's prefixed log lines."""

from __future__ import annotations

import threading
from typing import IO, ClassVar

import click


class Console:
    """Serializes the stack's own messages and the children's prefixed log lines."""

    COLORS: ClassVar[dict[str, str]] = {
        "up": "white",
        "redis": "red",
        "api": "cyan",
        "worker": "green",
        "beat": "magenta",
        "exporter": "yellow",
    }

    def __init__(
        self, *, quiet: bool = False, color: bool | None = None, stream: IO[str] | None = None
    ) -> None:
        self.quiet = quiet
        self._stream = stream
        self._color = color
        self._lock = threading.Lock()
        self._width = max(len(name) for name in self.COLORS)

    def _prefix(self, name: str) -> str:
        prefix = f"[{name}]".ljust(self._width + 2)
        return click.style(prefix, fg=self.COLORS.get(name, "white"), bold=name == "up")

    def _write(self, text: str, *, err: bool = False) -> None:
        with self._lock:
            try:
                click.echo(text, file=self._stream, err=err, color=self._color)
            except (BrokenPipeError, ValueError):
                # The terminal went away (closed pipe); the log files still have everything.
                self.quiet = True

    def info(self, message: str) -> None:
        self._write(f"{self._prefix('up')} {message}")

    def error(self, message: str) -> None:
        self._write(f"{self._prefix('up')} {message}", err=self._stream is None)

    def block(self, text: str) -> None:
        self._write(text)

    def child_line(self, name: str, line: str) -> None:
        if not self.quiet:
            self._write(f"{self._prefix(name)} {line}")
