"""Every ``CELERIAC_*`` variable the code reads refuses a bad value the same way: exit 2 and one
line naming the variable, before anything starts. Run in-process through ``celeriac.cli.main``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from celeriac.api.settings import DEFAULT_PORT as API_PORT
from celeriac.cli import main
from celeriac.exporter.settings import DEFAULT_PORT as EXPORTER_PORT
from celeriac.worker.settings import DEFAULT_METRICS_PORT as WORKER_METRICS_PORT
from tests.support import variables_in_code

WORKER = ("worker", "--check")
API = ("api", "--check")
BEAT = ("beat", "--check")
EXPORTER = ("exporter", "--check")
PROBE = ("probe", "worker")
# An app without ':' fails `celeriac up` at its first check, still before anything starts, with
# a line that names no variable: if a bad value got past the settings, the test fails on it.
UP = ("up", "--app", "nocolon")


@dataclass(frozen=True)
class Case:
    command: tuple[str, ...]
    value: str
    # Variables of the valid baseline to remove (a rival that would be reported instead).
    unset: tuple[str, ...] = ()


CASES = {
    "CELERIAC_APP": Case(WORKER, "nocolon"),
    "CELERIAC_BROKER_URL": Case(WORKER, "amqp://x"),
    "CELERIAC_RESULT_BACKEND_URL": Case(WORKER, "amqp://x"),
    "CELERIAC_REDIS_PASSWORD_FILE": Case(WORKER, "/nonexistent/password"),
    # Set without a sentinel:// URL: the baseline's is redis://.
    "CELERIAC_REDIS_SENTINEL_MASTER": Case(WORKER, "mymaster"),
    "CELERIAC_REDIS_SENTINEL_AUTH": Case(WORKER, "maybe"),
    "CELERIAC_REDIS_WAIT_REPLICAS": Case(WORKER, "-1"),
    "CELERIAC_REDIS_WAIT_TIMEOUT_SECONDS": Case(WORKER, "0"),
    "CELERIAC_DEFAULT_QUEUE": Case(WORKER, "bad queue"),
    "CELERIAC_QUEUES": Case(WORKER, "ok,bad queue"),
    "CELERIAC_PRIORITY_STEPS": Case(WORKER, "3,0"),
    "CELERIAC_BROKER_KEY_PREFIX": Case(WORKER, "has space"),
    "CELERIAC_VISIBILITY_TIMEOUT_SECONDS": Case(WORKER, "soon"),
    "CELERIAC_MAX_LOST_DELIVERIES": Case(WORKER, "-1"),
    "CELERIAC_RESULT_EXPIRES_SECONDS": Case(WORKER, "0"),
    "CELERIAC_REDIS_SOCKET_TIMEOUT_SECONDS": Case(WORKER, "0"),
    "CELERIAC_LOG_LEVEL": Case(WORKER, "LOUD"),
    "CELERIAC_DEBUG": Case(PROBE, "maybe"),
    "CELERIAC_WORKER_CONCURRENCY": Case(WORKER, "0"),
    "CELERIAC_WORKER_CONCURRENCY_PER_CPU": Case(WORKER, "0"),
    "CELERIAC_WORKER_CPU_LIMIT": Case(WORKER, "0"),
    "CELERIAC_WORKER_MEMORY_LIMIT_BYTES": Case(WORKER, "0"),
    "CELERIAC_WORKER_MAX_MEMORY_PER_CHILD_KB": Case(WORKER, "-1"),
    "CELERIAC_WORKER_POOL": Case(WORKER, "solo"),
    "CELERIAC_WORKER_LOG_TASKS": Case(WORKER, "maybe"),
    "CELERIAC_TASK_IGNORE_RESULT": Case(WORKER, "maybe"),
    "CELERIAC_WORKER_HOSTNAME": Case(WORKER, "a b"),
    "CELERIAC_WORKER_SHUTDOWN_TIMEOUT_SECONDS": Case(WORKER, "-1"),
    "CELERIAC_WORKER_HEARTBEAT_FILE": Case(WORKER, "/"),
    "CELERIAC_WORKER_READY_FILE": Case(PROBE, "/"),
    "CELERIAC_WORKER_METRICS_HOST": Case(WORKER, "999.1.1.1"),
    "CELERIAC_WORKER_METRICS_PORT": Case(WORKER, "70000"),
    "CELERIAC_WORKER_METRICS_DIR": Case(WORKER, "/dev/null"),
    "CELERIAC_WORKER_MINGLE": Case(WORKER, "maybe"),
    "CELERIAC_WORKER_GOSSIP": Case(WORKER, "maybe"),
    "CELERIAC_WORKER_EVENT_HEARTBEATS": Case(WORKER, "maybe"),
    "CELERIAC_WORKER_STALL_SECONDS": Case(WORKER, "0.5"),
    "CELERIAC_WORKER_REGISTRY_INTERVAL_SECONDS": Case(WORKER, "0"),
    "CELERIAC_WORKER_UNREGISTERED_TASK_SECONDS": Case(WORKER, "-1"),
    "CELERIAC_TASK_LIMITS": Case(WORKER, '{"t.a": {"time_limit": "soon"}}'),
    "CELERIAC_WORKER_DELETION_COST": Case(WORKER, "maybe"),
    "CELERIAC_POD_NAME": Case(WORKER, "Worker_1"),
    "CELERIAC_POD_NAMESPACE": Case(WORKER, "a.b"),
    "CELERIAC_PROBE_MAX_AGE_SECONDS": Case(PROBE, "0"),
    "CELERIAC_API_HOST": Case(API, "999.1.1.1"),
    "CELERIAC_API_PORT": Case(API, "abc"),
    "CELERIAC_API_TOKENS": Case(API, "a b"),
    "CELERIAC_API_TOKENS_FILE": Case(API, "/nonexistent/tokens", unset=("CELERIAC_API_TOKENS",)),
    "CELERIAC_API_ALLOWED_TASKS": Case(API, ","),
    "CELERIAC_API_MAX_BODY_BYTES": Case(API, "0"),
    "CELERIAC_API_WORKERS": Case(API, "0"),
    "CELERIAC_API_ACCESS_LOG": Case(API, "maybe"),
    "CELERIAC_API_IDEMPOTENCY_WINDOW_SECONDS": Case(API, "0"),
    "CELERIAC_API_RECENT_TASKS": Case(API, "-1"),
    "CELERIAC_BEAT_SCHEDULE_FILE": Case(BEAT, "/nonexistent/schedule.yaml"),
    "CELERIAC_BEAT_HEARTBEAT_FILE": Case(BEAT, "/"),
    "CELERIAC_BEAT_MAX_LOOP_INTERVAL_SECONDS": Case(BEAT, "0"),
    "CELERIAC_BEAT_LOCK_TIMEOUT_SECONDS": Case(BEAT, "1"),
    "CELERIAC_BEAT_TIMEZONE": Case(BEAT, "Nowhere/City"),
    "CELERIAC_BEAT_SCHEDULER": Case(BEAT, "not a class"),
    "CELERIAC_EXPORTER_HOST": Case(EXPORTER, "999.1.1.1"),
    "CELERIAC_EXPORTER_PORT": Case(EXPORTER, "abc"),
    "CELERIAC_EXPORTER_REDIS_TIMEOUT_SECONDS": Case(EXPORTER, "0"),
    "CELERIAC_WORKER_GROUPS_FILE": Case(EXPORTER, "/nonexistent/groups.yaml"),
    "CELERIAC_UP_API_PORT": Case(UP, "70000"),
    "CELERIAC_UP_EXPORTER_PORT": Case(UP, "70000"),
    "CELERIAC_UP_WORKER_METRICS_PORT": Case(UP, "70000"),
    "CELERIAC_UP_REDIS_PORT": Case(UP, "abc"),
    "CELERIAC_UP_CONCURRENCY": Case(UP, "0"),
    "CELERIAC_UP_READY_TIMEOUT_SECONDS": Case(UP, "0"),
    "CELERIAC_UP_STOP_TIMEOUT_SECONDS": Case(UP, "0"),
    "CELERIAC_UP_WORKER_SHUTDOWN_TIMEOUT_SECONDS": Case(UP, "-1"),
    "CELERIAC_UP_QUIET": Case(UP, "maybe"),
    "CELERIAC_UP_KEEP_CREDENTIALS": Case(UP, "maybe"),
    "CELERIAC_UP_API_TOKEN": Case(UP, "a b"),
    "CELERIAC_UP_SCHEDULE_FILE": Case(UP, "/nonexistent/schedule.yaml"),
    "CELERIAC_UP_REDIS_SERVER": Case(UP, "/nonexistent/redis-server"),
    "CELERIAC_UP_STATE_DIR": Case(UP, "/dev/null"),
}

# Named by the code but with no value to refuse, each with the reason.
NO_BAD_VALUE = {
    "CELERIAC_REDIS_PASSWORD": "any string is a password",
    "CELERIAC_API_TOKEN": "written by `celeriac up` into stack.env for your code, never read",
    "CELERIAC_API_URL": "written by `celeriac up` into stack.env for your code, never read",
}

# The smallest valid configuration each command needs; a test adds one bad value to it.
BASELINE = {"CELERIAC_API_TOKENS": "t", "CELERIAC_BROKER_URL": "redis://127.0.0.1:1/0"}


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("CELERIAC_"):
            monkeypatch.delenv(name)
    for name, value in BASELINE.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def run(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    code = exit_info.value.code
    return code if isinstance(code, int) else 0


def test_every_variable_the_code_reads_has_a_case() -> None:
    found = variables_in_code()
    assert len(found) > 40, "the scan found too few variables to be scanning"
    assert not found - CASES.keys() - NO_BAD_VALUE.keys(), "add a Case for each new variable"
    assert not (CASES.keys() | NO_BAD_VALUE.keys()) - found, "remove cases of gone variables"


@pytest.mark.parametrize("command", sorted({WORKER, API, BEAT, EXPORTER}))
def test_the_baseline_is_valid(
    command: tuple[str, ...], clean_environment: pytest.MonkeyPatch
) -> None:
    # Without this the failures below could come from the baseline, not the bad value.
    main(list(command))


@pytest.mark.parametrize("variable", sorted(CASES))
def test_a_bad_value_is_one_line_naming_the_variable(
    variable: str,
    clean_environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = CASES[variable]
    for name in case.unset:
        clean_environment.delenv(name)
    clean_environment.setenv(variable, case.value)
    assert run(*case.command) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("celeriac: configuration error: "), lines[0]
    assert f"{variable}=" in lines[0] or f"{variable}:" in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "variable"),
    [
        (("worker", "--check", "--concurrency", "0"), "CELERIAC_WORKER_CONCURRENCY"),
        (("worker", "--check", "--pool", "solo"), "CELERIAC_WORKER_POOL"),
        (("api", "--check", "--port", "abc"), "CELERIAC_API_PORT"),
        (("api", "--check", "--host", "999.1.1.1"), "CELERIAC_API_HOST"),
        (("exporter", "--check", "--port", "abc"), "CELERIAC_EXPORTER_PORT"),
        (("beat", "--check", "--loglevel", "LOUD"), "CELERIAC_LOG_LEVEL"),
        (("probe", "beat", "--max-age-seconds", "x"), "CELERIAC_PROBE_MAX_AGE_SECONDS"),
    ],
)
def test_an_option_is_checked_as_its_variable(
    args: tuple[str, ...],
    variable: str,
    clean_environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(*args) == 2
    assert f"configuration error: {variable}=" in capsys.readouterr().err


def test_an_option_wins_over_its_variable(
    clean_environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_environment.setenv("CELERIAC_EXPORTER_PORT", "abc")
    main(["exporter", "--check", "--port", "9999", "--host", "127.0.0.1"])
    assert "listening on 127.0.0.1:9999" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (("worker",), f"[default: {WORKER_METRICS_PORT}]"),
        (("api",), f"[default: {API_PORT}]"),
        (("exporter",), f"[default: {EXPORTER_PORT}]"),
        (("up",), f"API port [default: {API_PORT}]"),
        (("up",), f"Exporter port [default: {EXPORTER_PORT}]"),
        (("up",), f"Worker metrics port [default: {WORKER_METRICS_PORT}]"),
    ],
)
def test_help_shows_the_default_port_the_settings_use(
    command: tuple[str, ...], shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--help"]) == 0
    # Click wraps help text; compare it as one line.
    assert shown in " ".join(capsys.readouterr().out.split())
