"""Child processes (usually ``celeriac <component>``) with their output in a log file."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

CHILD_STOP_TIMEOUT_SECONDS = 15.0


class Child:
    """A child process (usually ``celeriac <component>``) in a session of its own, its output
    in a log file; ``stop`` ends the whole process group."""

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix="celeriac-child-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        self.log_path = log_path
        self._log = self.log_path.open("wb")
        self._terminated = False
        full_env = {**os.environ, **(env or {})}
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            list(args),
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def check_alive(self) -> None:
        """Raise with the tail of the log if the child has exited."""
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.process.args!r} exited:\n{self.output()[-3000:]}")

    def terminate(self) -> None:
        """Send SIGTERM to the whole process group once, without waiting (``stop`` waits).

        Terminating several children first and then stopping each lets them shut down in
        parallel.
        """
        if self.process.poll() is None and not self._terminated:
            self._terminated = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self, timeout: float = CHILD_STOP_TIMEOUT_SECONDS) -> None:
        """Terminate the whole process group; kill it if it lingers."""
        if self.process.poll() is None:
            try:
                self.terminate()
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
            except ProcessLookupError:
                pass
        # Reap stragglers left in the group (pool children after a SIGKILL of the parent).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


def celeriac_command(*args: str) -> list[str]:
    """Run the CLI through this interpreter, so this environment's celeriac is the one run."""
    return [sys.executable, "-m", "celeriac", *args]
