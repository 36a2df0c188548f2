"""Messages this worker cannot run go back to their queue or to the dead letters, never away.

Celery rejects a message whose task its app does not know ("Received unregistered task of type
... The message has been ignored and discarded"), and records a ``NotRegistered`` failure for
it: during a rolling deploy that adds a task, the old workers take the new task first and it is
lost. Here the message goes back to the end of its queue, for a worker that knows it, and a
header notes when a worker first did not know it (``UNREGISTERED_SINCE_HEADER``; the message
carries it, so the bound holds across workers and requeues). A worker that meets it
``CELERIAC_WORKER_UNREGISTERED_TASK_SECONDS`` or more after that sets it aside among its queue's
dead letters, with the reason, where the API lists and replays it
(``celeriac.broker.dead_letters``).

No busy loop: a worker meeting again a message it put back less than ``RETRY_SECONDS`` ago (a
queue holding nothing else gives it straight back) holds it until then, so each worker moves
each such message at most once per ``RETRY_SECONDS``.

A message that no worker could run (undecodable, no task name, invalid fields, a refused content
type) is set aside at once, with the reason.
"""

from __future__ import annotations

import logging
from time import monotonic, time
from typing import Any

from celeriac.broker import QoS

logger = logging.getLogger(__name__)

# When (Unix time) a worker first did not know the message's task; how many workers did not.
UNREGISTERED_SINCE_HEADER = "celeriac_unregistered_since"
UNREGISTERED_DELIVERIES_HEADER = "celeriac_unregistered_deliveries"
HEADERS = (UNREGISTERED_SINCE_HEADER, UNREGISTERED_DELIVERIES_HEADER)
# The least time between two requeues of one message by one worker: about what an idle worker
# spends between fetches (its doorbell wait), so a lone unknown task costs about as much.
RETRY_SECONDS = 1.0


class UnregisteredTasks:
    """One consumer's handling of messages its app cannot run; runs in its event loop."""

    def __init__(
        self,
        timer: Any,
        hostname: str,
        limit_seconds: float,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.timer = timer
        self.hostname = hostname
        self.limit_seconds = limit_seconds
        self.retry_seconds = retry_seconds
        # Delivery tag -> when (monotonic) this worker last put it back; oldest first.
        self._requeued: dict[str, float] = {}
        # Delivery tag -> (message, timer entry) of messages waiting out their retry time.
        self._held: dict[str, tuple[Any, Any]] = {}

    def unregistered(self, message: Any, name: str) -> bool:
        """Requeue or dead-letter a message of task ``name``; False if it is not held here
        (a queue consumed without acknowledgements, another transport): Celery's way then."""
        qos = _qos(message)
        if qos is None:
            return False
        headers = message.headers if isinstance(message.headers, dict) else {}
        now = time()
        since = _number(headers.get(UNREGISTERED_SINCE_HEADER), now)
        deliveries = int(_number(headers.get(UNREGISTERED_DELIVERIES_HEADER), 0)) + 1
        if now - since >= self.limit_seconds:
            reason = (
                f"unregistered task {name} on {self.hostname}: no worker that knows it took it "
                f"within {self.limit_seconds:g}s (CELERIAC_WORKER_UNREGISTERED_TASK_SECONDS)"
            )
            return self._dead_letter(qos, message, reason, deliveries)
        if UNREGISTERED_SINCE_HEADER not in headers:
            logger.warning(
                "unregistered task %s (%s): back to its queue for a worker that knows it, for "
                "up to %gs",
                name,
                headers.get("id"),
                self.limit_seconds,
            )
        tag = message.delivery_tag
        wait = self._wait(tag)
        marks = {UNREGISTERED_SINCE_HEADER: since, UNREGISTERED_DELIVERIES_HEADER: deliveries}
        if wait > 0:
            entry = self.timer.call_after(wait, self._requeue, (message, marks))
            self._held[tag] = (message, entry)
        else:
            self._requeue(message, marks)
        return True

    def unreadable(self, message: Any, reason: str) -> bool:
        """Dead-letter a message no worker could run; False if it is not held here."""
        qos = _qos(message)
        if qos is None:
            return False
        return self._dead_letter(qos, message, f"{reason} (on {self.hostname})", 1)

    def release(self) -> None:
        """Requeue the held messages now (the consumer is closing: its channel goes away)."""
        for message, entry in list(self._held.values()):
            self.timer.cancel(entry)
            self._requeue(message, None)

    def _wait(self, tag: str) -> float:
        now = monotonic()
        while self._requeued:
            oldest, at = next(iter(self._requeued.items()))
            if now - at < self.retry_seconds:
                break
            del self._requeued[oldest]
        last = self._requeued.get(tag)
        return 0.0 if last is None else last + self.retry_seconds - now

    def _requeue(self, message: Any, marks: dict[str, float] | None) -> None:
        tag = message.delivery_tag
        self._held.pop(tag, None)
        qos = _qos(message)
        assert qos is not None
        headers = message.headers if isinstance(message.headers, dict) else {}
        if marks is None:
            marks = {name: headers[name] for name in HEADERS if name in headers}
        channel: Any = qos.channel
        try:
            qos.requeue_held(tag, marks)
        except channel.connection_errors as exc:
            # Still held in Redis: the channel's close or the visibility-timeout sweep puts
            # it back.
            logger.warning("could not requeue %s: %r", tag, exc)
            return
        self._requeued.pop(tag, None)
        self._requeued[tag] = monotonic()

    def _dead_letter(self, qos: QoS, message: Any, reason: str, deliveries: int) -> bool:
        if not qos.dead_letter_held(message.delivery_tag, reason, deliveries, HEADERS):
            return False
        headers = message.headers if isinstance(message.headers, dict) else {}
        queue = (message.delivery_info or {}).get("routing_key")
        logger.error(
            "set aside among the dead letters of %s: %s: %s", queue, headers.get("id"), reason
        )
        return True


def _qos(message: Any) -> QoS | None:
    qos = getattr(getattr(message, "channel", None), "qos", None)
    return qos if isinstance(qos, QoS) else None


def _number(value: object, default: float) -> float:
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default
    )
