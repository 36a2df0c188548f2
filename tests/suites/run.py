"""Run Celery's and kombu's own integration suites against stock kombu and against celeriac.

``python -m tests.suites.run`` (``make test-suites``): fetches the sdists of the Celery and
kombu versions uv.lock pins (pip, hash-checked, cached under ~/.cache/celeriac/suites; their
code is never part of this repository), runs each suite in each mode of ``tests.suites.plugin``
against a redis-server of its own, and compares every test's outcome with stock's. A test that
passes with stock and not with celeriac must be listed in ``expected-differences.yaml`` (with
the reason), or the run fails; a listed difference that no longer shows is reported as stale.
``--suite`` and ``--mode`` run a part; ``-k`` passes a selection to pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from celeriac.testing import RedisServer
from tests.suites.plugin import MODE_VARIABLE, MODES, REPORT_VARIABLE
from tests.support import REPO_ROOT

CACHE_DIR = Path(os.environ.get("CELERIAC_SUITES_CACHE", Path.home() / ".cache/celeriac/suites"))
EXPECTED_DIFFERENCES = Path(__file__).with_name("expected-differences.yaml")
# pip lives in uv's own venv (Makefile: UV_VENV); the project venv has none.
PIP = REPO_ROOT / ".venv-uv" / "bin" / "pip"
# A test that hangs is cut off (pytest-timeout) instead of blocking the run.
TEST_TIMEOUT_SECONDS = 300
PASSED = frozenset({"passed", "xfailed"})


@dataclass(frozen=True)
class Suite:
    """One upstream integration suite: which sdist, which tests, how they find Redis."""

    name: str
    package: str
    paths: tuple[str, ...]
    # The files besides t/ that pytest reads (the suite's ini options and markers).
    config_files: tuple[str, ...]
    # pytest plug-ins the suite expects to be loaded (Celery's is not loaded by default).
    plugins: tuple[str, ...] = ()
    # Test modules of other backends, whose client libraries celeriac does not install.
    ignore: tuple[str, ...] = ()

    def environment(self, redis: RedisServer) -> dict[str, str]:
        url = redis.url()
        return {
            # Celery's t/integration
            "TEST_BROKER": url,
            "TEST_BACKEND": url,
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(redis.port),
            # kombu's t/integration
            "REDIS_6379_TCP": str(redis.port),
            # celeriac's configuration (mode "celeriac"): the suites use Celery's queue.
            "CELERIAC_BROKER_URL": url,
            "CELERIAC_QUEUES": "celery",
            "CELERIAC_DEFAULT_QUEUE": "celery",
        }


SUITES = {
    suite.name: suite
    for suite in (
        Suite(
            "celery",
            "celery",
            ("t/integration",),
            ("pyproject.toml",),
            plugins=("celery.contrib.pytest",),
            # Azure Blob Storage and SQLAlchemy result backends.
            ignore=("t/integration/test_backend.py", "t/integration/test_database_backend.py"),
        ),
        Suite(
            "kombu",
            "kombu",
            ("t/integration/test_redis.py", "t/integration/test_redis_brpop_qos.py"),
            ("setup.cfg",),
        ),
    )
}


def locked_version(package: str, lock: Path = REPO_ROOT / "uv.lock") -> tuple[str, str]:
    """(version, sha256 of the sdist) of ``package`` in uv.lock."""
    for entry in tomllib.loads(lock.read_text())["package"]:
        if entry["name"] == package and "sdist" in entry:
            return entry["version"], entry["sdist"]["hash"].removeprefix("sha256:")
    raise LookupError(f"{package} has no sdist in {lock}")


def suite_tree(suite: Suite) -> Path:
    """The suite's tests (t/ and its pytest settings) from the locked sdist, fetched once."""
    version, sha256 = locked_version(suite.package)
    tree = CACHE_DIR / f"{suite.package}-{version}"
    if (tree / "t").is_dir():
        return tree
    sdists = CACHE_DIR / "sdists"
    requirements = CACHE_DIR / f"{suite.package}.txt"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    requirements.write_text(f"{suite.package}=={version} --hash=sha256:{sha256}\n")
    subprocess.run(
        [
            *(str(PIP), "download", "--quiet", "--disable-pip-version-check", "--no-deps"),
            *("--no-binary", ":all:", "--require-hashes", "-r", str(requirements), "-d", sdists),
        ],
        check=True,
    )
    prefix = f"{suite.package}-{version}/"
    wanted = (f"{prefix}t/", *(prefix + name for name in suite.config_files))
    partial = tree.with_suffix(".partial")
    with tarfile.open(sdists / f"{suite.package}-{version}.tar.gz") as archive:
        # Only the tests: the package itself must come from the venv, not from beside them.
        members = [m for m in archive.getmembers() if m.name.startswith(wanted)]
        archive.extractall(partial, members=members, filter="data")
    (partial / prefix).rename(tree)
    partial.rmdir()
    return tree


