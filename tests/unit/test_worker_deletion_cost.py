"""The pod-deletion-cost decisions without a cluster: change detection, the rate limit, the last
value always landing, retries after API errors logged once per outage; and its settings."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest

from celeriac.env import ConfigError
from celeriac.worker.deletion_cost import (
    CostPacer,
    DeletionCostUpdater,
    parse_cost,
)
from celeriac.worker.settings import WorkerSettings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Pod:
    """An annotation store that records writes and fails while ``down``."""

    def __init__(self, current: int | None = None) -> None:
        self.current = current
        self.writes: list[int] = []
        self.down = False

    def read(self) -> int | None:
        return self.current

    def write(self, cost: int) -> None:
        if self.down:
            raise ConnectionError("connection refused")
        self.writes.append(cost)
        self.current = cost


def updater(pod: Pod, count: list[int], clock: Clock) -> DeletionCostUpdater:
    pacer = CostPacer(min_interval=1.0, max_retry=8.0, clock=clock)
    return DeletionCostUpdater(lambda: count[0], pod, pacer, describe="pod ns/w-1")


def test_the_first_count_is_written_then_only_changes() -> None:
    clock, pod, count = Clock(), Pod(), [0]
    u = updater(pod, count, clock)
    assert u.step() == 0  # unknown annotation: idle is written at start
    clock.now += 5
    assert u.step() is None  # unchanged: no write
    count[0] = 2
    assert u.step() == 2
    clock.now += 5
    assert u.step() is None
    assert pod.writes == [0, 2]


def test_an_annotation_already_equal_is_not_written_again() -> None:
    pacer = CostPacer(clock=Clock())
    pacer.known(parse_cost("3"))
    assert not pacer.due(3)
    assert pacer.due(0)
    assert parse_cost("x") is None
    assert parse_cost(None) is None


def test_at_most_one_write_per_interval_and_the_last_value_lands() -> None:
    clock, pod, count = Clock(), Pod(), [0]
    u = updater(pod, count, clock)
    u.step()
    for value, later in ((1, 0.1), (2, 0.2), (3, 0.3)):  # a burst inside one interval
        count[0] = value
        clock.now += later
        assert u.step() is None
    clock.now += 0.4  # 1.0 s after the first write
    assert u.step() == 3  # the latest, not the ones in between
    count[0] = 0
    clock.now += 0.99
    assert u.step() is None
    clock.now += 0.01
    assert u.step() == 0
    assert pod.writes == [0, 3, 0]


def test_a_change_undone_within_the_interval_writes_nothing() -> None:
    clock, pod, count = Clock(), Pod(), [0]
    u = updater(pod, count, clock)
    u.step()
    count[0] = 1
    clock.now += 0.5
    u.step()
    count[0] = 0
    clock.now += 1
    assert u.step() is None
    assert pod.writes == [0]


def test_api_errors_are_logged_once_per_outage_and_retried_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="celeriac.worker.deletion_cost")
    clock, pod, count = Clock(), Pod(), [1]
    u = updater(pod, count, clock)
    pod.down = True
    attempts = []
    for _ in range(40):  # 20 s at 0.5 s steps
        before = u.pacer.failures
        u.step()
        if u.pacer.failures > before:
            attempts.append(clock.now)
        clock.now += 0.5
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[:4] == [1.0, 2.0, 4.0, 8.0]  # doubling from the interval
    assert max(gaps) == 8.0  # capped at max_retry
    cannot = [r for r in caplog.records if "cannot patch" in r.getMessage()]
    assert len(cannot) == 1
    assert "pod ns/w-1" in cannot[0].getMessage()
    assert "connection refused" in cannot[0].getMessage()
    pod.down = False
    count[0] = 4  # changed during the outage: the latest value lands once it is back
    clock.now += 8
    assert u.step() == 4
    assert any("patched again" in r.getMessage() for r in caplog.records)
    pod.down = True
    count[0] = 0
    clock.now += 1
    u.step()
    cannot = [r for r in caplog.records if "cannot patch" in r.getMessage()]
    assert len(cannot) == 2  # a new outage is logged again
    assert pod.writes == [4]


def test_the_thread_keeps_the_annotation_in_step_and_stops() -> None:
    pod, count = Pod(current=7), [0]
    u = DeletionCostUpdater(lambda: count[0], pod, CostPacer(min_interval=0.05), poll=0.01)
    u.start()
    try:
        from celeriac.testing import wait_until

        wait_until(lambda: pod.current == 0, timeout=5, message="idle written")
        count[0] = 2
        wait_until(lambda: pod.current == 2, timeout=5, message="busy written")
    finally:
        u.stop()
    assert not u._thread.is_alive()
    assert pod.writes == [0, 2]


def test_settings_off_by_default_and_read_from_the_downward_api() -> None:
    assert WorkerSettings.from_env({}).deletion_cost is False
    settings = WorkerSettings.from_env(
        {
            "CELERIAC_WORKER_DELETION_COST": "true",
            "CELERIAC_POD_NAME": "celeriac-worker-default-7d9f-abcde",
            "CELERIAC_POD_NAMESPACE": "jobs",
        }
    )
    assert settings.deletion_cost is True
    assert settings.pod_name == "celeriac-worker-default-7d9f-abcde"
    assert settings.pod_namespace == "jobs"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CELERIAC_WORKER_DELETION_COST": "true"}, "needs CELERIAC_POD_NAME"),
        (
            {"CELERIAC_WORKER_DELETION_COST": "true", "CELERIAC_POD_NAME": "w-1"},
            "needs CELERIAC_POD_NAMESPACE",
        ),
        ({"CELERIAC_POD_NAME": "Worker_1"}, "CELERIAC_POD_NAME='Worker_1' is not a pod name"),
        ({"CELERIAC_POD_NAMESPACE": "a.b"}, "CELERIAC_POD_NAMESPACE='a.b' is not a namespace"),
        ({"CELERIAC_POD_NAMESPACE": "a" * 64}, "at most 63 characters"),
        ({"CELERIAC_WORKER_DELETION_COST": "maybe"}, "is not a boolean"),
    ],
)
def test_settings_refuse_bad_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        WorkerSettings.from_env(env)


def test_on_without_credentials_fails_at_start_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from celeriac.worker.runner import deletion_cost_pod

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = WorkerSettings.from_env(
        {
            "CELERIAC_WORKER_DELETION_COST": "true",
            "CELERIAC_POD_NAME": "w-1",
            "CELERIAC_POD_NAMESPACE": "ns",
        }
    )
    with pytest.raises(ConfigError, match="no in-cluster Kubernetes credentials"):
        deletion_cost_pod(settings)
    assert deletion_cost_pod(WorkerSettings.from_env({})) is None
