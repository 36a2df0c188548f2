"""Child processes in their own process groups, their output prefixed, and stopping them all.

Each child starts a new session (so its own process group, which its children such as Celery's
pool processes inherit, and no controlling terminal: Ctrl-C reaches only ``celeriac up``, which
then stops the children in order). Stopping sends SIGTERM to the child itself (Celery's warm
shutdown expects the signal on its main process only; its pool processes are stopped by it),
then SIGTERM to anything left in the group once the child has exited, and SIGKILL to the whole
group at the deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from celeriac.local.console import Console

POLL_INTERVAL_SECONDS = 0.05
KILL_WAIT_SECONDS = 5.0
TAIL_LINES = 20
_PROC = Path("/proc")


class ManagedProcess:
    """One child, e.g. ``python -m celeriac worker``, with its output teed to a log file."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        console: Console,
        cwd: Path | None = None,
        *,
        echo: bool = True,
    ) -> None:
        self.name = name
        # False: the output goes to the log file only (redis-server's start-up chatter).
        self.echo = echo
        self.args = list(args)
        self.log_path = log_path
        self._console = console
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            self.args,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.process.pid
        # A new session's leader leads its own process group: group id == pid.
        self.pgid = self.pid
        stat = read_stat(self.pid)
        # With the boot id: how a later run knows this group is ours (pids.json, leftovers.py).
        self.start_ticks = stat.start_ticks if stat is not None else None
        self._reader = threading.Thread(target=self._pump, name=f"log-{name}", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        # Ends at EOF: when the child and every process that inherited its stdout are gone.
        for raw in iter(stdout.readline, b""):
            self._log.write(raw)
            self._log.flush()
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self._tail.append(line)
            if self.echo:
                self._console.child_line(self.name, line)
        stdout.close()

    def poll(self) -> int | None:
        return self.process.poll()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def tail(self) -> list[str]:
        return list(self._tail)

    def group_members(self) -> list[int]:
        return group_members(self.pgid)

    def terminate(self) -> None:
        """SIGTERM to the child itself (not its pool processes: it stops those)."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signum)

    def group_gone(self) -> bool:
        """The child has exited and nothing is left in its process group."""
        return not self.running and not self.group_members()

    def close(self, timeout: float = 2.0) -> None:
        """After the group is gone: drain the output and close the log file."""
        self._reader.join(timeout)
        if not self._reader.is_alive():
            self._log.close()


@dataclass(frozen=True)
class ProcessStat:
    """What /proc/<pid>/stat says of a process that identifies it beyond its (reusable) id."""

    state: str
    pgid: int
    session: int
    # Clock ticks after boot: with the boot id, a (pid, start_ticks) pair is never reused.
    start_ticks: int


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``, from /proc where it exists."""
    if not _PROC.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        stat = read_stat(int(entry.name))
        if stat is not None and stat.pgid == pgid and stat.state != "Z":
            members.append(int(entry.name))
    return members


def read_stat(pid: int) -> ProcessStat | None:
    """``pid``'s state, group, session and start time from /proc, or None if it is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; fields after it do not.
    fields = text[text.rindex(")") + 2 :].split()
    return ProcessStat(
        state=fields[0], pgid=int(fields[2]), session=int(fields[3]), start_ticks=int(fields[19])
    )


def boot_id() -> str:
    """This boot's id: start times count from boot, so they identify a process within one."""
    try:
        return (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return ""


def is_running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (which has exited and holds no port or file)."""
    stat = read_stat(pid)
    return stat is not None and stat.state != "Z"


def stop_all(
    processes: Sequence[ManagedProcess],
    timeout: float,
    *,
    force: Callable[[], bool] = lambda: False,
) -> list[str]:
    """Stop ``processes`` together within ``timeout``; returns the names that needed SIGKILL.

    ``force`` is checked while waiting (a second Ctrl-C): when it turns true, kill at once.
    """
    pending = [process for process in processes if not process.group_gone()]
    for process in pending:
        process.terminate()
    deadline = time.monotonic() + timeout
    swept: set[str] = set()
    while pending and time.monotonic() < deadline and not force():
        for process in list(pending):
            if process.running:
                continue
            if process.group_gone():
                pending.remove(process)
            elif process.name not in swept:
                # The child exited but left processes behind in its group (orphaned pool
                # processes): ask them to stop too before the deadline kills them.
                process.signal_group(signal.SIGTERM)
                swept.add(process.name)
        if pending:
            time.sleep(POLL_INTERVAL_SECONDS)
    killed = []
    for process in pending:
        killed.append(process.name)
        process.signal_group(signal.SIGKILL)
    # SIGKILL cannot be ignored, but the kernel takes a moment to tear processes down.
    kill_deadline = time.monotonic() + KILL_WAIT_SECONDS
    while any(not p.group_gone() for p in pending) and time.monotonic() < kill_deadline:
        time.sleep(POLL_INTERVAL_SECONDS)
    for process in processes:
        process.close()
    return killed
