"""SIGTERM as Kubernetes sends it: finish what runs, within a deadline, then requeue the rest.

Celery offers two shutdowns and neither fits a pod with a grace period:

- warm (SIGTERM's default) waits for running tasks without bound, so the kubelet's SIGKILL
  lands on them and, with acks late, they sit in ``unacked`` for the visibility timeout;
- soft (``REMAP_SIGTERM=SIGQUIT`` + ``worker_soft_shutdown_timeout``) requeues at the timeout
  but sleeps the whole timeout inside the signal handler, even when every task ended early
  (celery/celery#9505), and no results are processed meanwhile.

So celeriac handles SIGTERM itself, from the worker's event loop:

1. stop consuming (nothing new starts) and drop the ready file;
2. check every ``TICK_SECONDS`` whether any request is still reserved by this worker; when none
   is, start Celery's warm shutdown, which is then immediate (nothing to wait for);
3. at the deadline run Celery's cold shutdown (``on_cold_shutdown``, with the soft wait off):
   it kills the pool processes still running tasks; on the way out kombu's Redis channel
   puts every delivered, unacknowledged message back on its queue list at once
   (``QoS.restore_unacked`` on channel close), and a rejected-on-worker-lost request is
   requeued by ``Request.on_failure`` (whichever comes first; the other finds nothing left).
   The threads pool cannot kill a task: its messages are requeued and the process ends.

Only the main process handles SIGTERM; pool processes keep Celery's default and die on it,
so signal the main process only (Kubernetes signals the container's PID 1).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from celery import platforms
from celery.apps import worker as celery_apps_worker
from celery.concurrency.base import BasePool
from celery.platforms import EX_OK
from celery.worker import state

from celeriac.broker import Channel

logger = logging.getLogger(__name__)

# How often the event loop checks whether the drain is over: the worker exits at most this
# long after its last task ends.
TICK_SECONDS = 0.1


class GracefulShutdown:
    """Drains the worker on SIGTERM; see the module docstring for the steps."""

    def __init__(
        self,
        worker: Any,
        timeout_seconds: float,
        on_drain: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.worker = worker
        self.timeout_seconds = timeout_seconds
        self.on_drain = on_drain
        self.clock = clock
        self.deadline: float | None = None
        self._cancelled: Any = None
        self._done = False
        self._tick_entry: Any = None

    @property
    def draining(self) -> bool:
        """SIGTERM came: the worker takes nothing more."""
        return self.deadline is not None

    def install(self) -> None:
        """Take over SIGTERM (after Celery installed its handler) and start ticking."""
        # The drain replaces soft shutdown: the cold path at the deadline must not sleep again.
        self.worker.app.conf.worker_soft_shutdown_timeout = 0.0
        platforms.signals["SIGTERM"] = self._on_sigterm
        self._tick_entry = self.worker.timer.call_repeatedly(TICK_SECONDS, self.tick)

    def uninstall(self) -> None:
        if self._tick_entry is not None:
            self._tick_entry.cancel()
            self._tick_entry = None

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler: set flags first; the event loop does the work in tick().
        if self.deadline is not None:
            _say("worker: SIGTERM again: already draining; SIGQUIT requeues now")
            return
        self.deadline = self.clock() + self.timeout_seconds
        running = len(state.reserved_requests)
        if not running:
            # Nothing to wait for; this also covers a worker still (re)connecting to the
            # broker, whose retry loop checks this flag every second but runs no timers.
            setattr(state, "should_stop", EX_OK)  # noqa: B010 (typed None in the stubs)
        _say(
            f"worker: SIGTERM: draining {running} running task(s), "
            f"up to {self.timeout_seconds:g}s, then requeueing what is left"
        )

    def tick(self) -> None:
        """Called from the event loop; acts only after SIGTERM."""
        if self.deadline is None or self._done:
            return
        # Again after a reconnect during the drain: the consumer then starts a new one.
        self._stop_consuming()
        running = len(state.reserved_requests)
        if running == 0:
            self._done = True
            logger.info("shutdown: no task running; exiting")
            setattr(state, "should_stop", EX_OK)  # noqa: B010
        elif self.clock() >= self.deadline:
            self._done = True
            logger.warning(
                "shutdown: %d task(s) still running after %gs; requeueing them",
                running,
                self.timeout_seconds,
            )
            self._requeue()

    def _stop_consuming(self) -> None:
        consumer = getattr(self.worker, "consumer", None)
        task_consumer = getattr(consumer, "task_consumer", None)
        if task_consumer is None or task_consumer is self._cancelled:
            return
        self._cancelled = task_consumer
        try:
            task_consumer.cancel()
        except Exception as exc:  # a broken connection: nothing will be delivered anyway
            logger.warning("shutdown: could not cancel the task consumer: %r", exc)
        self.on_drain()

    def _requeue(self) -> None:
        # Cut short on purpose: these deliveries do not count towards the dead-letter limit.
        Channel.handback.requeue_deliberately()
        if _can_kill_jobs(self.worker.pool):
            # Celery's cold path: kill the pool processes running unacknowledged (acks late)
            # tasks, set should_terminate; the channel closes on the way out and restores
            # their messages.
            celery_apps_worker.on_cold_shutdown(self.worker)  # type: ignore[attr-defined]
        else:
            self._requeue_and_exit()

    def _requeue_and_exit(self) -> None:
        """The threads pool: a thread cannot be stopped, and Python waits for it at exit.

        So hand every message back (each reserved one at once; closing the connection
        restores the rest, ETA tasks included) and end the process, as the kubelet's SIGKILL
        would a few seconds later, but without leaving anything in ``unacked``.
        """
        for request in tuple(state.reserved_requests):
            if request.task.acks_late and not request.acknowledged:
                request.reject(requeue=True)
        connection = getattr(getattr(self.worker, "consumer", None), "connection", None)
        if connection is not None:
            try:
                connection.close()
            except Exception as exc:
                logger.warning("shutdown: closing the broker connection failed: %r", exc)
        logger.warning("shutdown: requeued; threads cannot be stopped, so exiting now")
        logging.shutdown()
        os._exit(EX_OK)


def _can_kill_jobs(pool: Any) -> bool:
    """Whether the pool can kill the job of one task (prefork can; threads cannot)."""
    # prefork sets it per instance (billiard's), so look at the instance, not the class.
    method = getattr(pool, "terminate_job", None)
    return method is not None and getattr(method, "__func__", None) is not BasePool.terminate_job


def _say(message: str) -> None:
    # Straight to the file descriptor: a signal handler that logs or prints can land inside a
    # write to the same stream and raise (or deadlock) there.
    with contextlib.suppress(OSError):
        os.write(sys.__stderr__.fileno() if sys.__stderr__ else 2, f"{message}\n".encode())
