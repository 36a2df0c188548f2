"""Start the API: build the app from settings and serve it with uvicorn, in one or more
processes."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from types import FrameType
from typing import Any

from fastapi import FastAPI

from celeriac.api.app import create_app
from celeriac.api.services import allowed_tasks
from celeriac.api.settings import ApiSettings

# Kubernetes sends SIGKILL 30 s after SIGTERM by default; in-flight requests get most of that.
GRACEFUL_SHUTDOWN_SECONDS = 20


def check_api(settings: ApiSettings) -> str:
    """What ``run_api`` would serve, without serving it: one line for ``--check``."""
    tasks = sorted(allowed_tasks(settings))
    return (
        f"celeriac: api settings are valid: app {settings.common.app} ({len(tasks)} tasks "
        f"allowed: {', '.join(tasks)}), {len(settings.tokens)} token(s), "
        f"listening on {settings.host}:{settings.port}, {settings.workers} process(es)"
    )


@dataclass(frozen=True)
class AppFactory:
    """Builds the app in each worker process; pickled to them (uvicorn spawns its workers)."""

    settings: ApiSettings

    def __call__(self) -> FastAPI:
        return create_app(self.settings)


def run_api(settings: ApiSettings) -> None:
    """Serve until SIGTERM or SIGINT; requests in progress get GRACEFUL_SHUTDOWN_SECONDS.

    With ``workers`` > 1 the process is uvicorn's supervisor: it binds the socket, starts the
    workers (each builds the app), restarts one that dies, and on SIGTERM stops them all, each
    draining its requests.
    """
    # Imported here so `--check` does not pay for uvicorn.
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    factory = AppFactory(settings)
    # Checked here, in the process that reports configuration errors with exit code 2.
    application = factory()
    config = uvicorn.Config(
        factory if settings.workers > 1 else application,
        factory=settings.workers > 1,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=log_config(settings.common.log_level),
        access_log=settings.access_log,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    if settings.workers > 1:
        # The supervisor handles SIGTERM/SIGINT itself and returns: exit status 0.
        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return
    # uvicorn drains requests on SIGTERM/SIGINT, then re-raises the signal to the handler it
    # found; with this one a requested stop ends with status 0, not "killed by SIGTERM".
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)
    uvicorn.Server(config).run()


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def log_config(level: str) -> dict[str, Any]:
    """One line per record on stderr. The access log (``CELERIAC_API_ACCESS_LOG``) holds the
    client, request line and status only: uvicorn never logs headers, so tokens (always in
    ``Authorization``) stay out. A plain format, not uvicorn's colouring AccessFormatter."""
    line = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"format": line},
            # uvicorn logs '%s - "%s %s HTTP/%s" %d' % (client, method, path, version, status).
            "access": {"format": "%(asctime)s %(levelname)s access: %(message)s"},
        },
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "default"},
            "access": {"class": "logging.StreamHandler", "formatter": "access"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["access"], "level": level, "propagate": False},
            "celeriac": {"handlers": ["default"], "level": level, "propagate": False},
        },
        "root": {"handlers": ["default"], "level": "WARNING"},
    }
