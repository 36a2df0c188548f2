"""What the local cluster's parts (control plane, node, registry) share: a context manager
that starts them and always stops them, and children run as processes with logs of their own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from celeriac.testing import Child, wait_until


class Lifecycle:
    """``with part:`` starts it, stopping what did start if ``start`` fails part-way; the exit
    stops it. Subclasses write ``start`` and an idempotent ``stop``."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Processes(Lifecycle):
    """A part whose components are child processes, each logging to ``logs/<name>.log``."""

    state_dir: Path
    logs: Path
    start_timeout: float
    children: dict[str, Child]

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child(args, env=env, log_path=self.logs / f"{name}.log", cwd=self.state_dir)
        self.children[name] = child
        return child

    def _wait(self, name: str, probe: Callable[[], object]) -> None:
        """Wait for ``probe`` to pass, failing at once (with the log's tail) if ``name`` exits."""
        child = self.children[name]

        def ready_or_exited() -> object:
            return child.process.poll() is not None or probe()

        wait_until(
            ready_or_exited, timeout=self.start_timeout, interval=0.2, message=f"{name} ready"
        )
        child.check_alive()
