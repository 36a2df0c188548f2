"""The silent-consumer decision (``celeriac.worker.stall.StallClock``) on a fake clock."""

from __future__ import annotations

from celeriac.worker.stall import StallClock


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
