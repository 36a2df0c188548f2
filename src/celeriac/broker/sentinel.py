"""Redis high availability: every component reaches the master through Redis Sentinel.

``CELERIAC_BROKER_URL=sentinel://host1:26379;sentinel://host2:26379`` (kombu's form) names the
sentinels, ``CELERIAC_REDIS_SENTINEL_MASTER`` the master they monitor. Each Redis client asks a
sentinel for the master's address whenever it opens a connection (redis-py's
``SentinelConnectionPool``), never once at start: a client that kept the address it found first
writes to a demoted master after a failover and gets ``READONLY`` errors for as long as it
lives. redis-py's sentinel-managed connections also turn a ``READONLY`` reply from a master
that was demoted while the connection stayed open into a connection error, so the next attempt
connects to the new master.

Here, per component:

- worker and Celery producers: kombu's ``SentinelChannel`` joined to celeriac's channel (the
  atomic fetch, in-flight index and dead letters of ``celeriac.broker.transport``) by
  ``sentinel_transport``, which works for any subclass of celeriac's transport (the API's
  publisher has its own);
- the result backend: Celery's ``SentinelBackend`` with celeriac's one-round-trip store
  (``celeriac.broker.backend.SentinelResultBackend``);
- beat and its lock, the API and the exporter: ``client`` / ``async_client``, plain redis-py
  clients from ``master_for``.

The Redis password (``CELERIAC_REDIS_PASSWORD``) authenticates to Redis and, unless
``CELERIAC_REDIS_SENTINEL_AUTH`` is off, to the sentinels too (``requirepass`` in
sentinel.conf, as the chart configures them).

Acknowledged writes and failover. Replication is asynchronous: a master can acknowledge a
publish and die before its replica has it, and the promoted replica never had that task. With
``CELERIAC_REDIS_WAIT_REPLICAS=n`` every publish through celeriac's transport ends with
``WAIT n timeout`` on the same connection, so ``send_task`` returns only once ``n`` replicas
hold the message; fewer within ``CELERIAC_REDIS_WAIT_TIMEOUT_SECONDS`` is a publish error
(``ReplicationError``; the message may still be on the master: at least once).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from kombu.transport import redis as kombu_redis
from kombu.utils.imports import symbol_by_name
from redis.backoff import NoBackoff
from redis.retry import Retry

from celeriac.settings import SENTINEL_SEPARATOR, Settings, is_sentinel_url

# How Celery's ``result_backend`` names the Sentinel variant of celeriac's backend.
BACKEND = "celeriac.broker.backend:SentinelResultBackend"
DEFAULT_SENTINEL_PORT = 26379


class ReplicationError(redis.ConnectionError):
    """A publish reached the master but not the replicas ``CELERIAC_REDIS_WAIT_REPLICAS`` asks.

    A connection error, so Celery's publish retry and the API's 503 treat it as Redis being
    unavailable: the master may be isolated from its replicas, about to be replaced.
    """


# Writes refused by a node that is not (or no longer) the master to write to: a replica (a
# master demoted while a connection to it stayed open), or a master cut off from its replicas
# (``min-replicas-to-write``: about to be replaced). redis-py turns the first into a connection
# error (reconnect: Sentinel names the master) for a plain command only; inside a script, and
# for the second, the reply is a plain error.
NOT_THE_MASTER = ("READONLY You can't write against a read only replica", "NOREPLICAS")


class DemotedMaster(redis.ConnectionError):
    """A write refused by a replica or an isolated master: reconnect to the master Sentinel
    names now (a connection error, so clients do, and a publish or a submit is retried)."""


def demoted(reply: object) -> bool:
    """Whether ``reply`` is a write refused because the node is not the master to write to,
    from a command or inside a script (see ``NOT_THE_MASTER``)."""
    return isinstance(reply, redis.ResponseError) and any(
        reason in str(reply) for reason in NOT_THE_MASTER
    )


@contextlib.contextmanager
def reconnect_when_refused(disconnect: Callable[[], object]) -> Iterator[None]:
    """Turn a write refused because the node is not the master to write to (``demoted``) into
    ``DemotedMaster``, after ``disconnect`` dropped the connection it came on: the caller's
    retry of connection errors then reaches the master Sentinel names (or waits, with the
    backoff of its retry, until the master has a replica in sync again)."""
    try:
        yield
    except redis.ResponseError as exc:
        if not demoted(exc):
            raise
        disconnect()
        raise DemotedMaster(str(exc)) from None


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


def sentinel_addresses(url: str) -> list[tuple[str, int]]:
    """``(host, port)`` of each sentinel in a ``sentinel://a:26379;sentinel://b:26379`` URL."""
    addresses = []
    for part in url.split(SENTINEL_SEPARATOR):
        parts = urlsplit(part)
        addresses.append((parts.hostname or "localhost", parts.port or DEFAULT_SENTINEL_PORT))
    return addresses


