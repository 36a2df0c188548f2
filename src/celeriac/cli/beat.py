"""``celeriac beat``: the periodic scheduler, or ``--check`` to only validate the schedule."""

from __future__ import annotations

import click

from celeriac.cli.options import app_option, check_option, environ_with, loglevel_option, setting


@click.command("beat")
@app_option
@setting(
    "--schedule",
    "schedule_file",
    variable="CELERIAC_BEAT_SCHEDULE_FILE",
    help="The YAML schedule file [default: none, an empty schedule].",
    metavar="FILE",
)
@loglevel_option
@check_option("the settings and the schedule against the app")
def command(check: bool, **options: object) -> None:
    """Run the periodic scheduler: fires the schedule file's entries from Redis.

    Exactly one beat fires at a time; a second one stands by until the first releases its
    lock (on SIGTERM) or the lock expires.
    """
    from celeriac.beat.runner import check_beat, run_beat
    from celeriac.beat.settings import BeatSettings

    settings = BeatSettings.from_env(environ_with(options))
    if check:
        click.echo("\n".join(check_beat(settings)))
        return
    run_beat(settings)
