"""``celeriac worker``: minimal placeholder, replaced by the worker component."""

from __future__ import annotations

import click

from celeriac.app import load_app
from celeriac.settings import Settings


@click.command("worker")
@click.option("--app", "app_path", envvar="CELERIAC_APP", default=None, help="module:attr")
@click.option("--concurrency", type=int, default=2)
def command(app_path: str | None, concurrency: int) -> None:
    """Run a Celery worker."""
    settings = Settings.from_env()
    app = load_app(app_path or settings.app, settings)
    app.worker_main(
        [
            "worker",
            f"--queues={','.join(settings.queues)}",
            f"--concurrency={concurrency}",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
            "--loglevel=INFO",
        ]
    )
