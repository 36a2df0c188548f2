"""Process groups of the local stack: output prefixing, stopping children and grandchildren.

These start plain Python children (no network): a child that forks a grandchild stands in for
a Celery worker and its pool.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac.local.console import Console
from celeriac.local.leftovers import stop_leftovers
from celeriac.local.process import ManagedProcess, boot_id, group_members, read_stat, stop_all
from celeriac.testing import wait_until

# A parent that starts a grandchild in its own process group, prints both pids, then waits.
# IGNORE_TERM makes the grandchild ignore SIGTERM; ORPHAN makes the parent exit at once.
FAMILY = r"""
import os, signal, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", '''
import os, signal, sys, time
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("grandchild", os.getpid(), flush=True)
while True:
    time.sleep(1)
'''])
print("parent", os.getpid(), flush=True)
if os.environ.get("ORPHAN"):
    sys.exit(0)
signal.signal(signal.SIGTERM, lambda *_: (grandchild.terminate(), sys.exit(0)))
while True:
    time.sleep(1)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def console() -> Console:
    return Console(stream=io.StringIO(), color=False)


@pytest.fixture
def started() -> Iterator[list[ManagedProcess]]:
    processes: list[ManagedProcess] = []
    yield processes
    for process in processes:
        process.signal_group(signal.SIGKILL)
        process.process.wait(5)
        process.close()


def start_family(
    tmp_path: Path, console: Console, started: list[ManagedProcess], **env: str
) -> tuple[ManagedProcess, int]:
    process = ManagedProcess(
        "worker",
        [sys.executable, "-c", FAMILY],
        {**os.environ, **env},
        tmp_path / "worker.log",
        console,
    )
    started.append(process)
    line = wait_until(
        lambda: next((x for x in process.tail() if x.startswith("grandchild")), None),
        timeout=30,
        message="the grandchild to start",
    )
    return process, int(line.split()[1])


def test_output_is_prefixed_and_written_to_the_log(tmp_path: Path, started: list) -> None:
    stream = io.StringIO()
    console = Console(stream=stream, color=False)
    process = ManagedProcess(
        "api",
        [sys.executable, "-c", "print('hello')"],
        dict(os.environ),
        tmp_path / "a.log",
        console,
    )
    started.append(process)
    process.process.wait(30)
    process.close()
    assert "[api]      hello\n" in stream.getvalue()
    assert (tmp_path / "a.log").read_text() == "hello\n"


def test_quiet_console_writes_the_log_only(tmp_path: Path, started: list) -> None:
    stream = io.StringIO()
    console = Console(stream=stream, color=False, quiet=True)
    process = ManagedProcess(
        "api",
        [sys.executable, "-c", "print('hello')"],
        dict(os.environ),
        tmp_path / "a.log",
        console,
    )
    started.append(process)
    process.process.wait(30)
    process.close()
    assert stream.getvalue() == ""
    assert process.tail() == ["hello"]


def test_child_runs_in_its_own_process_group(
    tmp_path: Path, console: Console, started: list
) -> None:
    process, grandchild = start_family(tmp_path, console, started)
    assert os.getpgid(process.pid) == process.pid != os.getpgid(0)
    assert os.getpgid(grandchild) == process.pid
    assert set(process.group_members()) == {process.pid, grandchild}


def test_stop_all_stops_child_and_grandchild(
    tmp_path: Path, console: Console, started: list
) -> None:
    process, grandchild = start_family(tmp_path, console, started)
    killed = stop_all([process], timeout=20)
    assert killed == []
    assert process.poll() == 0  # it stopped on SIGTERM, by itself
    assert not alive(process.pid)
    assert not alive(grandchild)
    assert group_members(process.pgid) == []


def test_a_grandchild_ignoring_sigterm_is_killed_at_the_deadline(
    tmp_path: Path, console: Console, started: list
) -> None:
    process, grandchild = start_family(tmp_path, console, started, IGNORE_TERM="1")
    killed = stop_all([process], timeout=1)
    assert killed == ["worker"]
    assert not alive(grandchild)
    assert group_members(process.pgid) == []


def test_an_orphaned_grandchild_is_stopped_with_its_group(
    tmp_path: Path, console: Console, started: list
) -> None:
    process, grandchild = start_family(tmp_path, console, started, ORPHAN="1")
    wait_until(lambda: process.poll() is not None, timeout=30, message="the parent to exit")
    assert alive(grandchild)
    killed = stop_all([process], timeout=20)
    assert killed == []  # SIGTERM to the group was enough
    assert not alive(grandchild)


def test_force_kills_without_waiting(tmp_path: Path, console: Console, started: list) -> None:
    process, grandchild = start_family(tmp_path, console, started, IGNORE_TERM="1")
    killed = stop_all([process], timeout=600, force=lambda: True)
    assert killed == ["worker"]
    assert not alive(grandchild)


def record_leftovers(path: Path, groups: list[tuple[int, int | None]], boot: str = "") -> Path:
    """pids.json as a killed `celeriac up` left it: (group id, leader's start ticks) each."""
    processes = [{"name": "worker", "pgid": g, "start_ticks": t} for g, t in groups]
    path.write_text(json.dumps({"boot_id": boot or boot_id(), "processes": processes}))
    return path


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """Someone else's process that merely looks like ours: "celeriac" in its command line (as
    in any clone named celeriac), leading a session of its own."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", "/home/me/celeriac", "worker"],
        start_new_session=True,
    )
    yield process
    process.kill()
    process.wait(10)


def test_leftovers_of_a_killed_run_are_stopped(
    tmp_path: Path, console: Console, started: list
) -> None:
    process, grandchild = start_family(tmp_path, console, started)
    pids = record_leftovers(tmp_path / "pids.json", [(process.pgid, process.start_ticks)])
    assert stop_leftovers(pids) == 2
    assert process.process.wait(10) == -signal.SIGKILL
    wait_until(lambda: not alive(grandchild), timeout=10, message="the grandchild to die")
    assert not pids.exists()


def test_a_stranger_holding_a_recorded_id_is_spared(
    tmp_path: Path, stranger: subprocess.Popen[bytes]
) -> None:
    stat = read_stat(stranger.pid)
    assert stat is not None
    # The recorded process had this id before the stranger: it started earlier.
    pids = record_leftovers(tmp_path / "pids.json", [(stranger.pid, stat.start_ticks - 1)])
    assert stop_leftovers(pids) == 0
    assert stranger.poll() is None
    assert not pids.exists()


@pytest.mark.parametrize("boot", ["another-boot", None])
def test_records_of_another_boot_or_without_start_times_kill_nothing(
    tmp_path: Path, stranger: subprocess.Popen[bytes], boot: str | None
) -> None:
    stat = read_stat(stranger.pid)
    assert stat is not None
    start = stat.start_ticks if boot else None
    pids = record_leftovers(tmp_path / "pids.json", [(stranger.pid, start)], boot or "")
    assert stop_leftovers(pids) == 0
    assert stranger.poll() is None


def test_the_stack_records_what_identifies_its_children(
    tmp_path: Path, console: Console, started: list
) -> None:
    process, _ = start_family(tmp_path, console, started)
    stat = read_stat(process.pid)
    assert stat is not None
    assert process.start_ticks == stat.start_ticks
    assert stat.session == stat.pgid == process.pgid