def _db_and_credentials(url: str) -> dict[str, Any]:
    """The database number, user and password of the first sentinel URL (kombu reads those)."""
    parts = urlsplit(url.split(SENTINEL_SEPARATOR, 1)[0])
    path = parts.path.strip("/")
    params: dict[str, Any] = {"db": int(path) if path.isdigit() else 0}
    if parts.password:
        params["password"] = unquote(parts.password)
    if parts.username:
        params["username"] = unquote(parts.username)
    return params


def sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection options for the sentinels themselves: timeouts, and the password if any.

    Always given explicitly: redis-py (and Celery's backend, which passes ``{}``) would
    otherwise connect to the sentinels without a socket timeout.
    """
    timeout = settings.redis_socket_timeout_seconds
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "socket_keepalive": True,
    }
    if settings.redis_sentinel_auth and settings.redis_password:
        options["password"] = settings.redis_password
    return options


def _master_name(settings: Settings) -> str:
    if settings.redis_sentinel_master is None:
        raise ValueError("a sentinel:// URL needs CELERIAC_REDIS_SENTINEL_MASTER")
    return settings.redis_sentinel_master


def client(settings: Settings, url: str, **options: Any) -> redis.Redis:
    """A blocking client for ``url``; through Sentinel when it is a ``sentinel://`` URL.

    ``options`` are redis-py connection options (timeouts, retry, client name ...), applied to
    the connections to the master. ``url`` carries the password (``with_password``).
    """
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    sentinel: Any = redis.sentinel.Sentinel(
        sentinel_addresses(url), sentinel_kwargs=sentinel_kwargs(settings)
    )
    master = sentinel.master_for(
        _master_name(settings), redis_class=redis.Redis, **_db_and_credentials(url), **options
    )
    return cast(redis.Redis, master)


def polling_client(settings: Settings, timeout: float, name: str) -> redis.Redis:
    """A broker client for code that reads Redis in rounds (the exporter's scrape, the
    worker's stall check): it gives up after ``timeout`` and never retries, because the next
    round is the retry and a retry would double the wait."""
    return client(
        settings,
        settings.broker_connection_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        client_name=name,
    )


def async_client(settings: Settings, url: str, **options: Any) -> redis.asyncio.Redis:
    """``client`` for an event loop (``redis.asyncio``)."""
    if not is_sentinel_url(url):
        return redis.asyncio.Redis.from_url(url, **options)
    sentinel: Any = redis.asyncio.sentinel.Sentinel(
        sentinel_addresses(url), sentinel_kwargs=sentinel_kwargs(settings)
    )
    master = sentinel.master_for(
        _master_name(settings),
        redis_class=redis.asyncio.Redis,
        **_db_and_credentials(url),
        **options,
    )
    return cast(redis.asyncio.Redis, master)


# --- kombu: celeriac's channel through Sentinel, publishes WAITed for replicas -----------------


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


_OPTIONS = ("wait_replicas", "wait_timeout_ms")


def _channel_options(*channels: Any) -> tuple[str, ...]:
    """The transport options every one of ``channels`` reads, each once, plus WAIT's."""
    names = [name for channel in channels for name in channel.from_transport_options]
    return tuple(dict.fromkeys([*names, *_OPTIONS]))


@functools.cache
def sentinel_transport(base: type[kombu_redis.Transport]) -> type[kombu_redis.Transport]:
    """``base`` (celeriac's transport or a subclass) connecting through Sentinel."""
    channel = type(
        f"Sentinel{base.Channel.__name__}",
        (ReplicatedChannel, base.Channel, kombu_redis.SentinelChannel),
        {
            "__module__": __name__,
            # celeriac's own options (max_lost_deliveries) as well as Sentinel's.
            "from_transport_options": _channel_options(base.Channel, kombu_redis.SentinelChannel),
        },
    )
    return type(
        f"Sentinel{base.__name__}",
        (base,),
        {
            "__module__": __name__,
            "Channel": channel,
            "default_port": kombu_redis.SentinelTransport.default_port,
        },
    )


@functools.cache
def replicated_transport(base: type[kombu_redis.Transport]) -> type[kombu_redis.Transport]:
    """``base`` with publishes WAITed for replicas, connecting to one Redis URL directly."""
    channel = type(
        f"Replicated{base.Channel.__name__}",
        (ReplicatedChannel, base.Channel),
        {
            "__module__": __name__,
            "from_transport_options": _channel_options(base.Channel),
        },
    )
    return type(f"Replicated{base.__name__}", (base,), {"__module__": __name__, "Channel": channel})


class StayOnFirstURL:
    """kombu's failover "cycle" for a ``sentinel://a;sentinel://b`` URL: never switch URLs.

    kombu reads ``;``-separated URLs as alternate brokers and, on each failed connection
    attempt, switches to the next one, re-parsing it: the transport becomes the URL's scheme,
    kombu's stock ``sentinel`` transport, in place of celeriac's. After a failover every
    component then ran without celeriac's transport: publishes acknowledged without ``WAIT``
    (lost when the master changed again), fetches without the doorbells or dead letters.
    Switching gains nothing with Sentinel (every URL is a sentinel; the channel asks all of them
    for the master), so the cycle is falsy and kombu never switches (``maybe_switch_next``).
    """

    def __init__(self, urls: Iterable[str]) -> None:
        self._first = next(iter(urls))

    def __iter__(self) -> StayOnFirstURL:
        return self

    def __next__(self) -> str:
        return self._first

    def __bool__(self) -> bool:
        return False


def transport_for(settings: Settings, name: str) -> str | type[kombu_redis.Transport]:
    """The transport to configure for ``name`` ("module:Class"): itself, or its variant."""
    if is_sentinel_url(settings.broker_url):
        return sentinel_transport(symbol_by_name(name))
    if settings.redis_wait_replicas > 0:
        return replicated_transport(symbol_by_name(name))
    return name


def configure(settings: Settings, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (``celery_config``'s) with the transport, backend and options for Sentinel.

    Unchanged for a plain Redis URL without ``CELERIAC_REDIS_WAIT_REPLICAS``.
    """
    config = dict(config)
    broker_options = dict(config["broker_transport_options"])
    config["broker_transport"] = transport_for(settings, config["broker_transport"])
    if is_sentinel_url(settings.broker_url):
        config["broker_failover_strategy"] = StayOnFirstURL
    if settings.redis_wait_replicas > 0:
        broker_options["wait_replicas"] = settings.redis_wait_replicas
        broker_options["wait_timeout_ms"] = wait_timeout_ms(settings)
    if settings.redis_sentinel_master is not None:
        sentinel_options = {
            "master_name": settings.redis_sentinel_master,
            "sentinel_kwargs": sentinel_kwargs(settings),
        }
        if is_sentinel_url(settings.broker_url):
            broker_options.update(sentinel_options)
        results_url = settings.result_backend_connection_url
        if is_sentinel_url(results_url):
            config["result_backend"] = f"{BACKEND}+{results_url}"
            config["result_backend_transport_options"] = {
                **config["result_backend_transport_options"],
                **sentinel_options,
            }
    config["broker_transport_options"] = broker_options
    return config
