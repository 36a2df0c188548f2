"""``celeriac worker``: a Celery worker sized to its container."""

from __future__ import annotations

import sys

import click

from celeriac.cli.options import (
    app_option,
    check_option,
    environ_with,
    loglevel_option,
    port_option,
    setting,
)
from celeriac.settings import DEFAULT_QUEUE
from celeriac.worker.settings import (
    DEFAULT_METRICS_PORT,
    DEFAULT_POOL,
    DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
    POOLS,
)


@click.command("worker")
@app_option
@setting(
    "--queues",
    variable="CELERIAC_QUEUES",
    help=f"Queues to consume [default: CELERIAC_DEFAULT_QUEUE ({DEFAULT_QUEUE})].",
    metavar="A,B",
)
@setting(
    "--concurrency",
    variable="CELERIAC_WORKER_CONCURRENCY",
    help="Pool size [default: sized].",
    metavar="N",
)
@setting(
    "--pool",
    variable="CELERIAC_WORKER_POOL",
    help=f"{', '.join(POOLS)} [default: {DEFAULT_POOL}].",
    metavar="POOL",
)
@loglevel_option
@setting(
    "--hostname",
    variable="CELERIAC_WORKER_HOSTNAME",
    help="Node name [default: celery@<host>].",
    metavar="NAME",
)
@setting(
    "--shutdown-timeout",
    variable="CELERIAC_WORKER_SHUTDOWN_TIMEOUT_SECONDS",
    help=(
        "Seconds running tasks get after SIGTERM before they are requeued "
        f"[default: {DEFAULT_SHUTDOWN_TIMEOUT_SECONDS:g}]."
    ),
    metavar="SECONDS",
)
@port_option(
    "CELERIAC_WORKER_METRICS_PORT", DEFAULT_METRICS_PORT, "Task metrics; 0: off", "--metrics-port"
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
