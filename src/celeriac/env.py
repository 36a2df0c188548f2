"""Typed reads of ``CELERIAC_*`` environment variables.

Every error names the variable, the bad value and what would be accepted, so a
misconfigured pod fails at start with one line instead of a traceback later.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path

PREFIX = "CELERIAC_"
MAX_PORT = 65535
MAX_HOSTNAME_LENGTH = 253

_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(ValueError):
    """A setting has a value celeriac cannot use; the message says which and why."""


class Env:
    """Reads settings from one environment mapping (``os.environ`` by default)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ: Mapping[str, str] = os.environ if environ is None else environ

    def raw(self, name: str) -> str | None:
        value = self._environ.get(PREFIX + name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def string(self, name: str, default: str) -> str:
        value = self.raw(name)
        return default if value is None else value

    def optional_string(self, name: str) -> str | None:
        return self.raw(name)

    def integer(self, name: str, default: int, *, minimum: int | None = None) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{PREFIX}{name}={value!r} is not a whole number") from None
        _check_minimum(name, value, number, minimum)
        return number

    def optional_integer(self, name: str, *, minimum: int | None = None) -> int | None:
        if self.raw(name) is None:
            return None
        return self.integer(name, 0, minimum=minimum)

    def number(self, name: str, default: float, *, minimum: float | None = None) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{PREFIX}{name}={value!r} is not a number") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ConfigError(f"{PREFIX}{name}={value!r} is not a finite number")
        _check_minimum(name, value, number, minimum)
        return number

    def optional_number(self, name: str, *, minimum: float | None = None) -> float | None:
        if self.raw(name) is None:
            return None
        return self.number(name, 0.0, minimum=minimum)

    def port(self, name: str, default: int, *, minimum: int = 1) -> int:
        """A TCP port to listen on; ``minimum=0`` where 0 means "switched off" or "any"."""
        return check_port(PREFIX + name, self.integer(name, default), minimum=minimum)

    def optional_port(self, name: str, *, minimum: int = 1) -> int | None:
        """A port, or None when unset (the caller picks one)."""
        if self.raw(name) is None:
            return None
        return self.port(name, 0, minimum=minimum)

    def host(self, name: str, default: str) -> str:
        """An address to bind or reach: an IP address or a host name, checked now, not at bind."""
        return check_host(PREFIX + name, self.string(name, default))

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """One of ``choices``, matched without regard to case; returned as spelled there."""
        value = self.string(name, default)
        for choice in choices:
            if value.lower() == choice.lower():
                return choice
        raise ConfigError(f"{PREFIX}{name}={value!r} is not one of {', '.join(choices)}")

    def output_file(self, name: str, default: Path) -> Path:
        """A file celeriac writes (heartbeat, ready file): anything but an existing directory."""
        path = Path(self.string(name, str(default)))
        if path.is_dir():
            raise ConfigError(f"{PREFIX}{name}={str(path)!r} is a directory; give a file path")
        return path

    def directory(self, name: str, default: Path) -> Path:
        """A directory celeriac creates or fills: anything but an existing non-directory."""
        path = Path(self.string(name, str(default)))
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{PREFIX}{name}={str(path)!r} is not a directory")
        return path

    def input_file(self, name: str) -> Path | None:
        """A file celeriac reads (schedule, groups): must be a readable file when set."""
        return self._file(name, os.R_OK, "a readable file")

    def executable_file(self, name: str) -> Path | None:
        """A program celeriac runs (redis-server): must be an executable file when set."""
        return self._file(name, os.X_OK, "an executable file")

    def _file(self, name: str, mode: int, what: str) -> Path | None:
        value = self.raw(name)
        if value is None:
            return None
        path = Path(value)
        if not path.is_file() or not os.access(path, mode):
            raise ConfigError(f"{PREFIX}{name}={value!r} is not {what}")
        return path

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{PREFIX}{name}={value!r} is not a boolean; use true or false")

    def names(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return default
        items = tuple(item.strip() for item in value.split(",") if item.strip())
        if not items:
            raise ConfigError(f"{PREFIX}{name}={value!r} names no items; give a comma list")
        return items

    def secret(self, name: str) -> str | None:
        """A secret from ``CELERIAC_<name>`` or the file named by ``CELERIAC_<name>_FILE``.

        The file form is how Kubernetes mounts a Secret; its value is never echoed in errors.
        """
        direct = self.raw(name)
        path = self.raw(name + "_FILE")
        if direct is not None and path is not None:
            raise ConfigError(f"set only one of {PREFIX}{name} and {PREFIX}{name}_FILE")
        if path is None:
            return direct
        try:
            content = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{PREFIX}{name}_FILE={path!r} cannot be read: {exc.strerror}"
            ) from None
        if not content:
            raise ConfigError(f"{PREFIX}{name}_FILE={path!r} is empty")
        return content


def check_port(label: str, value: int, *, minimum: int = 1) -> int:
    """``value`` if it is a TCP port from ``minimum`` up; else an error naming ``label``."""
    if not minimum <= value <= MAX_PORT:
        raise ConfigError(f"{label}={value} is not a TCP port; use {minimum}-{MAX_PORT}")
    return value


def check_host(label: str, value: str) -> str:
    """``value`` if it is an IP address or a host name (RFC 1123); else an error naming ``label``.

    A name whose last label is all digits is a mistyped IPv4 address (``999.1.1.1``), not a host.
    """
    try:
        ipaddress.ip_address(value)
    except ValueError:
        labels = value.removesuffix(".").split(".")
        if (
            len(value) <= MAX_HOSTNAME_LENGTH
            and all(_HOSTNAME_LABEL.match(label) for label in labels)
            and not labels[-1].isdigit()
        ):
            return value
        raise ConfigError(
            f"{label}={value!r} is not an IP address or host name; e.g. 0.0.0.0, ::, localhost"
        ) from None
    return value


def _check_minimum(name: str, value: str, number: float, minimum: float | None) -> None:
    if minimum is not None and number < minimum:
        raise ConfigError(f"{PREFIX}{name}={value!r} must be at least {minimum}")
