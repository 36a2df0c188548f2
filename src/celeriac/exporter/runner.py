"""Start the exporter: one Redis client, one registry, one small HTTP server."""

from __future__ import annotations

import logging

from celeriac.exporter.collector import create_registry, describe_source, redis_client
from celeriac.exporter.server import create_server, create_wsgi_app, serve
from celeriac.exporter.settings import ExporterSettings

log = logging.getLogger("celeriac.exporter")


def check_exporter(settings: ExporterSettings) -> str:
    """What ``run_exporter`` would serve, without serving it: one line for ``--check``."""
    groups = ", ".join(f"{group.name} ({','.join(group.queues)})" for group in settings.groups)
    return (
        f"celeriac: exporter settings are valid: queues {','.join(settings.queues)}; "
        f"groups {groups or 'none'}; listening on {settings.host}:{settings.port}"
    )


def run_exporter(settings: ExporterSettings) -> None:
    """Serve ``/metrics`` and ``/healthz`` until SIGTERM or SIGINT."""
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
