"""``celeriac exporter``: Prometheus metrics of queue and worker-group backlog, from Redis alone."""

from __future__ import annotations

import click

from celeriac.cli.options import check_option, environ_with, setting


@click.command("exporter")
@setting(
    "--host",
    variable="CELERIAC_EXPORTER_HOST",
    help="Address to bind [default: 0.0.0.0].",
    metavar="HOST",
)
@setting(
    "--port",
    variable="CELERIAC_EXPORTER_PORT",
    help="Port for /metrics and /healthz [default: 9540].",
    metavar="PORT",
)
@setting(
    "--worker-groups-file",
    variable="CELERIAC_WORKER_GROUPS_FILE",
    help="YAML: group name -> {queues: [...]}; unset: one group 'default' over CELERIAC_QUEUES.",
    metavar="FILE",
)
@check_option("the settings and the groups file")
def command(check: bool, **options: object) -> None:
    """Serve Prometheus metrics read from Redis alone.

    Per queue: waiting, in-flight, scheduled and backlog messages; per worker group: the
    backlog KEDA scales on. No worker broadcasts: one pipelined round of Redis reads per scrape.
    """
    from celeriac.exporter.runner import check_exporter, run_exporter
    from celeriac.exporter.settings import ExporterSettings

    settings = ExporterSettings.from_env(environ_with(options))
    if check:
        click.echo(check_exporter(settings))
        return
    run_exporter(settings)
