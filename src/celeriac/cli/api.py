"""``celeriac api``: serve the HTTP API with uvicorn."""

from __future__ import annotations

import click

from celeriac.cli.options import app_option, check_option, environ_with, setting


@click.command("api")
@app_option
@setting(
    "--host",
    variable="CELERIAC_API_HOST",
    help="Address to bind [default: 0.0.0.0].",
    metavar="HOST",
)
@setting("--port", variable="CELERIAC_API_PORT", help="Port [default: 8000].", metavar="PORT")
@check_option("the settings and import the app")
def command(check: bool, **options: object) -> None:
    """Serve the HTTP API that submits and tracks tasks.

    Needs a token: CELERIAC_API_TOKENS or CELERIAC_API_TOKENS_FILE. SIGTERM stops accepting
    connections and lets requests in progress finish.
    """
    # Imported here so other subcommands do not pay for FastAPI.
    from celeriac.api.runner import check_api, run_api
    from celeriac.api.settings import ApiSettings
    from celeriac.settings import Settings

    environ = environ_with(options)
    settings, api_settings = Settings.from_env(environ), ApiSettings.from_env(environ)
    if check:
        click.echo(check_api(settings, api_settings))
        return
    run_api(settings, api_settings)
