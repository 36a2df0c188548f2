"""``celeriac exporter``: Prometheus metrics of queue and worker-group backlog, from Redis alone."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import click

from celeriac.env import check_port
from celeriac.exporter.collector import create_registry, describe_source, redis_client
from celeriac.exporter.groups import load_groups
from celeriac.exporter.server import create_server, create_wsgi_app, serve
from celeriac.exporter.settings import ExporterSettings

log = logging.getLogger("celeriac.exporter")


@click.command("exporter")
@click.option("--host", envvar="CELERIAC_EXPORTER_HOST", default=None, help="Address to bind.")
@click.option(
    "--port",
    "port_number",
    envvar="CELERIAC_EXPORTER_PORT",
    type=int,
    default=None,
    help="Port for /metrics and /healthz (9540).",
)
@click.option(
    "--worker-groups-file",
    envvar="CELERIAC_WORKER_GROUPS_FILE",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML: group name -> {queues: [...]}; unset: one group 'default' over CELERIAC_QUEUES.",
)
def command(host: str | None, port_number: int | None, worker_groups_file: Path | None) -> None:
    """Serve Prometheus metrics read from Redis alone.

    Per queue: waiting, in-flight, scheduled and backlog messages; per worker group: the
    backlog KEDA scales on. No worker broadcasts: one pipelined round of Redis reads per scrape.
    """
    settings = ExporterSettings.from_env()
    settings = dataclasses.replace(
        settings,
        host=settings.host if host is None else host,
        port=settings.port if port_number is None else check_port("--port", port_number),
        groups=settings.groups if worker_groups_file is None else load_groups(worker_groups_file),
    )
    logging.basicConfig(
        level=settings.common.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    client = redis_client(settings)
    server = create_server(
        settings.host, settings.port, create_wsgi_app(create_registry(settings, client))
    )
    log.info(
        "serving /metrics on %s:%d from %s",
        settings.host,
        server.server_port,
        describe_source(settings),
    )
    try:
        serve(server)
    finally:
        client.close()
    log.info("stopped")
