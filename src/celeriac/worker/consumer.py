"""The worker's consumer: Celery's, with celeriac's broker backoff, stall clock and handling of
messages it cannot run.

``run_worker`` passes it as ``consumer_cls``; it reads the worker's ``WorkerSettings`` from the
``celeriac_settings`` worker option, and without them behaves as Celery's apart from the backoff.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer
from celery.worker.state import maybe_shutdown
from kombu.utils.objects import cached_property

from celeriac import heartbeat
from celeriac.worker.reconnect import BrokerBackoff
from celeriac.worker.settings import WorkerSettings
from celeriac.worker.unregistered import UnregisteredTasks


class ProbedConsumer(Consumer):
    """Celery's consumer, waiting for the broker with celeriac's backoff (``reconnect``) and
    touching the heartbeat meanwhile, recording when it takes a message (for the stall check),
    and never discarding a message it cannot run (``celeriac.worker.unregistered``; Celery's
    handlers reject it for good).

    While (re)connecting, the consumer sits in kombu's retry loop and no timer runs; the
    backoff calls back every second, and the heartbeat rides on that callback. A Redis outage
    thus leaves the liveness probe passing (restarting the pod would not bring Redis back),
    while a frozen process still fails it.
    """

    @cached_property
    def celeriac_backoff(self) -> BrokerBackoff:
        settings = self._celeriac_settings()

        def tick() -> None:
            if settings is not None:
                heartbeat.touch(settings.heartbeat_file)
            maybe_shutdown()

        return BrokerBackoff(tick)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        handler: Callable[[Any], Any] = super().create_task_handler(*args, **kwargs)
        stall_clock = getattr(getattr(self, "controller", None), "celeriac_stall_clock", None)
        if stall_clock is None:
            return handler
        taken = stall_clock.message_taken

        def on_task_received(message: Any) -> Any:
            taken()
            return handler(message)

        return on_task_received

    def ensure_connected(self, conn: Any) -> Any:
        _retry_with_backoff(conn, self.celeriac_backoff)
        return super().ensure_connected(conn)

    def on_connection_error_before_connected(self, exc: Exception) -> None:
        # Celery logs an ERROR and restarts at once (a spin while the broker refuses writes).
        self.celeriac_backoff.failed(exc)

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        # Lost from now (Celery's clean-up may take a while: it stores terminated tasks' state).
        self.celeriac_backoff.failed(exc, announced=True)
        super().on_connection_error_after_connected(exc)  # its one WARNING, and the clean-up

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        handler = self._unregistered()
        if handler is None or not handler.unregistered(message, _task_name(message)):
            super().on_unknown_task(body, message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        if not self._set_aside(message, "not a task message: it names no task"):
            super().on_unknown_message(body, message)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        if not self._set_aside(message, f"invalid task message: {exc}"):
            super().on_invalid_task(body, message, exc)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        # Also the remote-control consumer's handler: its messages are never held, so they
        # still go Celery's way.
        if not self._set_aside(message, f"undecodable message: {exc!r}"):
            super().on_decode_error(message, exc)

    def on_close(self) -> None:
        handler = self._unregistered()
        if handler is not None:
            handler.release()
        super().on_close()

    def _set_aside(self, message: Any, reason: str) -> bool:
        handler = self._unregistered()
        return handler is not None and handler.unreadable(message, reason)

    def _unregistered(self) -> UnregisteredTasks | None:
        handler: UnregisteredTasks | None = getattr(self, "_celeriac_unregistered", None)
        settings = self._celeriac_settings()
        if handler is None and settings is not None:
            handler = UnregisteredTasks(
                self.timer, str(self.hostname), settings.unregistered_task_seconds
            )
            self._celeriac_unregistered = handler
        return handler

    def _celeriac_settings(self) -> WorkerSettings | None:
        options = getattr(getattr(self, "controller", None), "options", None) or {}
        settings = options.get("celeriac_settings")
        return settings if isinstance(settings, WorkerSettings) else None


def _task_name(message: Any) -> str:
    """The task a message names (protocol 2 in its headers, protocol 1 in its body)."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    name = headers.get("task")
    if name is None:
        try:
            name = message.payload.get("task")
        except Exception:  # an undecodable protocol-1 body: the name is unknowable
            name = None
    return str(name)


def _retry_with_backoff(conn: Any, backoff: BrokerBackoff) -> None:
    """Make Celery's ``conn.ensure_connection(errback, max_retries, callback=...)`` wait with
    ``backoff`` between attempts, instead of kombu's intervals and Celery's ERROR per attempt."""
    ensure_connection: Callable[..., Any] = conn.ensure_connection

    def ensure_with_backoff(errback: Any = None, max_retries: int | None = None, **kw: Any) -> Any:
        def on_error(exc: BaseException, interval: float) -> None:
            backoff.failed(exc)

        # kombu sleeps the interval after the errback: none, the backoff waited already.
        kw.update(interval_start=0, interval_step=0, interval_max=0)
        return ensure_connection(on_error, max_retries, **kw)

    conn.ensure_connection = ensure_with_backoff
