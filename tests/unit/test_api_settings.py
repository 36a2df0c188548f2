"""API configuration: tokens, allow-list, limits; refusing to start with a clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from celeriac.api.auth import Tokens
from celeriac.api.services import allowed_tasks
from celeriac.api.settings import ApiSettings
from celeriac.cli import main
from celeriac.env import ConfigError

DEMO_TASKS = {
    "celeriac.demo.sleep",
    "celeriac.demo.add",
    "celeriac.demo.cpu",
    "celeriac.demo.io",
    "celeriac.demo.flaky",
    "celeriac.demo.memory",
    "celeriac.demo.crash",
}


def test_defaults() -> None:
    settings = ApiSettings.from_env({"CELERIAC_API_TOKENS": "one"})
    assert settings.host == "0.0.0.0"
    assert settings.port == 8000
    assert settings.max_body_bytes == 65536
    assert settings.allowed_tasks is None
    assert settings.tokens == ("one",)


def test_values_from_env() -> None:
    settings = ApiSettings.from_env(
        {
            "CELERIAC_API_TOKENS": " one, two ,,one ",
            "CELERIAC_API_HOST": "127.0.0.1",
            "CELERIAC_API_PORT": "9000",
            "CELERIAC_API_ALLOWED_TASKS": "celeriac.demo.add, celeriac.demo.sleep",
            "CELERIAC_API_MAX_BODY_BYTES": "1024",
        }
    )
    assert settings.tokens == ("one", "two")
    assert (settings.host, settings.port, settings.max_body_bytes) == ("127.0.0.1", 9000, 1024)
    assert settings.allowed_tasks == ("celeriac.demo.add", "celeriac.demo.sleep")


def test_tokens_file_skips_blank_lines_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# rotated 2026-01\n\nfirst\n  second  \n# old: third\n")
    settings = ApiSettings.from_env({"CELERIAC_API_TOKENS_FILE": str(path)})
    assert settings.tokens == ("first", "second")


def test_tokens_never_in_repr() -> None:
    settings = ApiSettings.from_env({"CELERIAC_API_TOKENS": "very-secret-token"})
    assert "very-secret-token" not in repr(settings)
    assert "very-secret-token" not in repr(Tokens(settings.tokens))


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({}, "no API token configured"),
        ({"CELERIAC_API_TOKENS": " , "}, "CELERIAC_API_TOKENS holds no token"),
        ({"CELERIAC_API_TOKENS": "a b"}, "token 1 contains whitespace"),
        ({"CELERIAC_API_TOKENS": "ok,tökén"}, "token 2 must be printable ASCII"),
        (
            {"CELERIAC_API_TOKENS": "a", "CELERIAC_API_TOKENS_FILE": "/x"},
            "only one of CELERIAC_API_TOKENS and CELERIAC_API_TOKENS_FILE",
        ),
        ({"CELERIAC_API_TOKENS_FILE": "/nonexistent/tokens"}, "cannot be read"),
        ({"CELERIAC_API_TOKENS": "a", "CELERIAC_API_PORT": "http"}, "CELERIAC_API_PORT"),
        ({"CELERIAC_API_TOKENS": "a", "CELERIAC_API_PORT": "70000"}, "not a TCP port"),
        ({"CELERIAC_API_TOKENS": "a", "CELERIAC_API_MAX_BODY_BYTES": "0"}, "at least 1"),
        ({"CELERIAC_API_TOKENS": "a", "CELERIAC_API_WORKERS": "0"}, "CELERIAC_API_WORKERS"),
        ({"CELERIAC_API_TOKENS": "a", "CELERIAC_API_WORKERS": "65"}, "between 1 and 64"),
        ({"CELERIAC_API_TOKENS": "a", "CELERIAC_API_ACCESS_LOG": "loud"}, "not a boolean"),
    ],
)
def test_bad_settings_name_the_problem(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        ApiSettings.from_env(environ)


def test_tokens_file_with_only_comments_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# nothing yet\n\n")
    with pytest.raises(ConfigError, match="holds no token"):
        ApiSettings.from_env({"CELERIAC_API_TOKENS_FILE": str(path)})


def test_default_allow_list_is_every_app_task_but_celerys_own() -> None:
    names = allowed_tasks(ApiSettings(tokens=("t",)))
    assert names == DEMO_TASKS


def test_allow_list_narrows() -> None:
    api = ApiSettings(tokens=("t",), allowed_tasks=("celeriac.demo.add",))
    assert allowed_tasks(api) == {"celeriac.demo.add"}


@pytest.mark.parametrize("name", ["celeriac.demo.nope", "celery.backend_cleanup"])
def test_allow_list_naming_an_unregistered_task_is_a_config_error(name: str) -> None:
    api = ApiSettings(tokens=("t",), allowed_tasks=("celeriac.demo.add", name))
    with pytest.raises(ConfigError, match=f"CELERIAC_API_ALLOWED_TASKS names '{name}'"):
        allowed_tasks(api)


def test_token_comparison() -> None:
    tokens = Tokens(["alpha-token", "beta-token"])
    assert tokens.accepts("alpha-token")
    assert tokens.accepts("beta-token")
    for wrong in ("", "alpha", "alpha-token ", "ALPHA-TOKEN", "beta-tokenx", "\udcff"):
        assert not tokens.accepts(wrong)
    with pytest.raises(ValueError, match="at least one token"):
        Tokens([])


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({}, "no API token configured"),
        (
            {"CELERIAC_API_TOKENS": "t", "CELERIAC_API_ALLOWED_TASKS": "celeriac.demo.missing"},
            "'celeriac.demo.missing', not registered by app 'celeriac.demo:app'",
        ),
        ({"CELERIAC_API_TOKENS": "t", "CELERIAC_APP": "nowhere.at_all:app"}, "cannot import"),
    ],
)
def test_cli_refuses_to_start_with_one_line(
    environ: dict[str, str],
    fragment: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("CELERIAC_API_TOKENS", "CELERIAC_API_TOKENS_FILE", "CELERIAC_APP"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        main(["api"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("celeriac: configuration error:")
    assert fragment in error
    assert error.count("\n") == 1
