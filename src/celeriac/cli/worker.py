"""``celeriac worker``: a Celery worker sized to its container."""

from __future__ import annotations

import os
import sys
from typing import Any

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


def _option(name: str, flag: str, help_text: str, **kwargs: Any) -> click.Option:
    return click.Option(
        [flag, name], envvar=_OPTION_ENV[name], show_envvar=True, help=help_text, **kwargs
    )


@click.command(
    "worker",
    params=[
        _option(
            "app_path", "--app", "Celery app as module:attribute [default: celeriac.demo:app]."
        ),
        _option("queues", "--queues", "Comma list of queues to consume [default: default]."),
        _option("concurrency", "--concurrency", "Pool size; default: sized to the CPU limit."),
        _option("pool", "--pool", "prefork (default), threads or solo."),
        _option("loglevel", "--loglevel", "DEBUG, INFO (default), WARNING, ERROR or CRITICAL."),
        _option("hostname", "--hostname", "Node name [default: celery@<host name>]."),
        _option(
            "shutdown_timeout",
            "--shutdown-timeout",
            "Seconds running tasks get after SIGTERM before they are requeued [default: 25].",
        ),
        _option("metrics_port", "--metrics-port", "Task metrics port; 0 disables [default: 9541]."),
        _option(
            "mingle", "--mingle/--no-mingle", "Sync with other workers at start.", default=None
        ),
        _option("gossip", "--gossip/--no-gossip", "Subscribe to worker events.", default=None),
        _option(
            "event_heartbeats",
            "--event-heartbeats/--no-event-heartbeats",
            "Send worker-heartbeat events (for Flower).",
            default=None,
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
