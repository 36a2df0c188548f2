"""``celeriac probe``: exit codes for fresh, stale and missing files; no Celery import."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from celeriac.cli import main


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        main(["probe", *args])
    out = capsys.readouterr()
    code = exited.value.code
    assert isinstance(code, int)
    return code, (out.out + out.err).strip()


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.mark.parametrize("component", ["worker", "beat"])
def test_fresh_heartbeat_passes(
    component: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    heartbeat = tmp_path / "heartbeat"
    heartbeat.touch()
    code, line = run([component, "--heartbeat-file", str(heartbeat)], capsys)
    assert code == 0
    assert line.startswith(f"{component} healthy: heartbeat 0.")
    assert "\n" not in line


@pytest.mark.parametrize("component", ["worker", "beat"])
def test_stale_heartbeat_fails(
    component: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    heartbeat = tmp_path / "heartbeat"
    heartbeat.touch()
    age(heartbeat, 31)  # the default limit is 30 s
    code, line = run([component, "--heartbeat-file", str(heartbeat)], capsys)
    assert code == 1
    assert line.startswith(f"{component} unhealthy: heartbeat 31.")
    assert "more than 30s" in line


@pytest.mark.parametrize("component", ["worker", "beat"])
def test_missing_heartbeat_fails(
    component: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, line = run([component, "--heartbeat-file", str(tmp_path / "none")], capsys)
    assert code == 1
    assert line == f"{component} unhealthy: heartbeat file {tmp_path / 'none'} does not exist"


def test_max_age_from_option_and_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    heartbeat = tmp_path / "heartbeat"
    heartbeat.touch()
    age(heartbeat, 10)
    args = ["worker", "--heartbeat-file", str(heartbeat)]
    assert run([*args, "--max-age-seconds", "20"], capsys)[0] == 0
    assert run([*args, "--max-age-seconds", "5"], capsys)[0] == 1
    monkeypatch.setenv("CELERIAC_PROBE_MAX_AGE_SECONDS", "5")
    assert run(args, capsys)[0] == 1


def test_files_from_the_component_variables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, beat = tmp_path / "worker.heartbeat", tmp_path / "beat.heartbeat"
    monkeypatch.setenv("CELERIAC_WORKER_HEARTBEAT_FILE", str(worker))
    monkeypatch.setenv("CELERIAC_BEAT_HEARTBEAT_FILE", str(beat))
    worker.touch()
    assert run(["worker"], capsys)[0] == 0
    assert run(["beat"], capsys)[0] == 1
    beat.touch()
    assert run(["beat"], capsys)[0] == 0


def test_ready_checks_the_ready_file_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ready = tmp_path / "ready"
    args = ["worker", "--ready", "--ready-file", str(ready)]
    code, line = run([*args, "--heartbeat-file", str(tmp_path / "none")], capsys)
    assert (code, line) == (1, f"worker not ready: {ready} does not exist")
    ready.touch()
    age(ready, 3600)  # readiness is existence: the worker removes it when it stops consuming
    assert run(args, capsys) == (0, f"worker ready: {ready} exists")


def test_bad_max_age_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["worker", "--max-age-seconds", "0"], capsys)[0] == 2


def test_probe_imports_no_celery(tmp_path: Path) -> None:
    heartbeat = tmp_path / "heartbeat"
    heartbeat.touch()
    script = (
        "import sys\n"
        "from celeriac.cli import main\n"
        "try:\n"
        f"    main(['probe', 'worker', '--heartbeat-file', {str(heartbeat)!r}])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu'))\n"
        "print(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip().endswith("[]"), result.stdout


def test_stalled_marker_fails_a_fresh_heartbeat_and_its_removal_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    heartbeat = tmp_path / "worker.heartbeat"
    heartbeat.touch()
    marker = tmp_path / "worker.heartbeat.stalled"
    marker.write_text("3 messages wait in its queues ...\n")
    code, line = run(["worker", "--heartbeat-file", str(heartbeat)], capsys)
    assert code == 1
    assert line == "worker unhealthy: consumer stalled: 3 messages wait in its queues ..."
    marker.unlink()
    code, line = run(["worker", "--heartbeat-file", str(heartbeat)], capsys)
    assert code == 0, line
