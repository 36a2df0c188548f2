"""Start the API: build the app from settings and serve it with uvicorn."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from celeriac.api.app import create_app
from celeriac.api.services import allowed_tasks
from celeriac.api.settings import ApiSettings
from celeriac.settings import Settings

# Kubernetes sends SIGKILL 30 s after SIGTERM by default; in-flight requests get most of that.
GRACEFUL_SHUTDOWN_SECONDS = 20


def check_api(settings: Settings, api_settings: ApiSettings) -> str:
    """What ``run_api`` would serve, without serving it: one line for ``--check``."""
    tasks = sorted(allowed_tasks(settings, api_settings))
    return (
        f"celeriac: api settings are valid: app {settings.app} ({len(tasks)} tasks allowed: "
        f"{', '.join(tasks)}), {len(api_settings.tokens)} token(s), "
        f"listening on {api_settings.host}:{api_settings.port}"
    )


def run_api(settings: Settings, api_settings: ApiSettings) -> None:
    """Serve until SIGTERM or SIGINT; requests in progress get GRACEFUL_SHUTDOWN_SECONDS."""
    # Imported here so `--check` does not pay for uvicorn.
    import uvicorn

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
