"""The silent-consumer decision (``celeriac.worker.stall``) on a fake clock and fake workers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from celeriac.worker.stall import StallClock, worker_can_take


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_stalled_only_after_the_condition_held_for_the_whole_time() -> None:
    clock = FakeClock()
    stall = StallClock(60, clock)
    clock.now += 3600  # idle for an hour with nothing waiting: not stalled
    assert stall.check(waiting=0, can_take=True) is None
    # Messages arrive: the worker gets the full 60 s from now, not from its last message.
    assert stall.check(waiting=5, can_take=True) is None
    clock.now += 59
    assert stall.check(waiting=5, can_take=True) is None
    clock.now += 1
    reason = stall.check(waiting=5, can_take=True)
    assert reason is not None
    assert reason.startswith("5 messages wait in its queues")
    assert "nothing for 60s" in reason


def test_taking_a_message_or_the_condition_ending_clears_it() -> None:
    clock = FakeClock()
    stall = StallClock(10, clock)
    assert stall.check(waiting=1, can_take=True) is None
    clock.now += 11
    assert stall.check(waiting=1, can_take=True) is not None
    stall.message_taken()
    assert stall.check(waiting=1, can_take=True) is None
    clock.now += 11
    assert stall.check(waiting=1, can_take=True) is not None
    # Every process busy, Redis unreadable, nothing waiting: each ends it and restarts the count.
    for waiting, can_take in ((1, False), (None, True), (0, True)):
        assert stall.check(waiting=waiting, can_take=can_take) is None
        assert stall.check(waiting=1, can_take=True) is None
        clock.now += 11
        assert stall.check(waiting=1, can_take=True) is not None


class FakeQoS:
    def __init__(self, can: bool) -> None:
        self.can = can

    def can_consume(self) -> bool:
        return self.can


class FakeShutdown:
    draining = False


def fake_worker(channel_can: bool | None, concurrency: int = 2) -> Any:
    """A worker whose consumer has a channel (``channel_can``: its prefetch says) or none."""
    consumer = None
    if channel_can is not None:
        qos = FakeQoS(channel_can)
        consumer = SimpleNamespace(task_consumer=SimpleNamespace(channel=SimpleNamespace(qos=qos)))
    return SimpleNamespace(
        consumer=consumer, concurrency=concurrency, celeriac_shutdown=FakeShutdown()
    )


def test_a_worker_without_a_channel_can_take_while_a_pool_process_is_free() -> None:
    # Between connections, or a consumer that is gone: not "consuming", yet it should take
    # work, so a reconnect loop that never succeeds while Redis answers is a stall.
    assert worker_can_take(fake_worker(None), held=lambda: 0)
    assert worker_can_take(fake_worker(None), held=lambda: 1)
    assert not worker_can_take(fake_worker(None), held=lambda: 2)
    # With a channel, its prefetch limit says it (ETA and rate-limited messages count).
    assert worker_can_take(fake_worker(True), held=lambda: 5)
    assert not worker_can_take(fake_worker(False), held=lambda: 0)


def test_a_draining_worker_cannot_take() -> None:
    worker = fake_worker(True)
    worker.celeriac_shutdown.draining = True
    assert not worker_can_take(worker, held=lambda: 0)
