"""Everything a request handler needs, built once per app from settings."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
import redis.asyncio
from celery import Celery
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

import celeriac.broker
from celeriac.api import publish
from celeriac.api.app_results import AppResults
from celeriac.api.auth import Tokens
from celeriac.api.batching import TransactionQueue
from celeriac.api.settings import ApiSettings
from celeriac.app import app_result_backend, celery_config, load_app
from celeriac.broker import transport_for, wait_timeout_ms
from celeriac.env import ConfigError
from celeriac.settings import Settings

# Readiness answers within a kubelet probe's default 1 s timeout.
READY_TIMEOUT_SECONDS = 0.8


@dataclass(frozen=True)
class Services:
    api_settings: ApiSettings
    tokens: Tokens
    allowed_tasks: frozenset[str]
    # Queues a task may be sent to: CELERIAC_QUEUES, plus the default queue it falls back to.
    queues: tuple[str, ...]
    # Publishes tasks and revocations; has no result backend (see ``publisher``).
    publisher: Celery
    # Builds task messages with ``publisher``; the request writes them (see ``publish``).
    sender: publish.Publisher
    # Blocking clients, used from the thread pool: backlog reads and readiness probes.
    broker: redis.Redis
    results: redis.Redis
    probes: tuple[redis.Redis, ...]
    # Set when the app keeps results outside Redis (django-db ...): task states are read
    # through its backend, and what needs results in Redis (listing) is refused.
    app_results: AppResults | None = None
    # Clients for the event loop, opened by ``open`` in the app's lifespan: their connections
    # belong to the loop that made them.
    aio: AsyncClients = field(default_factory=lambda: AsyncClients())

    @property
    def settings(self) -> Settings:
        """The shared settings (broker, results, queues): ``api_settings.common``."""
        return self.api_settings.common

    @property
    def results_on_broker(self) -> bool:
        """Results live in the broker's Redis: a record and a message go in one transaction."""
        return self.settings.result_backend_connection_url == self.settings.broker_connection_url

    def open(self) -> None:
        timeout = self.settings.redis_socket_timeout_seconds
        broker = _async_client(self.settings, self.settings.broker_connection_url, timeout)
        results = (
            broker
            if self.results_on_broker
            else _async_client(self.settings, self.settings.result_backend_connection_url, timeout)
        )
        self.aio.broker, self.aio.results = broker, results
        # Every write of a submission waits for the replicas the settings ask, as Celery's
        # publishes do (``celeriac.broker.replicas``): a 202 survives a failover.
        wait = {
            "wait_replicas": self.settings.redis_wait_replicas,
            "wait_timeout_ms": wait_timeout_ms(self.settings),
        }
        self.aio.writes = TransactionQueue(broker, **wait)
        self.aio.results_writes = (
            self.aio.writes if results is broker else TransactionQueue(results, **wait)
        )

    async def aclose(self) -> None:
        await self.aio.close()

    def close(self) -> None:
        self.sender.close()
        self.publisher.close()
        for client in {id(c): c for c in (self.broker, self.results, *self.probes)}.values():
            client.close()


class AsyncClients:
    """The event loop's Redis clients (None outside the app's lifespan)."""

    def __init__(self) -> None:
        self._broker: redis.asyncio.Redis | None = None
        self._results: redis.asyncio.Redis | None = None
        # Submissions, coalesced into one MULTI/EXEC per round trip (``batching``); one queue
        # for both when results live in the broker's Redis.
        self._writes: TransactionQueue | None = None
        self._results_writes: TransactionQueue | None = None

    @property
    def broker(self) -> redis.asyncio.Redis:
        if self._broker is None:
            raise RuntimeError("the API's Redis clients are opened by the app's lifespan")
        return self._broker

    @broker.setter
    def broker(self, client: redis.asyncio.Redis) -> None:
        self._broker = client

    @property
    def results(self) -> redis.asyncio.Redis:
        if self._results is None:
            raise RuntimeError("the API's Redis clients are opened by the app's lifespan")
        return self._results

    @results.setter
    def results(self, client: redis.asyncio.Redis) -> None:
        self._results = client

    @property
    def writes(self) -> TransactionQueue:
        """Coalesced transactions on the broker's Redis."""
        if self._writes is None:
            raise RuntimeError("the API's Redis clients are opened by the app's lifespan")
        return self._writes

    @writes.setter
    def writes(self, queue: TransactionQueue) -> None:
        self._writes = queue

    @property
    def results_writes(self) -> TransactionQueue:
        """Coalesced transactions on the results' Redis (``writes`` when it is the same)."""
        if self._results_writes is None:
            raise RuntimeError("the API's Redis clients are opened by the app's lifespan")
        return self._results_writes

    @results_writes.setter
    def results_writes(self, queue: TransactionQueue) -> None:
        self._results_writes = queue

    async def close(self) -> None:
        clients = {id(c): c for c in (self._broker, self._results) if c is not None}
        self._broker = self._results = None
        self._writes = self._results_writes = None
        for client in clients.values():
            await client.aclose()


