"""``celeriac api``: serve the HTTP API with uvicorn."""

from __future__ import annotations

import click

from celeriac.api.settings import DEFAULT_HOST, DEFAULT_PORT
from celeriac.cli.options import app_option, check_option, environ_with, host_option, port_option


@click.command("api")
@app_option
@host_option("CELERIAC_API_HOST", DEFAULT_HOST)
@port_option("CELERIAC_API_PORT", DEFAULT_PORT)
@check_option("the settings and import the app")
def command(check: bool, **options: object) -> None:
    """Serve the HTTP API that submits and tracks tasks.

    Needs a token: CELERIAC_API_TOKENS or CELERIAC_API_TOKENS_FILE. SIGTERM stops accepting
    connections and lets requests in progress finish.
    """
    # Imported here so other subcommands do not pay for FastAPI (api.settings does not import it).
    from celeriac.api.runner import check_api, run_api
    from celeriac.api.settings import ApiSettings

    settings = ApiSettings.from_env(environ_with(options))
    if check:
        click.echo(check_api(settings))
        return
    run_api(settings)
