"""Everything a request handler needs, built once per app from settings."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from celeriac.api.auth import Tokens
from celeriac.api.settings import ApiSettings
from celeriac.app import celery_config, load_app
from celeriac.env import ConfigError
from celeriac.settings import Settings

# Readiness answers within a kubelet probe's default 1 s timeout.
READY_TIMEOUT_SECONDS = 0.8


@dataclass(frozen=True)
class Services:
    settings: Settings
    api_settings: ApiSettings
    tokens: Tokens
    allowed_tasks: frozenset[str]
    # Queues a task may be sent to: CELERIAC_QUEUES, plus the default queue it falls back to.
    queues: tuple[str, ...]
    # Publishes tasks and revocations; has no result backend (see ``publisher``).
    publisher: Celery
    broker: redis.Redis
    results: redis.Redis
    probes: tuple[redis.Redis, ...]

    def close(self) -> None:
        self.publisher.close()
        for client in {id(c): c for c in (self.broker, self.results, *self.probes)}.values():
            client.close()


def build_services(settings: Settings, api_settings: ApiSettings) -> Services:
    """Load the app's task names, check the allow-list, and prepare (not open) connections."""
    broker_url = settings.broker_connection_url
    results_url = settings.result_backend_connection_url
    timeout = settings.redis_socket_timeout_seconds
    broker = _client(broker_url, timeout)
    results = broker if results_url == broker_url else _client(results_url, timeout)
    probe_timeout = min(READY_TIMEOUT_SECONDS, timeout)
    probes = tuple(_client(url, probe_timeout) for url in dict.fromkeys((broker_url, results_url)))
    return Services(
        settings=settings,
        api_settings=api_settings,
        tokens=Tokens(api_settings.tokens),
        allowed_tasks=allowed_tasks(settings, api_settings),
        queues=tuple(dict.fromkeys((*settings.queues, settings.default_queue))),
        publisher=publisher(settings),
        broker=broker,
        results=results,
        probes=probes,
    )


def allowed_tasks(settings: Settings, api_settings: ApiSettings) -> frozenset[str]:
    """The names the API may submit: the allow-list, each registered by the app, or all of them.

    Celery's own ``celery.*`` tasks (chord unlock, backend cleanup ...) are never offered.
    """
    app = load_app(settings.app, settings)
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
    app.conf.update({**celery_config(settings), "result_backend": "disabled"})
    return app


def _client(url: str, timeout: float) -> redis.Redis:
    # One quick retry replaces a pooled connection that died with a Redis restart; a Redis that
    # is down fails the request in about one timeout instead of hanging.
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
    )
