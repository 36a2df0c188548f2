"""The Django example project (k8s/examples/django) as the tests run it: its environment,
``manage.py`` commands, and the fixtures of a PostgreSQL server with the project migrated."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.support.postgres import PostgresServer, find_postgres_bin
from tests.support import REPO_ROOT

EXAMPLE = REPO_ROOT / "k8s" / "examples" / "django"
APP = "proj.celery:app"
SETTINGS = "proj.settings"
TEMPLATE_DATABASE = "proj_template"
_databases = itertools.count()


def django_env(
    postgres: PostgresServer, database: str, broker_url: str, **extra: str
) -> dict[str, str]:
    """What every process of the project gets: the three settings README "Django" names (the
    app, Django's settings module, the broker), the database, the example on the path."""
    return {
        "PYTHONPATH": str(EXAMPLE),
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "CELERIAC_APP": APP,
        "CELERIAC_BROKER_URL": broker_url,
        **postgres.env(database),
        **extra,
    }


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """Run ``manage.py`` with ``args``; its output, or AssertionError with it."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "manage.py"), *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def fetch(postgres: PostgresServer, database: str, sql: str, *params: Any) -> list[Any]:
    conn = postgres.connect(database)
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []
    finally:
        conn.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One server per run, with the project migrated into a template database."""
    server = PostgresServer(find_postgres_bin()).start()
    try:
        server.create_database(TEMPLATE_DATABASE)
        manage(django_env(server, TEMPLATE_DATABASE, "redis://127.0.0.1:1/0"), "migrate", "-v0")
        yield server
    finally:
        server.close()


@pytest.fixture
def django_db(postgres_server: PostgresServer) -> str:
    """A fresh, migrated database of the test's own (a copy of the template)."""
    name = f"proj_{next(_databases)}"
    fetch(postgres_server, "postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    fetch(postgres_server, "postgres", f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE_DATABASE}')
    return name
