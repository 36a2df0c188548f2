"""Idle workers first on scale-in: the pod's deletion cost follows the tasks the worker holds.

When a ReplicaSet scales in it removes the pods with the lowest
``controller.kubernetes.io/pod-deletion-cost`` first (ties: Kubernetes' usual order). KEDA and
the HPA only set a replica count, they cannot choose pods (kedacore/keda#6124), so a worker
keeps that annotation on its own pod equal to the number of tasks it holds (received and not
finished: running, or about to run in a free process): 0 when idle, so idle pods go first and a
pod running more tasks goes later.

A thread of the worker's main process reads that number (Celery's ``reserved_requests``, a
length read, no lock taken) every ``POLL_SECONDS`` and patches the pod through the Kubernetes
API (the ``kubernetes`` client, in-cluster credentials: the pod's service-account token) only
when it changed, at most once per ``MIN_INTERVAL_SECONDS``: a change inside the interval waits
for its end and then the latest number is written (the last change always lands; numbers that
came and went in between are never written). The event loop never waits for the API. An API
error is logged once per outage, retried with a growing delay (up to ``MAX_RETRY_SECONDS``),
and the recovery is logged; the worker runs on either way.

At start it reads its pod once (``get``): the annotation already there counts as written, and
an unreachable API or a missing permission shows in the log right away.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

logger = logging.getLogger(__name__)

ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
MIN_INTERVAL_SECONDS = 1.0
POLL_SECONDS = 0.1
MAX_RETRY_SECONDS = 30.0
API_TIMEOUT_SECONDS = 5.0
# The annotation is an int32.
MAX_COST = 2**31 - 1


class CostPacer:
    """When to write which cost: change detection, rate limit, retry delay. No I/O."""

    def __init__(
        self,
        min_interval: float = MIN_INTERVAL_SECONDS,
        max_retry: float = MAX_RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_interval = min_interval
        self.max_retry = max_retry
        self._clock = clock
        # What the pod's annotation holds as far as we know; None: unknown (write any value).
        self.written: int | None = None
        self.failures = 0
        self._not_before = -math.inf

    def due(self, cost: int) -> bool:
        """Whether ``cost`` should be written now."""
        return cost != self.written and self._clock() >= self._not_before

    def known(self, cost: int | None) -> None:
        """The annotation was read: ``cost`` (None: absent or not a number)."""
        self.written = cost

    def wrote(self, cost: int) -> None:
        self.written = cost
        self.failures = 0
        self._not_before = self._clock() + self.min_interval

    def failed(self) -> None:
        self.failures += 1
        delay = min(self.max_retry, self.min_interval * 2 ** (self.failures - 1))
        self._not_before = self._clock() + delay


def parse_cost(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class PodAnnotations(Protocol):
    """The two calls the updater makes on its own pod."""

    def read(self) -> int | None: ...

    def write(self, cost: int) -> None: ...


class DeletionCostUpdater:
    """The thread that keeps the annotation in step with ``count()``."""

    def __init__(
        self,
        count: Callable[[], int],
        pod: PodAnnotations,
        pacer: CostPacer | None = None,
        poll: float = POLL_SECONDS,
        describe: str = "the pod",
    ) -> None:
        self._count = count
        self._pod = pod
        self.pacer = pacer or CostPacer()
        self._poll = poll
        self._describe = describe
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="celeriac-deletion-cost", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=API_TIMEOUT_SECONDS + 1)

    def _run(self) -> None:
        try:
            self.pacer.known(self._pod.read())
            logger.info(
                "pod-deletion-cost: keeping %s's annotation at the tasks it holds (now %s)",
                self._describe,
                "unset" if self.pacer.written is None else self.pacer.written,
            )
        except Exception as exc:
            logger.warning(
                "pod-deletion-cost: cannot read %s: %s; writing anyway", self._describe, _brief(exc)
            )
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # never let the thread die silently
                logger.exception("pod-deletion-cost: update failed")
            self._stop.wait(self._poll)

    def step(self) -> int | None:
        """Write the current count if due; returns what was written (None: nothing)."""
        cost = min(max(self._count(), 0), MAX_COST)
        if not self.pacer.due(cost):
            return None
        try:
            self._pod.write(cost)
        except Exception as exc:
            if self.pacer.failures == 0:
                logger.warning(
                    "pod-deletion-cost: cannot patch %s: %s; retrying until it works",
                    self._describe,
                    _brief(exc),
                )
            self.pacer.failed()
            return None
        if self.pacer.failures:
            logger.warning(
                "pod-deletion-cost: %s patched again after %d failed attempts",
                self._describe,
                self.pacer.failures,
            )
        self.pacer.wrote(cost)
        return cost


def _brief(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status is not None:
        return f"HTTP {status} {reason or ''}".strip()
    return f"{type(exc).__name__}: {exc}"


class KubernetesPod:
    """The worker's own pod through the ``kubernetes`` client (``celeriac[kubernetes]``)."""

    def __init__(self, namespace: str, name: str, api_client: Any = None) -> None:
        """``api_client``: a ``kubernetes.client.ApiClient``; None: in-cluster credentials
        (the mounted service-account token, KUBERNETES_SERVICE_HOST/PORT)."""
        from kubernetes import client, config

        if api_client is None:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            api_client = client.ApiClient()
        self.namespace = namespace
        self.name = name
        self._api = client.CoreV1Api(api_client)

    def read(self) -> int | None:
        pod = self._api.read_namespaced_pod(
            self.name, self.namespace, _request_timeout=API_TIMEOUT_SECONDS
        )
        annotations = (pod.metadata.annotations if pod.metadata else None) or {}
        return parse_cost(annotations.get(ANNOTATION))

    def write(self, cost: int) -> None:
        body = {"metadata": {"annotations": {ANNOTATION: str(cost)}}}
        self._api.patch_namespaced_pod(
            self.name,
            self.namespace,
            body,
            _request_timeout=API_TIMEOUT_SECONDS,
            _content_type="application/merge-patch+json",
        )


def held_tasks() -> int:
    """Tasks this worker holds: received and not finished (running or about to run)."""
    from celery.worker import state

    return len(state.reserved_requests)
