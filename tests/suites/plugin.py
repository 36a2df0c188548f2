"""pytest plug-in that runs Celery's and kombu's own integration suites against celeriac.

Loaded into their pytest run (``-p tests.suites.plugin``) by ``tests.suites.run``; the mode
comes from ``CELERIAC_SUITE_MODE``:

- ``stock``: nothing changes (kombu's Redis transport, the suite's own configuration);
- ``transport``: every ``redis://`` connection uses celeriac's transport (kombu's alias
  ``redis`` names it), so even the tests that build ``kombu.Connection("redis://...")``
  themselves go through it;
- ``celeriac``: the transport, and celeriac's configuration applied on top of the suite's as
  every celeriac component applies it (``celeriac.app.configure`` on each app the suite's
  fixtures make; for kombu's connections, the broker transport options celeriac sets, under
  the ones a test gives).
"""

from __future__ import annotations

import json
import os
from typing import Any

import kombu
import kombu.transport
import pytest

from celeriac.app import celery_config, configure
from celeriac.broker import TRANSPORT
from celeriac.settings import Settings

MODE_VARIABLE = "CELERIAC_SUITE_MODE"
MODES = ("stock", "transport", "celeriac")


def suite_mode() -> str:
    mode = os.environ.get(MODE_VARIABLE, "stock")
    if mode not in MODES:
        raise pytest.UsageError(f"{MODE_VARIABLE}={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(OutcomeRecorder(), "celeriac-outcomes")
    mode = suite_mode()
    if mode == "stock":
        return
    kombu.transport.TRANSPORT_ALIASES["redis"] = TRANSPORT
    if mode == "celeriac":
        _apply_celeriac_configuration(Settings.from_env())


def _apply_celeriac_configuration(settings: Settings) -> None:
    from celery.contrib.testing import app as testing_app

    make_test_app = testing_app.TestApp

    def configured_test_app(*args: Any, **kwargs: Any) -> Any:
        return configure(make_test_app(*args, **kwargs), settings)

    testing_app.TestApp = configured_test_app  # type: ignore[assignment]

    options = celery_config(settings)["broker_transport_options"]
    connection_init = kombu.Connection.__init__

    def init_with_options(self: kombu.Connection, *args: Any, **kwargs: Any) -> None:
        given = kwargs.get("transport_options") or {}
        kwargs["transport_options"] = {**options, **given}
        connection_init(self, *args, **kwargs)

    kombu.Connection.__init__ = init_with_options  # type: ignore[method-assign]


# Where the outcome of every test goes (JSON: node id -> outcome), for tests.suites.run.
REPORT_VARIABLE = "CELERIAC_SUITE_REPORT"


class OutcomeRecorder:
    """Each test's final outcome: passed, failed (any phase, any subtest), skipped, xfailed.

    A test Celery marks ``flaky`` may run again (pytest-rerunfailures): its last run counts.
    """

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    @pytest.hookimpl
    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self.outcomes.pop(nodeid, None)

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        outcome = report.outcome
        if outcome not in ("passed", "failed", "skipped"):
            return  # "rerun": the next run decides
        current = self.outcomes.get(report.nodeid)
        if current == "failed":
            return
        if hasattr(report, "wasxfail"):
            self.outcomes[report.nodeid] = "xfailed" if report.skipped else "failed"
        elif report.failed or report.skipped:
            self.outcomes[report.nodeid] = str(outcome)
        elif report.when == "call" and current is None:
            self.outcomes[report.nodeid] = "passed"

    @pytest.hookimpl
    def pytest_sessionfinish(self) -> None:
        path = os.environ.get(REPORT_VARIABLE)
        if path:
            with open(path, "w", encoding="utf-8") as file:
                json.dump(self.outcomes, file, indent=1, sort_keys=True)
