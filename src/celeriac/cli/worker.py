"""``celeriac worker``: a Celery worker sized to its container."""

from __future__ import annotations

import os
import sys

import click

# Option -> environment variable: an option given on the command line overrides the variable,
# and both are validated by the same settings code (one set of error messages).
_OPTION_ENV = {
    "app_path": "CELERIAC_APP",
    "queues": "CELERIAC_QUEUES",
    "concurrency": "CELERIAC_WORKER_CONCURRENCY",
    "pool": "CELERIAC_WORKER_POOL",
    "loglevel": "CELERIAC_LOG_LEVEL",
    "hostname": "CELERIAC_WORKER_HOSTNAME",
    "shutdown_timeout": "CELERIAC_WORKER_SHUTDOWN_TIMEOUT_SECONDS",
    "metrics_port": "CELERIAC_WORKER_METRICS_PORT",
    "mingle": "CELERIAC_WORKER_MINGLE",
    "gossip": "CELERIAC_WORKER_GOSSIP",
    "event_heartbeats": "CELERIAC_WORKER_EVENT_HEARTBEATS",
}


def _option(name: str, flag: str, help_text: str, metavar: str) -> click.Option:
    return click.Option(
        [flag, name], envvar=_OPTION_ENV[name], show_envvar=True, help=help_text, metavar=metavar
    )


def _flag(name: str, flags: str, help_text: str) -> click.Option:
    return click.Option(
        [flags, name], envvar=_OPTION_ENV[name], show_envvar=True, help=help_text, default=None
    )


@click.command(
    "worker",
    params=[
        _option("app_path", "--app", "Celery app [default: celeriac.demo:app].", "MODULE:ATTR"),
        _option("queues", "--queues", "Queues to consume [default: default].", "A,B"),
        _option("concurrency", "--concurrency", "Pool size [default: sized].", "N"),
        _option("pool", "--pool", "prefork (default) or threads.", "POOL"),
        _option("loglevel", "--loglevel", "DEBUG, INFO (default) ... CRITICAL.", "LEVEL"),
        _option("hostname", "--hostname", "Node name [default: celery@<host>].", "NAME"),
        _option(
            "shutdown_timeout",
            "--shutdown-timeout",
            "Seconds running tasks get after SIGTERM before they are requeued [default: 25].",
            "SECONDS",
        ),
        _option("metrics_port", "--metrics-port", "Task metrics; 0: off [default: 9541].", "PORT"),
        _flag("mingle", "--mingle/--no-mingle", "Sync with other workers at start."),
        _flag("gossip", "--gossip/--no-gossip", "Subscribe to worker events."),
        _flag(
            "event_heartbeats",
            "--event-heartbeats/--no-event-heartbeats",
            "Send worker-heartbeat events (for Flower).",
        ),
    ],
)
def command(**options: object) -> None:
    """Run a Celery worker sized to its container.

    Pool size follows the CPU limit, max memory per child the memory limit; the worker keeps
    a heartbeat and a ready file for `celeriac probe worker`, serves task metrics, and on
    SIGTERM finishes running tasks within --shutdown-timeout, then requeues the rest.
    """
    from celeriac.worker.runner import run_worker
    from celeriac.worker.settings import WorkerSettings

    environ = dict(os.environ)
    for name, value in options.items():
        if value is not None:
            environ[_OPTION_ENV[name]] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    settings = WorkerSettings.from_env(environ)
    # sys.exit, not ctx.exit: `python -m celeriac` drops the code Click returns for ctx.exit.
    sys.exit(run_worker(settings))
