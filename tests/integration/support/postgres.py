"""A private PostgreSQL server for the Django tests: initdb into a temporary directory, then
``postgres`` on a free port of 127.0.0.1, trust authentication, removed by ``close``.

The binaries are Debian's (``apt install postgresql``), found by ``find_postgres_bin``; without
them a test is skipped (failed under CELERIAC_REQUIRE_TOOLS, as in CI). PostgreSQL refuses to
run as root, so as root the server runs as the ``postgres`` system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg2

from celeriac.testing import free_port, wait_until
from tests.support import require_path, require_tool

POSTGRES_HOW_TO_GET = "apt install postgresql (Debian), or brew install postgresql"
POSTGRES_VERSIONS = ("17", "16", "15")
START_TIMEOUT_SECONDS = 30.0
# The server's own user when the tests run as root (postgres refuses root).
SYSTEM_USER = "postgres"
SUPERUSER = "celeriac"


def find_postgres_bin() -> Path:
    """The directory of initdb and postgres: Debian's versioned one, else PATH's."""
    for version in POSTGRES_VERSIONS:
        candidate = Path(f"/usr/lib/postgresql/{version}/bin")
        if (candidate / "postgres").is_file():
            return candidate
    initdb = require_tool("initdb", POSTGRES_HOW_TO_GET)
    return require_path(Path(initdb).parent, "the PostgreSQL binaries", POSTGRES_HOW_TO_GET)


class PostgresServer:
    """One server; ``create_database`` gives each test a database of its own."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="celeriac-postgres-"))
        self.data = self.dir / "data"
        self.process: subprocess.Popen[bytes] | None = None
        # Popen's user/group: the server is our own child, so it gets our signals directly.
        self._as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def _run(self, args: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            list(args), check=True, capture_output=True, cwd=self.dir, **self._as_user
        )

    def start(self) -> PostgresServer:
        self._run(
            [
                str(self.bin_dir / "initdb"),
                "--pgdata",
                str(self.data),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-sync",
            ]
        )
        log = (self.dir / "postgres.log").open("wb")
        self.process = subprocess.Popen(
            [
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.dir}",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=100",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=self.dir,
            **self._as_user,
        )
        log.close()  # the child has its own copy
        wait_until(self._ready, timeout=START_TIMEOUT_SECONDS, message="postgres to accept")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            log = (self.dir / "postgres.log").read_text(errors="replace")
            raise RuntimeError(f"postgres exited with {self.process.returncode}: {log}")
        self.connect("postgres").close()
        return True

    def connect(self, database: str) -> Any:
        """A psycopg2 connection in autocommit; the caller closes it."""
        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=database, connect_timeout=5
        )
        conn.autocommit = True
        return conn

    def create_database(self, name: str) -> None:
        conn = self.connect("postgres")
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def env(self, database: str) -> dict[str, str]:
        """The libpq variables the Django example's settings read."""
        return {
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.port),
            "PGUSER": SUPERUSER,
            "PGDATABASE": database,
        }

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: ends client sessions
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)
