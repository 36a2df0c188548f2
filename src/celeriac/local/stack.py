"""Run the local stack: Redis, then api, worker, beat and exporter; stop all of it on a signal.

``LocalStack.run`` returns the exit code: 0 after a requested stop (Ctrl-C, SIGTERM, SIGHUP),
1 when a component failed to start or died on its own. A second Ctrl-C kills at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import IO, Any

from celeriac import heartbeat
from celeriac.local import checks
from celeriac.local.banner import banner, example_call
from celeriac.local.console import Console
from celeriac.local.leftovers import record_processes, stop_leftovers
from celeriac.local.lock import state_lock
from celeriac.local.plan import (
    COMPONENTS,
    LOCK_FILE,
    PIDS_FILE,
    StackPlan,
    make_plan,
    ungrouped_queues,
)
from celeriac.local.process import ManagedProcess, stop_all
from celeriac.local.redis_server import (
    check_data_readable,
    config_text,
    find_redis_server,
    redis_version,
    write_config,
)
from celeriac.local.settings import LocalSettings

LOOP_INTERVAL_SECONDS = 0.1
REDIS_READY_TIMEOUT_SECONDS = 15.0
REDIS_STOP_TIMEOUT_SECONDS = 10.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StackError(Exception):
    """A start-up failure worth one line (the caller adds nothing but the exit code)."""


class _StopRequested(Exception):
    pass


class _ChildDied(Exception):
    def __init__(self, process: ManagedProcess) -> None:
        super().__init__(process.name)
        self.process = process


def exit_status(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class LocalStack:
    def __init__(
        self,
        settings: LocalSettings,
        console: Console,
        environ: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        python: str = sys.executable,
    ) -> None:
        self.settings = settings
        self.console = console
        self.environ = dict(os.environ if environ is None else environ)
        self.cwd = (cwd or Path.cwd()).resolve()
        self.python = python
        self.redis: ManagedProcess | None = None
        self.components: list[ManagedProcess] = []
        self._stop_signal: int | None = None
        self._force = False

    # Signals: the handlers only record; the main loop acts (printing from a handler could
    # deadlock on the console lock the interrupted code holds).
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum
        else:
            self._force = True

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        previous: dict[signal.Signals, Any] = {}
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, self._on_signal)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def run(self) -> int:
        settings = self.settings.validate()
        state_dir = (self.cwd / settings.state_dir).resolve()
        redis_binary = find_redis_server(settings.redis_server)
        version = redis_version(redis_binary)
        with state_lock(state_dir / LOCK_FILE), self._signals():
            # Before choosing ports: leftovers may hold the default ones.
            leftovers = stop_leftovers(state_dir / PIDS_FILE)
            if leftovers:
                self.console.info(f"stopped {leftovers} processes left over by an earlier run")
            plan, notes = make_plan(settings, state_dir)
            check_data_readable(redis_binary, version, plan.redis_dir)
            ungrouped = ungrouped_queues(plan, self.environ)
            if ungrouped:
                notes.append(
                    f"queue(s) {', '.join(ungrouped)} in no group of {plan.worker_groups_file}: "
                    "no group backlog counts them"
                )
            for note in notes:
                self.console.info(note)
            self._prepare_files(plan)
            try:
                return self._run(plan, redis_binary, notes)
            finally:
                self._shutdown(plan)

    def _prepare_files(self, plan: StackPlan) -> None:
        for folder in (plan.logs_dir, plan.redis_dir, plan.metrics_dir):
            folder.mkdir(parents=True, exist_ok=True)
        # A ready file from an earlier run must not pass for this one.
        for path in (plan.worker_ready_file, plan.worker_heartbeat_file, plan.beat_heartbeat_file):
            heartbeat.remove(path)
        write_config(
            plan.redis_config, config_text(plan.redis_port, plan.redis_password, plan.redis_dir)
        )
        write_config(plan.env_file, plan.producer_environment())

    def _run(self, plan: StackPlan, redis_binary: Path, notes: list[str]) -> int:
        try:
            self.console.info(f"starting redis-server ({redis_binary}) on port {plan.redis_port}")
            self._start("redis", [str(redis_binary), str(plan.redis_config)], plan)
            self._wait_ready(
                {"redis": checks.redis_ok(plan.redis_port, plan.redis_password)},
                REDIS_READY_TIMEOUT_SECONDS,
            )
            self.console.info(f"starting {', '.join(COMPONENTS)} (app {plan.app})")
            for name in COMPONENTS:
                self._start(name, [self.python, "-m", "celeriac", name], plan)
            self._wait_ready(self._readiness(plan), self.settings.ready_timeout_seconds)
            record_processes(plan.pids_file, self._started(), snapshot=True)
            self.console.block(banner(plan, notes, example_call(plan, self.environ)))
            while True:
                self._check_running()
                time.sleep(LOOP_INTERVAL_SECONDS)
        except _StopRequested:
            assert self._stop_signal is not None
            self.console.info(f"{signal.Signals(self._stop_signal).name}: stopping")
            return 0
        except _ChildDied as died:
            process = died.process
            self.console.error(
                f"{process.name} stopped unexpectedly ({exit_status(process.poll())}); "
                f"stopping the stack (log: {process.log_path})"
            )
            self._show_tail(process)
            return 1
        except StackError as exc:
            self.console.error(str(exc))
            return 1

    def _readiness(self, plan: StackPlan) -> dict[str, checks.Check]:
        return {
            "api": checks.http_ok(f"{plan.api_url}/readyz"),
            "worker": checks.file_exists(plan.worker_ready_file),
            "beat": checks.file_exists(plan.beat_heartbeat_file),
            "exporter": checks.http_ok(plan.exporter_url),
        }

    def _start(self, name: str, args: list[str], plan: StackPlan) -> None:
        env = (
            {**self.environ, "PYTHONUNBUFFERED": "1"}
            if name == "redis"
            else plan.environment(name, self.environ)
        )
        process = ManagedProcess(
            name,
            args,
            env,
            plan.log_file(name),
            self.console,
            cwd=plan.redis_dir if name == "redis" else self.cwd,
            echo=name != "redis",
        )
        # Tracked before anything else can fail, so shutdown always finds it.
        if name == "redis":
            self.redis = process
        else:
            self.components.append(process)
        record_processes(plan.pids_file, self._started())

    def _started(self) -> list[ManagedProcess]:
        return ([self.redis] if self.redis else []) + self.components

    def _check_running(self) -> None:
        if self._stop_signal is not None:
            raise _StopRequested
        for process in self._started():
            if not process.running:
                raise _ChildDied(process)

    def _wait_ready(self, pending: dict[str, checks.Check], timeout: float) -> None:
        started = time.monotonic()
        deadline = started + timeout
        pending = dict(pending)
        while pending:
            self._check_running()
            for name, check in list(pending.items()):
                if check():
                    del pending[name]
                    self.console.info(f"{name} ready ({time.monotonic() - started:.1f} s)")
            if not pending:
                return
            if time.monotonic() > deadline:
                for name in pending:
                    process = self._by_name(name)
                    if process is not None:
                        self._show_tail(process)
                raise StackError(
                    f"not ready after {timeout:.0f} s: {', '.join(pending)}; "
                    f"see {self._logs_hint()}"
                )
            time.sleep(LOOP_INTERVAL_SECONDS)

    def _by_name(self, name: str) -> ManagedProcess | None:
        return next((p for p in self._started() if p.name == name), None)

    def _logs_hint(self) -> str:
        started = self._started()
        return str(started[0].log_path.parent) if started else "the logs"

    def _show_tail(self, process: ManagedProcess) -> None:
        # Streamed output already showed these lines; otherwise they are only in the file.
        if process.echo and not self.console.quiet:
            return
        tail = process.tail()
        if tail:
            self.console.error(f"last lines of {process.log_path}:")
            self.console.block("\n".join(f"    {line}" for line in tail))

    def _shutdown(self, plan: StackPlan) -> None:
        if not self._started():
            return
        if self.components:
            self.console.info(f"stopping {', '.join(p.name for p in self.components)}")
        killed = stop_all(
            self.components,
            self.settings.stop_timeout_seconds,
            force=lambda: self._force,
        )
        # Redis last: the worker acks or requeues its tasks on the way out.
        if self.redis is not None:
            killed += stop_all([self.redis], REDIS_STOP_TIMEOUT_SECONDS, force=lambda: self._force)
        if killed:
            self.console.error(f"killed {', '.join(killed)}: not stopped in time, or Ctrl-C again")
        left = [p.name for p in self._started() if not p.group_gone()]
        if left:
            self.console.error(f"could not stop: {', '.join(left)}; see {plan.pids_file}")
        else:
            plan.pids_file.unlink(missing_ok=True)
            self.console.info("stopped; no process left behind")


def run(settings: LocalSettings, *, stream: IO[str] | None = None) -> int:
    """Run until stopped; StackError, StateDirLocked and ConfigError carry the one line to show."""
    return LocalStack(settings, Console(quiet=settings.quiet, stream=stream)).run()
