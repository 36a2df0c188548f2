"""Readiness checks ``celeriac up`` waits on: the same signals Kubernetes probes read."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis

CHECK_TIMEOUT_SECONDS = 2.0

Check = Callable[[], bool]


def http_ok(url: str, timeout: float = CHECK_TIMEOUT_SECONDS) -> Check:
    """GET ``url`` answers 2xx."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                status: int = response.status
                return 200 <= status < 300
        except (urllib.error.URLError, OSError, ValueError):
            return False

    return check


def redis_ok(port: int, password: str, host: str = "127.0.0.1") -> Check:
    """The server answers PING with our password."""

    def check() -> bool:
        client = redis.Redis(
            host=host,
            port=port,
            password=password,
            socket_timeout=CHECK_TIMEOUT_SECONDS,
            socket_connect_timeout=CHECK_TIMEOUT_SECONDS,
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    return check


def file_exists(path: Path) -> Check:
    """A ready or heartbeat file has appeared."""

    def check() -> bool:
        return path.exists()

    return check
