"""``celeriac beat`` as users and CI run it: exit codes and one-line errors."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from celeriac.testing import celeriac_command

pytestmark = pytest.mark.integration

GOOD = """
report: {task: celeriac.demo.add, every: 30, args: [1, 2]}
nightly: {task: celeriac.demo.sleep, cron: "0 3 * * *", kwargs: {seconds: 1}, queue: default}
"""


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # No broker is running on this port: none of these may need Redis.
    full_env = {**os.environ, "CELERIAC_BROKER_URL": "redis://127.0.0.1:1/0", **(env or {})}
    return subprocess.run(
        celeriac_command(*args), env=full_env, capture_output=True, text=True, timeout=60
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_check_accepts_a_good_schedule(tmp_path: Path) -> None:
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text(GOOD)
    result = run("beat", "--check", "--schedule", str(schedule))
    assert result.returncode == 0, result
    assert "is valid for app celeriac.demo:app: 2 entries" in result.stdout
    assert "report (celeriac.demo.add, every 30s)" in result.stdout
    assert "nightly (celeriac.demo.sleep, cron '0 3 * * *')" in result.stdout


def test_check_rejects_a_bad_schedule_naming_each_entry(tmp_path: Path) -> None:
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text(GOOD + "broken: {task: t, cron: '0 3 * *'}\nworse: {task: t, every: 0}\n")
    # The file may also come from the environment, as in the Helm chart.
    line = one_line_error(
        run("beat", "--check", env={"CELERIAC_BEAT_SCHEDULE_FILE": str(schedule)})
    )
    assert line.startswith("celeriac: configuration error: schedule ")
    assert "2 problems" in line
    assert "entry 'broken': field 'cron'" in line
    assert "entry 'worse': field 'every'" in line


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["--check", "--schedule", "/nonexistent/schedule.yaml"], {}, "is not a readable file"),
        (["--check"], {"CELERIAC_BEAT_LOCK_TIMEOUT_SECONDS": "1"}, "at least 2 x"),
        (["--check"], {"CELERIAC_BEAT_TIMEZONE": "Nowhere/City"}, "CELERIAC_BEAT_TIMEZONE"),
        # Without --check the same validation happens before anything connects to Redis.
        (["--schedule", "/nonexistent/schedule.yaml"], {}, "CELERIAC_BEAT_SCHEDULE_FILE="),
        (["--app", "no.such.module:app"], {}, "cannot import 'no.such.module'"),
    ],
)
def test_configuration_errors_exit_2_with_one_line(
    args: list[str], env: dict[str, str], fragment: str
) -> None:
    assert fragment in one_line_error(run("beat", *args, env=env))


@pytest.mark.parametrize("check", [["--check"], []])
def test_arguments_that_do_not_fit_the_task_are_rejected_at_start(
    tmp_path: Path, check: list[str]
) -> None:
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text("adder: {task: celeriac.demo.add, every: 5, args: [1]}\n")
    heartbeat_file = tmp_path / "beat.heartbeat"
    line = one_line_error(
        run(
            "beat",
            *check,
            "--schedule",
            str(schedule),
            env={"CELERIAC_BEAT_HEARTBEAT_FILE": str(heartbeat_file)},
        )
    )
    assert "entry 'adder'" in line
    assert "celeriac.demo.add" in line
    assert "'y'" in line
