"""``celeriac``: one command, one subcommand per component.

Each subcommand lives in its own module (``celeriac.cli.<name>``) and is imported only when
it runs, so ``celeriac probe worker`` starts in milliseconds.
"""

from __future__ import annotations

import importlib
import sys

import click

from celeriac.env import ConfigError, Env

SUBCOMMANDS = {
    "worker": "Run a Celery worker sized to its container.",
    "beat": "Run the periodic scheduler (exactly one fires, even with two running).",
    "api": "Serve the HTTP API that submits and tracks tasks.",
    "exporter": "Serve Prometheus metrics read from Redis alone.",
    "probe": "Kubernetes probes: exit 0 when healthy, 1 when not.",
    "inspect": "Show queues and worker groups: waiting, in flight, dead letters.",
    "up": "Run the whole stack locally, with no Docker.",
}


class LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS:
            return None
        module = importlib.import_module(f"celeriac.cli.{cmd_name}")
        command: click.Command = module.command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl(list(SUBCOMMANDS.items()))


@click.group(cls=LazyGroup)
# main() reads --debug and CELERIAC_DEBUG itself, before anything can fail.
@click.option("--debug", is_flag=True, help="Show tracebacks [env: CELERIAC_DEBUG].")
@click.version_option(package_name="celeriac")
def cli(debug: bool) -> None:
    """celeriac: Celery on Kubernetes, done right."""


def main(argv: list[str] | None = None) -> int:
    """Entry point: usage and configuration errors exit 2, other failures 1, one line each."""
    args = sys.argv[1:] if argv is None else argv
    try:
        debug = "--debug" in args or Env().boolean("DEBUG", False)
    except ConfigError as exc:
        click.echo(f"celeriac: configuration error: {exc}", err=True)
        sys.exit(2)
    try:
        # Without standalone mode, click returns ctx.exit()'s code (or the command's value).
        result = cli.main(args=args, prog_name="celeriac", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("celeriac: aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        if debug:
            raise
        exc.show()
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        if debug:
            raise
        click.echo(f"celeriac: configuration error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:
        if debug:
            raise
        click.echo(f"celeriac: error: {exc}", err=True)
        sys.exit(1)
