"""`celeriac up` refuses bad input with one line and the right exit code, starting nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from celeriac.cli import main
from celeriac.local.lock import state_lock


def run_up(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(["up", *args])
    code = exit_info.value.code
    assert isinstance(code, int)
    return code


def test_a_port_out_of_range_names_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    # The option is checked by the same code as CELERIAC_UP_API_PORT, so the error names it.
    assert run_up("--api-port", "70000") == 2
    assert "CELERIAC_UP_API_PORT=70000 is not a TCP port" in capsys.readouterr().err


def test_an_app_without_attribute_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_up("--app", "myproject", "--state-dir", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "celeriac: configuration error: app 'myproject' must be module:attribute, "
        "e.g. myproject.tasks:app"
    )
    assert not (tmp_path / "logs").exists()


def test_a_missing_redis_server_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "redis-server"
    assert run_up("--redis-server", str(missing), "--state-dir", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"CELERIAC_UP_REDIS_SERVER='{missing}' is not an executable file" in err
    assert not (tmp_path / "logs").exists()


def test_a_second_stack_on_the_same_state_dir_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with state_lock(tmp_path / "up.lock"):
        assert run_up("--state-dir", str(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "another `celeriac up` is running with state dir" in err
    assert "--state-dir" in err
    assert not (tmp_path / "logs").exists()


def test_help_names_the_environment_variables(capsys: pytest.CaptureFixture[str]) -> None:
    main(["up", "--help"])
    out = capsys.readouterr().out
    for name in ("CELERIAC_UP_API_PORT", "CELERIAC_UP_REDIS_PORT", "CELERIAC_APP"):
        assert name in out
