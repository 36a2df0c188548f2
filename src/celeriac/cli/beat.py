"""``celeriac beat``: the periodic scheduler, or ``--check`` to only validate the schedule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from celeriac.beat.settings import BeatSettings
from celeriac.settings import LOG_LEVELS, Settings


@click.command("beat")
@click.option(
    "--app",
    "app_path",
    envvar="CELERIAC_APP",
    default=None,
    help="The Celery app as module:attribute (default celeriac.demo:app).",
)
@click.option(
    "--schedule",
    "schedule_file",
    envvar="CELERIAC_BEAT_SCHEDULE_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The YAML schedule file (unset: an empty schedule).",
)
@click.option(
    "--check",
    is_flag=True,
    help="Only validate the schedule file and settings; exit 0 if valid, 2 if not.",
)
@click.option(
    "--loglevel",
    envvar="CELERIAC_LOG_LEVEL",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default=None,
    help="Log level (default INFO).",
)
def command(
    app_path: str | None, schedule_file: Path | None, check: bool, loglevel: str | None
) -> None:
    """Run the periodic scheduler: fires the schedule file's entries from Redis.

    Exactly one beat fires at a time; a second one stands by until the first releases its
    lock (on SIGTERM) or the lock expires.
    """
    beat = BeatSettings.from_env()
    if schedule_file is not None:
        beat = dataclasses.replace(beat, schedule_file=schedule_file)
    if check:
        _check(beat)
        return
    # Imported here so `--check` needs no Celery app and starts fast.
    from celeriac.app import load_app
    from celeriac.beat.runner import run

    settings = Settings.from_env()
    app = load_app(app_path or settings.app, settings)
    run(app, settings, beat, (loglevel or settings.log_level).upper())


def _check(beat: BeatSettings) -> None:
    from celeriac.beat.schedule import load_schedule

    if beat.schedule_file is None:
        click.echo("celeriac: no schedule file given (--schedule or CELERIAC_BEAT_SCHEDULE_FILE)")
        return
    entries = load_schedule(beat.schedule_file)
    click.echo(f"celeriac: schedule {beat.schedule_file} is valid: {len(entries)} entries")
    for entry in entries:
        click.echo(f"  {entry.describe()}")
