"""Waiting for a condition with a deadline, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

WAIT_TIMEOUT_SECONDS = 10.0
WAIT_INTERVAL_SECONDS = 0.05


def wait_until(
    condition: Callable[[], T | None],
    *,
    timeout: float = WAIT_TIMEOUT_SECONDS,
    interval: float = WAIT_INTERVAL_SECONDS,
    message: str = "condition",
) -> T:
    """Poll ``condition`` until it returns something truthy and return that.

    Exceptions count as "not yet" (the system may still be starting). At the deadline it
    raises AssertionError naming ``message`` and the last exception.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
        except Exception as exc:
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    detail = f" (last error: {last_error!r})" if last_error else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")
