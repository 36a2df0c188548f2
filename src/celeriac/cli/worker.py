"""``celeriac worker``: a Celery worker sized to its container."""

from __future__ import annotations

import sys

import click

from celeriac.cli.options import app_option, check_option, environ_with, setting


@click.command("worker")
@app_option
@setting(
    "--queues",
    variable="CELERIAC_QUEUES",
    help="Queues to consume [default: default].",
    metavar="A,B",
)
@setting(
    "--concurrency",
    variable="CELERIAC_WORKER_CONCURRENCY",
    help="Pool size [default: sized].",
    metavar="N",
)
@setting(
    "--pool", variable="CELERIAC_WORKER_POOL", help="prefork (default) or threads.", metavar="POOL"
)
@setting(
    "--loglevel",
    variable="CELERIAC_LOG_LEVEL",
    help="DEBUG, INFO (default) ... CRITICAL.",
    metavar="LEVEL",
)
@setting(
    "--hostname",
    variable="CELERIAC_WORKER_HOSTNAME",
    help="Node name [default: celery@<host>].",
    metavar="NAME",
)
@setting(
    "--shutdown-timeout",
    variable="CELERIAC_WORKER_SHUTDOWN_TIMEOUT_SECONDS",
    help="Seconds running tasks get after SIGTERM before they are requeued [default: 25].",
    metavar="SECONDS",
)
@setting(
    "--metrics-port",
    variable="CELERIAC_WORKER_METRICS_PORT",
    help="Task metrics; 0: off [default: 9541].",
    metavar="PORT",
)
@setting(
    "--mingle/--no-mingle",
    variable="CELERIAC_WORKER_MINGLE",
    help="Sync with other workers at start.",
)
@setting(
    "--gossip/--no-gossip", variable="CELERIAC_WORKER_GOSSIP", help="Subscribe to worker events."
)
@setting(
    "--event-heartbeats/--no-event-heartbeats",
    variable="CELERIAC_WORKER_EVENT_HEARTBEATS",
    help="Send worker-heartbeat events (for Flower).",
)
@check_option("the settings, size the pool and import the app")
def command(check: bool, **options: object) -> None:
    """Run a Celery worker sized to its container.

    Pool size follows the CPU limit, max memory per child the memory limit; the worker keeps
    a heartbeat and a ready file for `celeriac probe worker`, serves task metrics, and on
    SIGTERM finishes running tasks within --shutdown-timeout, then requeues the rest.
    """
    from celeriac.worker.runner import check_worker, run_worker
    from celeriac.worker.settings import WorkerSettings

    settings = WorkerSettings.from_env(environ_with(options))
    if check:
        click.echo(check_worker(settings))
        return
    # sys.exit, not ctx.exit: `python -m celeriac` drops the code Click returns for ctx.exit.
    sys.exit(run_worker(settings))
