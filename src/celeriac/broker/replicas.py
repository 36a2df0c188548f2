"""Acknowledged writes and failover: publishes that return once replicas hold them (``WAIT``).

Replication is asynchronous: a master can acknowledge a publish and die before its replica has
it, and the promoted replica never had that task. With ``CELERIAC_REDIS_WAIT_REPLICAS=n`` every
publish through celeriac's transport ends with ``WAIT n timeout`` on the same connection, so
``send_task`` returns only once ``n`` replicas hold the message; fewer within
``CELERIAC_REDIS_WAIT_TIMEOUT_SECONDS`` is a publish error (``ReplicationError``; the message
may still be on the master: at least once). The API's batched publishes check ``WAIT`` the
same way (``check_replicated``).

``replicated_transport`` is the variant of celeriac's transport for one Redis URL;
``celeriac.broker.sentinel.sentinel_transport`` joins the same channel mixin to Sentinel's.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any, cast

import redis
from kombu.transport import redis as kombu_redis

from celeriac.settings import Settings

# The transport options the channel mixin reads (``celeriac.broker.config`` sets them).
OPTIONS = ("wait_replicas", "wait_timeout_ms")


class ReplicationError(redis.ConnectionError):
    """A publish reached the master but not the replicas ``CELERIAC_REDIS_WAIT_REPLICAS`` asks.

    A connection error, so Celery's publish retry and the API's 503 treat it as Redis being
    unavailable: the master may be isolated from its replicas, about to be replaced.
    """


def check_replicated(acknowledged: object, replicas: int, timeout_ms: int) -> None:
    """Raise ``ReplicationError`` unless ``WAIT replicas timeout_ms`` answered ``replicas``."""
    if isinstance(acknowledged, int) and acknowledged >= replicas:
        return
    raise ReplicationError(
        f"written, but {acknowledged} of {replicas} replicas acknowledged within "
        f"{timeout_ms} ms (CELERIAC_REDIS_WAIT_REPLICAS)"
    )


def wait_timeout_ms(settings: Settings) -> int:
    """``CELERIAC_REDIS_WAIT_TIMEOUT_SECONDS`` as ``WAIT`` takes it."""
    return max(1, round(settings.redis_wait_timeout_seconds * 1000))


class _WaitingPipeline:
    """A pipeline that ends with ``WAIT replicas timeout`` and checks its reply."""

    def __init__(self, pipe: Any, replicas: int, timeout_ms: int) -> None:
        self._pipe = pipe
        self._replicas = replicas
        self._timeout_ms = timeout_ms

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __enter__(self) -> _WaitingPipeline:
        self._pipe.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._pipe.__exit__(*exc)

    def execute(self, *args: Any, **kwargs: Any) -> list[Any]:
        self._pipe.execute_command("WAIT", self._replicas, self._timeout_ms)
        replies: list[Any] = self._pipe.execute(*args, **kwargs)
        check_replicated(replies[-1], self._replicas, self._timeout_ms)
        return replies[:-1]


class _WaitingClient:
    """A client whose pipelines end with ``WAIT`` (see ``ReplicatedChannel._put``)."""

    def __init__(self, client: Any, replicas: int, timeout_ms: int) -> None:
        self._client = client
        self._replicas = replicas
        self._timeout_ms = timeout_ms

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def pipeline(self, *args: Any, **kwargs: Any) -> _WaitingPipeline:
        pipe = self._client.pipeline(*args, **kwargs)
        return _WaitingPipeline(pipe, self._replicas, self._timeout_ms)


class ReplicatedChannel:
    """Mixin for a celeriac channel: a publish returns once ``wait_replicas`` replicas have it.

    The base channel's ``_put`` writes a message with one pipeline; while it runs,
    ``conn_or_acquire`` hands it a client whose pipeline appends ``WAIT`` (same connection,
    so Redis waits for exactly these writes). Messages collected in a publish batch (the API)
    are written by their collector, not here.
    """

    wait_replicas: int = 0
    wait_timeout_ms: int = 1000
    _waiting_put = False

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        parent = cast(Any, super())
        if self.wait_replicas <= 0 or kwargs.get("_publish_batch") is not None:
            parent._put(queue, message, **kwargs)
            return
        self._waiting_put = True
        try:
            parent._put(queue, message, **kwargs)
        finally:
            self._waiting_put = False

    @contextlib.contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        parent = cast(Any, super())
        with parent.conn_or_acquire(client) as conn:
            if self._waiting_put and client is None:
                yield _WaitingClient(conn, self.wait_replicas, self.wait_timeout_ms)
            else:
                yield conn


def channel_options(*channels: Any) -> tuple[str, ...]:
    """The transport options every one of ``channels`` reads, each once, plus WAIT's."""
    names = [name for channel in channels for name in channel.from_transport_options]
    return tuple(dict.fromkeys([*names, *OPTIONS]))


@functools.cache
def replicated_transport(base: type[kombu_redis.Transport]) -> type[kombu_redis.Transport]:
    """``base`` with publishes WAITed for replicas, connecting to one Redis URL directly."""
    channel = type(
        f"Replicated{base.Channel.__name__}",
        (ReplicatedChannel, base.Channel),
        {
            "__module__": __name__,
            "from_transport_options": channel_options(base.Channel),
        },
    )
    return type(f"Replicated{base.__name__}", (base,), {"__module__": __name__, "Channel": channel})
