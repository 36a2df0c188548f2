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
from celeriac.cli.options import environ_with, setting
from celeriac.env import Env
from celeriac.worker.settings import (
    DEFAULT_HEARTBEAT_FILE,
    DEFAULT_PROBE_MAX_AGE_SECONDS,
    DEFAULT_READY_FILE,
    stalled_file,
)

_F = TypeVar("_F", bound=Callable[..., Any])

_MAX_AGE = setting(
    "--max-age-seconds",
    variable="CELERIAC_PROBE_MAX_AGE_SECONDS",
    help="Fail when the heartbeat file is older than this "
    f"[default: {DEFAULT_PROBE_MAX_AGE_SECONDS:g}].",
    metavar="SECONDS",
)
# Probes run every few seconds; less than this is a typo, not a policy.
MIN_PROBE_MAX_AGE_SECONDS = 0.1


def _file_option(flag: str, variable: str, default: Path) -> Callable[[_F], _F]:
    return setting(flag, variable=variable, help=f"[default: {default}]", metavar="FILE")


def _max_age(env: Env) -> float:
    return env.number(
        "PROBE_MAX_AGE_SECONDS", DEFAULT_PROBE_MAX_AGE_SECONDS, minimum=MIN_PROBE_MAX_AGE_SECONDS
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
def worker(ready: bool, **options: object) -> None:
    """Liveness (default): the worker's event loop touched its heartbeat file recently, and
    the worker has not stalled (messages wait, it could take one, it takes none)."""
    env = Env(environ_with(options))
    heartbeat_file = env.output_file("WORKER_HEARTBEAT_FILE", DEFAULT_HEARTBEAT_FILE)
    ready_file = env.output_file("WORKER_READY_FILE", DEFAULT_READY_FILE)
    max_age_seconds = _max_age(env)
    if ready:
        if ready_file.exists():
            click.echo(f"worker ready: {ready_file} exists")
            sys.exit(0)
        click.echo(f"worker not ready: {ready_file} does not exist", err=True)
        sys.exit(1)
    stalled = _read_marker(stalled_file(heartbeat_file))
    if stalled is not None:
        click.echo(f"worker unhealthy: consumer stalled: {stalled}", err=True)
        sys.exit(1)
    sys.exit(_check_heartbeat("worker", heartbeat_file, max_age_seconds))


def _read_marker(path: Path) -> str | None:
    """The marker's line, or None when there is none."""
    try:
        return path.read_text(encoding="utf-8").strip() or "(no reason given)"
    except FileNotFoundError:
        return None


@command.command("beat")
@_MAX_AGE
@_file_option("--heartbeat-file", "CELERIAC_BEAT_HEARTBEAT_FILE", DEFAULT_BEAT_HEARTBEAT_FILE)
def beat(**options: object) -> None:
    """Liveness: the scheduler's loop touched its heartbeat file recently."""
    env = Env(environ_with(options))
    heartbeat_file = env.output_file("BEAT_HEARTBEAT_FILE", DEFAULT_BEAT_HEARTBEAT_FILE)
    sys.exit(_check_heartbeat("beat", heartbeat_file, _max_age(env)))


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
