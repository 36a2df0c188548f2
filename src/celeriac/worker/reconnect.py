"""How the worker's consumer waits for the broker: a bounded exponential backoff, logged once
per state change.

Celery's consumer retries a lost broker connection through kombu's ``ensure_connection``
(a linear 2, 4, 6 ... 30 s backoff after each round over the URL's hosts, one ERROR line per
attempt) and restarts its steps without any pause when the connection fails after it connected
(one WARNING per restart; more than 5 restarts in a second log ``RestartFreqExceeded`` as
CRITICAL and block the event loop for a second). During a Sentinel failover that was 60-70
ERROR lines and about 10 CRITICAL lines per worker. ``ProbedConsumer`` (``consumer``) routes both
paths through ``BrokerBackoff`` instead: waits of 0.1 s doubling up to 2 s, one WARNING when
the broker is lost and one INFO when the consumer consumes again (``steps.Ready``; connecting
is not enough: ``celeriac.broker.transport.Channel`` refuses a node that does not accept writes, but
a later write of the start-up may still be refused).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

BROKER_RETRY_FIRST_SECONDS = 0.1
# Short enough that a worker is back within 2 s of the broker; long enough that a broker
# refusing for minutes costs one attempt per worker every 2 s.
BROKER_RETRY_MAX_SECONDS = 2.0
# How often the waiting worker calls back (heartbeat file, shutdown requests).
TICK_SECONDS = 1.0
# A connection that failed sooner than this after it was made continues the backoff of the
# loss before it (a consumer that connects, then fails at once, must not spin).
STABLE_SECONDS = 10.0


class BrokerBackoff:
    """The state of the consumer's broker connection: up, or lost since when, after how many
    attempts. ``tick`` runs at least every ``TICK_SECONDS`` while it waits."""

    def __init__(
        self,
        tick: Callable[[], object],
        *,
        first: float = BROKER_RETRY_FIRST_SECONDS,
        maximum: float = BROKER_RETRY_MAX_SECONDS,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tick = tick
        self._first = first
        self._maximum = maximum
        self._sleep = sleep
        self._clock = clock
        self._lost_at: float | None = None
        self._connected_at: float | None = None
        self._attempts = 0

    @property
    def lost(self) -> bool:
        return self._lost_at is not None

    def failed(self, exc: BaseException, *, announced: bool = False) -> None:
        """An attempt failed: say so if the broker was up (unless Celery's own warning
        ``announced`` it already), then wait before the next attempt."""
        if self._lost_at is None:
            self._lost_at = self._clock()
            if self._connected_at is None or self._lost_at - self._connected_at >= STABLE_SECONDS:
                self._attempts = 0
            if not announced:
                logger.warning(
                    "consumer: broker unavailable (%s); retrying every %g-%g s until it "
                    "accepts writes",
                    exc,
                    self._first,
                    self._maximum,
                )
        else:
            logger.debug("consumer: broker still unavailable: %r", exc)
        delay = min(self._maximum, self._first * 2**self._attempts)
        self._attempts += 1
        self._wait(delay)

    def connected(self) -> None:
        """The consumer consumes again: say so once after a loss."""
        self._connected_at = self._clock()
        if self._lost_at is None:
            return
        logger.info(
            "consumer: broker accepts writes again after %.1f s (%d attempts)",
            self._clock() - self._lost_at,
            self._attempts,
        )
        self._lost_at = None

    def _wait(self, seconds: float) -> None:
        deadline = self._clock() + seconds
        while (left := deadline - self._clock()) > 0:
            self._sleep(min(left, TICK_SECONDS))
            self._tick()