def build_services(api_settings: ApiSettings) -> Services:
    """Load the app's task names, check the allow-list, and prepare (not open) connections."""
    settings = api_settings.common
    broker_url = settings.broker_connection_url
    results_url = settings.result_backend_connection_url
    timeout = settings.redis_socket_timeout_seconds
    broker = _client(settings, broker_url, timeout, key_prefix=settings.broker_key_prefix)
    # Celery's result keys have no prefix: with one, results need a client of their own.
    shared = results_url == broker_url and not settings.broker_key_prefix
    results = broker if shared else _client(settings, results_url, timeout)
    probe_timeout = min(READY_TIMEOUT_SECONDS, timeout)
    probes = tuple(
        _client(settings, url, probe_timeout) for url in dict.fromkeys((broker_url, results_url))
    )
    queues = settings.served_queues
    sender_app = publisher(settings)
    app = load_app(settings.app, settings)
    return Services(
        api_settings=api_settings,
        tokens=Tokens(api_settings.tokens),
        allowed_tasks=allowed_tasks(api_settings, app),
        queues=queues,
        publisher=sender_app,
        sender=publish.Publisher(sender_app, queues),
        broker=broker,
        results=results,
        probes=probes,
        app_results=_app_results(app),
    )


def _app_results(app: Celery) -> AppResults | None:
    backend = app_result_backend(app)
    return None if backend is None else AppResults(app, str(backend))


def allowed_tasks(api_settings: ApiSettings, app: Celery | None = None) -> frozenset[str]:
    """The names the API may submit: the allow-list, each registered by the app (loaded from
    ``api_settings`` unless given), or all of them.

    Celery's own ``celery.*`` tasks (chord unlock, backend cleanup ...) are never offered.
    """
    settings = api_settings.common
    app = app if app is not None else load_app(settings.app, settings)
    # Sends Celery's import_modules signal, as a worker does at start: Django is set up and
    # autodiscover_tasks() imports each app's tasks.
    app.loader.import_default_modules()
    registered = {name for name in app.tasks if not name.startswith("celery.")}
    if api_settings.allowed_tasks is None:
        if not registered:
            raise ConfigError(
                f"app {settings.app!r} registers no tasks, so the API would accept nothing; "
                "import your task modules in the app module"
            )
        return frozenset(registered)
    unknown = [name for name in api_settings.allowed_tasks if name not in registered]
    if unknown:
        raise ConfigError(
            f"CELERIAC_API_ALLOWED_TASKS names {', '.join(map(repr, unknown))}, not registered "
            f"by app {settings.app!r}; registered: {', '.join(sorted(registered)) or 'none'}"
        )
    return frozenset(api_settings.allowed_tasks)


def publisher(settings: Settings) -> Celery:
    """A Celery app that only sends: same broker and serialization as the workers.

    It has no result backend on purpose: Celery's Redis backend subscribes to every task it
    sends, waiting for a result the API never awaits (a leak in a long-running process, and a
    hang when Redis is away). The API reads results from Redis itself (``tracking``).
    """
    app = Celery("celeriac-api", set_as_current=False)
    # The celeriac transport, able to hand its publish commands over to the event loop.
    app.conf.update(
        {
            **celery_config(settings),
            "result_backend": "disabled",
            "broker_transport": transport_for(settings, publish.TRANSPORT),
        }
    )
    return app


def _client(settings: Settings, url: str, timeout: float, key_prefix: str = "") -> redis.Redis:
    # One quick retry replaces a pooled connection that died with a Redis restart; a Redis that
    # is down fails the request in about one timeout instead of hanging. Through Sentinel when
    # the URL is sentinel:// (the master is looked up on each new connection).
    return celeriac.broker.client(
        settings,
        url,
        key_prefix=key_prefix,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
    )


def _async_client(settings: Settings, url: str, timeout: float) -> redis.asyncio.Redis:
    # The same bounds as ``_client``: one quick retry, then the request fails (503).
    return celeriac.broker.async_client(
        settings,
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=10,
        retry=AsyncRetry(ExponentialBackoff(cap=0.2, base=0.05), 1),
    )
