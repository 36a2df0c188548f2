"""The upstream suites' runner (tests/suites): the lock pins, the list, the comparison."""

from __future__ import annotations

import pytest

from tests.suites.run import SUITES, Expected, compare, load_expected, locked_version


def test_suites_are_pinned_by_the_lock() -> None:
    for suite in SUITES.values():
        version, sha256 = locked_version(suite.package)
        assert version.count(".") == 2
        assert len(sha256) == 64


def test_every_expected_difference_names_its_suite_modes_and_reason() -> None:
    for entry in load_expected():
        assert entry.suite in SUITES
        assert entry.modes
        assert len(entry.reason) > 40


def expected(test: str, *, pattern: bool = False, intermittent: bool = False) -> Expected:
    return Expected("kombu", test, frozenset({"transport"}), "why", intermittent, pattern)


@pytest.mark.parametrize(
    ("outcome", "listed", "unexplained", "stale"),
    [
        ("failed", [], ["transport: t::a (failed)"], []),
        ("failed", [expected("t::a")], [], []),
        ("failed", [expected(r"::a$", pattern=True)], [], []),
        ("passed", [expected("t::a")], [], ["transport: t::a"]),
        ("passed", [expected("t::a", intermittent=True)], [], []),
        ("passed", [], [], []),
    ],
)
def test_compare_with_stock(
    outcome: str, listed: list[Expected], unexplained: list[str], stale: list[str]
) -> None:
    outcomes = {"stock": {"t::a": "passed"}, "transport": {"t::a": outcome}}
    result = compare("kombu", outcomes, listed)
    assert result.unexplained == unexplained
    assert result.stale == stale


def test_a_test_that_fails_with_stock_too_is_no_difference() -> None:
    outcomes = {"stock": {"t::a": "failed"}, "transport": {"t::a": "failed"}}
    assert compare("kombu", outcomes, []).unexplained == []
    outcomes["transport"]["t::a"] = "passed"
    assert compare("kombu", outcomes, []).better == ["transport: t::a (stock: failed)"]
