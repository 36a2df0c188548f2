"""``celeriac probe``: Kubernetes exec probes that read files, never the broker.

Runs every few seconds in every pod, so it imports neither Celery nor the component it checks
(``celeriac.worker.settings`` only holds constants and reads the environment).
Exit codes leave through ``sys.exit``: ``python -m celeriac`` ignores the value ``ctx.exit``
hands back in Click's non-standalone mode.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from celeriac import heartbeat
from celeriac.beat.settings import DEFAULT_HEARTBEAT_FILE as DEFAULT_BEAT_HEARTBEAT_FILE
from celeriac.worker.settings import (
    DEFAULT_HEARTBEAT_FILE,
    DEFAULT_PROBE_MAX_AGE_SECONDS,
    DEFAULT_READY_FILE,
)

_F = TypeVar("_F", bound=Callable[..., Any])

_MAX_AGE = click.option(
    "--max-age-seconds",
    type=click.FloatRange(min=0, min_open=True),
    envvar="CELERIAC_PROBE_MAX_AGE_SECONDS",
    show_envvar=True,
    default=DEFAULT_PROBE_MAX_AGE_SECONDS,
    show_default=True,
    help="Fail when the heartbeat file is older than this.",
)


def _file_option(name: str, envvar: str, default: Path) -> Callable[[_F], _F]:
    """A file path option, also read from ``envvar``."""
    return click.option(
        name,
        type=click.Path(path_type=Path, dir_okay=False),
        envvar=envvar,
        show_envvar=True,
        default=default,
        show_default=True,
    )


@click.group("probe")
def command() -> None:
    """Kubernetes probes: exit 0 when healthy, 1 when not, with one line saying why."""


@command.command("worker")
@click.option(
    "--ready",
    is_flag=True,
    help="Start-up/readiness: pass while the worker is connected and consuming.",
)
@_MAX_AGE
@_file_option("--heartbeat-file", "CELERIAC_WORKER_HEARTBEAT_FILE", DEFAULT_HEARTBEAT_FILE)
@_file_option("--ready-file", "CELERIAC_WORKER_READY_FILE", DEFAULT_READY_FILE)
def worker(ready: bool, max_age_seconds: float, heartbeat_file: Path, ready_file: Path) -> None:
    """Liveness (default): the worker's event loop touched its heartbeat file recently."""
    if ready:
        if ready_file.exists():
            click.echo(f"worker ready: {ready_file} exists")
            sys.exit(0)
        click.echo(f"worker not ready: {ready_file} does not exist", err=True)
        sys.exit(1)
    sys.exit(_check_heartbeat("worker", heartbeat_file, max_age_seconds))


@command.command("beat")
@_MAX_AGE
@_file_option("--heartbeat-file", "CELERIAC_BEAT_HEARTBEAT_FILE", DEFAULT_BEAT_HEARTBEAT_FILE)
def beat(max_age_seconds: float, heartbeat_file: Path) -> None:
    """Liveness: the scheduler's loop touched its heartbeat file recently."""
    sys.exit(_check_heartbeat("beat", heartbeat_file, max_age_seconds))


def _check_heartbeat(component: str, path: Path, max_age_seconds: float) -> int:
    age = heartbeat.age_seconds(path)
    if age is None:
        click.echo(f"{component} unhealthy: heartbeat file {path} does not exist", err=True)
        return 1
    if age > max_age_seconds:
        click.echo(
            f"{component} unhealthy: heartbeat {age:.1f}s old, more than {max_age_seconds:g}s "
            f"({path})",
            err=True,
        )
        return 1
    click.echo(f"{component} healthy: heartbeat {age:.1f}s old ({path})")
    return 0
