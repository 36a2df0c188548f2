"""``celeriac api``: serve the HTTP API with uvicorn."""

from __future__ import annotations

import dataclasses
import signal
from types import FrameType
from typing import Any

import click

from celeriac.settings import Settings

# Kubernetes sends SIGKILL 30 s after SIGTERM by default; in-flight requests get most of that.
GRACEFUL_SHUTDOWN_SECONDS = 20


@click.command("api")
@click.option("--app", "app_path", envvar="CELERIAC_APP", default=None, help="module:attr")
@click.option("--host", envvar="CELERIAC_API_HOST", default=None, help="Default 0.0.0.0.")
@click.option("--port", envvar="CELERIAC_API_PORT", type=int, default=None, help="Default 8000.")
def command(app_path: str | None, host: str | None, port: int | None) -> None:
    """Serve the HTTP API that submits and tracks tasks.

    Needs a token: CELERIAC_API_TOKENS or CELERIAC_API_TOKENS_FILE. SIGTERM stops accepting
    connections and lets requests in progress finish.
    """
    # Imported here so other subcommands do not pay for FastAPI.
    import uvicorn

    from celeriac.api import ApiSettings, create_app

    settings = Settings.from_env()
    if app_path:
        settings = dataclasses.replace(settings, app=app_path)
    api_settings = ApiSettings.from_env()
    api_settings = dataclasses.replace(
        api_settings,
        host=api_settings.host if host is None else host,
        port=api_settings.port if port is None else port,
    )
    application = create_app(settings, api_settings)
    # uvicorn drains requests on SIGTERM/SIGINT, then re-raises the signal to the handler it
    # found; with this one a requested stop ends with status 0, not "killed by SIGTERM".
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)
    uvicorn.run(
        application,
        host=api_settings.host,
        port=api_settings.port,
        log_config=log_config(settings.log_level),
        access_log=True,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def log_config(level: str) -> dict[str, Any]:
    """One line per record on stderr. The access log holds method, path and status only:
    uvicorn never logs headers, so tokens (always in ``Authorization``) stay out."""
    line = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"format": line},
            "access": {
                "()": "uvicorn.logging.AccessFormatter",
                "fmt": '%(asctime)s %(levelname)s access: %(client_addr)s "%(request_line)s" '
                "%(status_code)s",
                "use_colors": False,
            },
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
