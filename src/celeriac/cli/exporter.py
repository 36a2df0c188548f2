"""``celeriac exporter``: Prometheus metrics of queue and worker-group backlog, from Redis alone."""

from __future__ import annotations

import click

from celeriac.cli.options import (
    check_option,
    environ_with,
    host_option,
    port_option,
    worker_groups_file_option,
)
from celeriac.exporter.settings import DEFAULT_HOST, DEFAULT_PORT


@click.command("exporter")
@host_option("CELERIAC_EXPORTER_HOST", DEFAULT_HOST)
@port_option("CELERIAC_EXPORTER_PORT", DEFAULT_PORT, "Port for /metrics and /healthz")
@worker_groups_file_option
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