def run_suite(suite: Suite, mode: str, results: Path, pytest_args: Sequence[str] = ()) -> Path:
    """Run ``suite`` in ``mode`` against a redis-server of its own; the outcomes' JSON path."""
    tree = suite_tree(suite)
    report = results / f"{suite.name}-{mode}.json"
    log = results / f"{suite.name}-{mode}.log"
    # An earlier run's outcomes must not pass for this run's when pytest writes none.
    report.unlink(missing_ok=True)
    redis = RedisServer().start()
    try:
        env = {
            **os.environ,
            **suite.environment(redis),
            MODE_VARIABLE: mode,
            REPORT_VARIABLE: str(report),
            "PYTHONPATH": str(REPO_ROOT),
            # The log shows progress as it happens (a hung test is visible before its timeout).
            "PYTHONUNBUFFERED": "1",
        }
        command = [
            sys.executable,
            "-m",
            "pytest",
            *suite.paths,
            *(f"-p{plugin}" for plugin in suite.plugins),
            *(f"--ignore={path}" for path in suite.ignore),
            "-p",
            "tests.suites.plugin",
            "-p",
            "no:cacheprovider",
            f"--timeout={TEST_TIMEOUT_SECONDS}",
            "-q",
            *pytest_args,
        ]
        with log.open("wb") as output:
            subprocess.run(command, cwd=tree, env=env, stdout=output, stderr=subprocess.STDOUT)
    finally:
        redis.close()
    if not report.exists():
        raise RuntimeError(f"{suite.name} ({mode}) wrote no outcomes: see {log}")
    return report


@dataclass(frozen=True)
class Expected:
    """A listed difference: ``test`` is a test id, or a regular expression over test ids."""

    suite: str
    test: str
    modes: frozenset[str]
    reason: str
    # Fails only now and then (a race): its passing is not reported as stale.
    intermittent: bool
    pattern: bool = False

    def covers(self, suite: str, test: str, mode: str) -> bool:
        if suite != self.suite or mode not in self.modes:
            return False
        return re.search(self.test, test) is not None if self.pattern else test == self.test


def load_expected(path: Path = EXPECTED_DIFFERENCES) -> list[Expected]:
    entries = yaml.safe_load(path.read_text()) or []
    expected = []
    for entry in entries:
        modes = frozenset(entry["modes"])
        if entry["suite"] not in SUITES or not modes <= set(MODES) - {"stock"}:
            raise ValueError(f"{path}: bad suite or modes in {entry}")
        expected.append(
            Expected(
                entry["suite"],
                entry.get("test") or entry["pattern"],
                modes,
                entry["reason"],
                bool(entry.get("intermittent", False)),
                pattern="pattern" in entry,
            )
        )
    return expected


@dataclass(frozen=True)
class Comparison:
    unexplained: list[str]
    stale: list[str]
    # Tests that fail with stock kombu and pass with celeriac.
    better: list[str]


def compare(
    suite: str,
    outcomes: Mapping[str, Mapping[str, str]],
    expected: Sequence[Expected],
) -> Comparison:
    """``outcomes``: mode -> test id -> outcome, stock among the modes."""
    stock = outcomes["stock"]
    unexplained, stale, better = [], [], []
    for mode, results in outcomes.items():
        if mode == "stock":
            continue
        for test, outcome in sorted(results.items()):
            passes, passes_stock = outcome in PASSED, stock.get(test) in PASSED
            entry = next((e for e in expected if e.covers(suite, test, mode)), None)
            if passes_stock and not passes and entry is None:
                unexplained.append(f"{mode}: {test} ({outcome})")
            elif entry is not None and passes and not entry.intermittent:
                stale.append(f"{mode}: {test}")
            elif passes and not passes_stock and test in stock:
                better.append(f"{mode}: {test} (stock: {stock[test]})")
    return Comparison(unexplained, stale, better)


def counts(outcomes: Mapping[str, str]) -> str:
    passed = sum(outcome in PASSED for outcome in outcomes.values())
    failed = sum(outcome == "failed" for outcome in outcomes.values())
    skipped = sum(outcome == "skipped" for outcome in outcomes.values())
    return f"{passed} passed, {failed} failed, {skipped} skipped of {len(outcomes)}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", action="append", choices=sorted(SUITES))
    parser.add_argument("--mode", action="append", choices=MODES)
    parser.add_argument("--results", type=Path, default=CACHE_DIR / "results")
    parser.add_argument("-k", dest="keyword", help="pytest -k selection (a partial run)")
    args = parser.parse_args(argv)
    modes = list(dict.fromkeys(["stock", *(args.mode or MODES)]))
    args.results.mkdir(parents=True, exist_ok=True)
    pytest_args = ["-k", args.keyword] if args.keyword else []
    expected = load_expected()
    failed = False
    for name in args.suite or sorted(SUITES):
        outcomes = {}
        for mode in modes:
            report = run_suite(SUITES[name], mode, args.results, pytest_args)
            outcomes[mode] = json.loads(report.read_text())
            print(f"{name} {mode}: {counts(outcomes[mode])}", flush=True)
        result = compare(name, outcomes, expected)
        for title, lines in (
            ("UNEXPLAINED (passes with stock kombu, not with celeriac)", result.unexplained),
            ("stale expected differences (pass now: remove them)", result.stale),
            ("pass with celeriac, not with stock", result.better),
        ):
            if lines:
                print(f"{name}: {title}:\n  " + "\n  ".join(lines))
        failed = failed or bool(result.unexplained)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
