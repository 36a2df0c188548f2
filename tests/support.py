"""What only the tests need: the repository root, the one rule for missing tools, and the
scans of the code and the services' READMEs for CELERIAC_* variables that several suites check.

Real Redis servers, child processes and condition waits are in ``celeriac.testing`` (bench/
uses them too).

A test that needs a tool this machine may lack (promtool, tini, checkov, KEDA's CRDs...) asks
``require_tool`` or ``require_path``: when it is missing the test is skipped with a reason that
says how to get it, or fails when CELERIAC_REQUIRE_TOOLS=1 (CI sets it, so CI never skips).
"""

from __future__ import annotations

import os
import re
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


# Names read through any celeriac.env.Env method (which adds the CELERIAC_ prefix) or spelled
# out in full.
_ENV_READ = re.compile(r"env\.[a-z_]+\(\s*\"([A-Z0-9_]+)\"", re.DOTALL)
CELERIAC_VARIABLE = re.compile(r"\bCELERIAC_[A-Z0-9_]*[A-Z0-9]\b")


def variables_in_code() -> set[str]:
    """Every CELERIAC_* variable the code under src/celeriac reads."""
    names: set[str] = set()
    for path in (REPO_ROOT / "src" / "celeriac").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        names.update(f"CELERIAC_{name}" for name in _ENV_READ.findall(text))
        names.update(CELERIAC_VARIABLE.findall(text))
    return names


def documented_default(component: str, variable: str) -> str:
    """The default ``services/<component>/README.md`` gives ``variable`` in its table."""
    readme = REPO_ROOT / "services" / component / "README.md"
    row = re.search(rf"^\| `{variable}` \| `([^`]*)` \|", readme.read_text("utf-8"), re.M)
    assert row, f"{readme} documents no default for {variable}"
    return row.group(1)
