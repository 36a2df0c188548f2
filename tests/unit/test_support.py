"""The rule for missing tools: skip with how to get it; fail under CELERIAC_REQUIRE_TOOLS."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support import REQUIRE_TOOLS_VARIABLE, require_path, require_tool

ABSENT = "celeriac-no-such-tool"
HOW = "apt install celeriac-no-such-tool"


@pytest.fixture
def lenient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_TOOLS_VARIABLE, raising=False)


@pytest.fixture
def strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_TOOLS_VARIABLE, "1")


def test_absent_tool_skips_with_how_to_get_it(lenient: None) -> None:
    assert shutil.which(ABSENT) is None
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_tool(ABSENT, HOW)
    assert str(skipped.value) == f"{ABSENT} not found: {HOW}"


@pytest.mark.parametrize("value", ["", "0"])
def test_empty_or_zero_variable_still_skips(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(REQUIRE_TOOLS_VARIABLE, value)
    with pytest.raises(pytest.skip.Exception):
        require_tool(ABSENT, HOW)


def test_absent_tool_fails_when_tools_are_required(strict: None) -> None:
    with pytest.raises(pytest.fail.Exception) as failed:
        require_tool(ABSENT, HOW)
    message = str(failed.value)
    assert message.startswith(f"{ABSENT} not found: {HOW}")
    assert REQUIRE_TOOLS_VARIABLE in message


def test_present_tool_is_found_on_path(strict: None) -> None:
    assert require_tool("sh", HOW) == shutil.which("sh")


def test_an_executable_candidate_wins_over_path(strict: None, tmp_path: Path) -> None:
    not_executable = tmp_path / "plain"
    not_executable.write_text("")
    executable = tmp_path / "tool"
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    found = require_tool("sh", HOW, candidates=[tmp_path / "absent", not_executable, executable])
    assert found == str(executable)
    assert os.access(found, os.X_OK)


def test_absent_candidates_fall_back_to_path_then_skip(lenient: None, tmp_path: Path) -> None:
    with pytest.raises(pytest.skip.Exception):
        require_tool(ABSENT, HOW, candidates=[tmp_path / ABSENT])


def test_require_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(REQUIRE_TOOLS_VARIABLE, raising=False)
    assert require_path(tmp_path, "a directory", HOW) == tmp_path
    absent = tmp_path / "absent"
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_path(absent, "KEDA's CRDs", HOW)
    assert str(skipped.value) == f"KEDA's CRDs ({absent}) not found: {HOW}"
    monkeypatch.setenv(REQUIRE_TOOLS_VARIABLE, "1")
    with pytest.raises(pytest.fail.Exception):
        require_path(absent, "KEDA's CRDs", HOW)
