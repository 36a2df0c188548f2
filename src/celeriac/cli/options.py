"""Command-line options that stand for ``CELERIAC_*`` variables.

Click parses none of these values (no ``envvar=``, no ``type=``): each option given is written
into a copy of the environment under its variable, and the component's settings read that copy
through ``celeriac.env.Env``. So ``--port abc`` and ``CELERIAC_API_PORT=abc`` are checked by the
same code and fail with the same one line naming ``CELERIAC_API_PORT``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from celeriac.groups import DEFAULT_GROUP
from celeriac.settings import DEFAULT_APP, DEFAULT_LOG_LEVEL, LOG_LEVELS

_F = TypeVar("_F", bound=Callable[..., Any])


class Setting(click.Option):
    """An option that overrides the environment variable ``variable``."""

    def __init__(self, *args: Any, variable: str, **attrs: Any) -> None:
        attrs["help"] = f"{attrs.get('help', '')} [env: {variable}]".strip()
        super().__init__(*args, default=None, **attrs)
        self.variable = variable


def setting(
    *decls: str, variable: str, help: str, metavar: str | None = None, flag: bool = False
) -> Callable[[_F], _F]:
    """``--name VALUE`` for ``variable``; a flag (or a ``--x/--no-x`` pair) writes true/false."""
    return click.option(
        *decls, cls=Setting, variable=variable, help=help, metavar=metavar, is_flag=flag or None
    )


def environ_with(options: Mapping[str, object]) -> dict[str, str]:
    """``os.environ`` with every setting option given on the command line written in."""
    command = click.get_current_context().command
    environ = dict(os.environ)
    for param in command.params:
        value = options.get(param.name or "")
        if isinstance(param, Setting) and value is not None:
            environ[param.variable] = str(value).lower() if isinstance(value, bool) else str(value)
    return environ


# Every component that imports the Celery app takes it the same way.
app_option = setting(
    "--app",
    "app_path",
    variable="CELERIAC_APP",
    help=f"Your Celery app [default: {DEFAULT_APP}].",
    metavar="MODULE:ATTR",
)

# Every component that logs (worker, beat) takes its level the same way.
loglevel_option = setting(
    "--loglevel",
    variable="CELERIAC_LOG_LEVEL",
    help=f"{', '.join(LOG_LEVELS)} [default: {DEFAULT_LOG_LEVEL}].",
    metavar="LEVEL",
)


# Every component that reports per worker group (exporter, inspect) reads the same file.
worker_groups_file_option = setting(
    "--worker-groups-file",
    variable="CELERIAC_WORKER_GROUPS_FILE",
    help=(
        f"YAML: group name -> {{queues: [...]}}; unset: one group {DEFAULT_GROUP!r} "
        "over CELERIAC_QUEUES."
    ),
    metavar="FILE",
)


def host_option(variable: str, default: str) -> Callable[[_F], _F]:
    """``--host``: the address a server binds."""
    return setting(
        "--host", variable=variable, help=f"Address to bind [default: {default}].", metavar="HOST"
    )


def port_option(
    variable: str, default: int, what: str = "Port", decl: str = "--port"
) -> Callable[[_F], _F]:
    """``--port`` (or ``decl``): a port to listen on, its default taken from the settings."""
    return setting(decl, variable=variable, help=f"{what} [default: {default}].", metavar="PORT")


def check_option(what: str) -> Callable[[_F], _F]:
    """``--check``: do everything up to serving (settings, files, app), print what, exit 0."""
    return click.option(
        "--check", is_flag=True, help=f"Only check {what}; exit 0 if valid, 2 if not."
    )
