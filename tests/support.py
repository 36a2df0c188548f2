"""What only the tests need: the repository root and the one rule for missing tools.

Real Redis servers, child processes and condition waits are in ``celeriac.testing`` (bench/
uses them too).

A test that needs a tool this machine may lack (promtool, tini, checkov, KEDA's CRDs...) asks
``require_tool`` or ``require_path``: when it is missing the test is skipped with a reason that
says how to get it, or fails when CELERIAC_REQUIRE_TOOLS=1 (CI sets it, so CI never skips).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

REQUIRE_TOOLS_VARIABLE = "CELERIAC_REQUIRE_TOOLS"

PROMETHEUS_HOW_TO_GET = "apt install prometheus, or brew install prometheus"


def tools_required() -> bool:
    """True when a missing tool fails the test instead of skipping it."""
    return os.environ.get(REQUIRE_TOOLS_VARIABLE, "").strip() not in ("", "0")


def missing(what: str, how_to_get: str) -> NoReturn:
    """Skip the running test because ``what`` is missing; fail it under CELERIAC_REQUIRE_TOOLS."""
    reason = f"{what} not found: {how_to_get}"
    if tools_required():
        pytest.fail(f"{reason} ({REQUIRE_TOOLS_VARIABLE} is set)", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str, how_to_get: str, *, candidates: Iterable[str | Path] = ()) -> str:
    """The path of the executable ``name``: the first executable of ``candidates``, else
    ``name`` on PATH; else the test is skipped (or failed) with ``how_to_get``."""
    for candidate in candidates:
        if Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        missing(name, how_to_get)
    return found


def require_path(path: Path, what: str, how_to_get: str) -> Path:
    """``path`` when it exists; else the test is skipped (or failed) with ``how_to_get``."""
    if not path.exists():
        missing(f"{what} ({path})", how_to_get)
    return path
