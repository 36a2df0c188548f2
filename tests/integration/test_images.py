"""The image's entry point as PID 1: it hands PID 1 to tini, and SIGTERM stops a real worker.

A container's first process is PID 1 of its PID namespace; this test makes one with
``unshare`` (root, or an unprivileged user namespace) and runs services/base/celeriac.sh in it,
pointed at this venv's celeriac, the way the image runs it. Skipped with the reason where tini
(Debian's package, as in the image) or PID namespaces are not available.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from celeriac.testing import Child, wait_until
from tests.integration.support.workers import worker_env
from tests.support import REPO_ROOT, require_tool

pytestmark = pytest.mark.integration

# Where the image has tini (Debian's package); the test runs whichever tini this machine has.
IMAGE_TINI = "/usr/bin/tini"
ENTRYPOINT_SCRIPT = REPO_ROOT / "services" / "base" / "celeriac.sh"


def unshare_command() -> list[str] | None:
    """A prefix that runs a command as PID 1 of a new PID namespace, or None."""
    if shutil.which("unshare") is None:
        return None
    base = ["unshare", "--pid", "--fork", "--mount-proc"]
    candidates = [base] if os.geteuid() == 0 else []
    candidates.append(["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"])
    for prefix in candidates:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return prefix
    return None


@pytest.fixture(scope="module")
def tini() -> str:
    return require_tool("tini", "apt install tini (the image's PID 1)", candidates=[IMAGE_TINI])


@pytest.fixture(scope="module")
def as_pid_1() -> list[str]:
    prefix = unshare_command()
    if prefix is None:
        pytest.skip("cannot create a PID namespace here (unshare --pid failed)")
    return prefix


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().rstrip("\0").split("\0")


def test_entrypoint_as_pid_1_runs_tini_which_forwards_sigterm_to_the_worker(
    tini: str,
    as_pid_1: list[str],
    redis_url: str,
    tmp_path: Path,
    spawn: Callable[..., Child],
) -> None:
    venv_celeriac = Path(sys.executable).parent / "celeriac"
    script = tmp_path / "celeriac.sh"
    script.write_text(
        ENTRYPOINT_SCRIPT.read_text()
        .replace("/opt/celeriac/venv/bin/celeriac", str(venv_celeriac))
        .replace(IMAGE_TINI, tini)
    )
    ready = tmp_path / "worker.ready"
    env = worker_env(
        redis_url, tmp_path, worker_concurrency="1", worker_shutdown_timeout_seconds="5"
    )
    worker = spawn([*as_pid_1, "sh", str(script), "worker"], env=env, name="pid1-worker")
    wait_until(ready.exists, timeout=30, message=f"the worker to be ready: {worker.output()}")

    # unshare forks the namespace's PID 1: the script, which exec'd tini, which runs celeriac.
    (init,) = children(worker.pid)
    assert cmdline(init)[:2] == [tini, "--"]
    (main,) = children(init)
    assert cmdline(main)[-2:] == [str(venv_celeriac), "worker"]

    # What the kubelet does: SIGTERM to PID 1 only. Exit 0 means it reached celeriac's main
    # process and Celery shut down cleanly (unforwarded: no exit; unhandled: 143).
    os.kill(init, signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.output()
