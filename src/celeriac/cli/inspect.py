"""``celeriac inspect``: per queue and worker group, what waits, runs and was set aside, and
the live workers per group."""

from __future__ import annotations

import click

from celeriac.cli.options import environ_with, worker_groups_file_option


@click.command("inspect")
@worker_groups_file_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def command(as_json: bool, **options: object) -> None:
    """Show each queue and worker group, read from Redis alone.

    Per queue: waiting, in flight, scheduled, dead letters and the oldest wait; per worker
    group: the same summed over its queues, in flight shown as busy pool processes, and its
    live workers (consuming exactly its queues) with their pool processes, from the registry
    celeriac workers keep in Redis; workers of no group are counted apart. Exit 0, or 1 with
    one line when Redis cannot be read (2 for bad settings).
    """
    from celeriac.inspection.runner import run_inspection
    from celeriac.inspection.settings import InspectionSettings

    settings = InspectionSettings.from_env(environ_with(options))
    # Redis unreadable: ``RedisUnavailable``, one line and exit 1 from ``celeriac.cli.main``.
    click.echo(run_inspection(settings, as_json=as_json))
