"""Every Redis client of the project, plain or through Sentinel, and what a refused write means.

beat and its lock, the API and the exporter, the worker's stall and registry checks and
``celeriac inspect`` build their clients here (``client``, ``async_client``, ``polling_client``);
kombu's channels and Celery's result backend build theirs (``celeriac.broker.sentinel``,
``celeriac.broker.backend``). Through Sentinel, each client asks a sentinel for the master's
address whenever it opens a connection (redis-py's ``SentinelConnectionPool``), never once at
start: a client that kept the address it found first writes to a demoted master after a
failover and gets ``READONLY`` errors for as long as it lives. redis-py's sentinel-managed
connections also turn a ``READONLY`` reply from a master that was demoted while the connection
stayed open into a connection error, so the next attempt connects to the new master; inside a
script, and for a master cut off from its replicas, ``reconnect_when_refused`` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, cast

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from celeriac.broker.prefix import client_class
from celeriac.broker.sentinel import (
    db_and_credentials,
    master_name,
    sentinel_addresses,
    sentinel_kwargs,
)
from celeriac.settings import Settings, is_sentinel_url

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


def client(settings: Settings, url: str, *, key_prefix: str = "", **options: Any) -> redis.Redis:
    """A blocking client for ``url``; through Sentinel when it is a ``sentinel://`` URL.

    ``options`` are redis-py connection options (timeouts, retry, client name ...), applied to
    the connections to the master. ``url`` carries the password (``with_password``).
    ``key_prefix``: put before every key (``celeriac.broker.prefix``): a client of the broker's
    keys passes ``settings.broker_key_prefix``, see ``broker_client``.
    """
    cls = client_class(key_prefix)
    if not is_sentinel_url(url):
        return cls.from_url(url, **options)
    sentinel: Any = redis.sentinel.Sentinel(
        sentinel_addresses(url), sentinel_kwargs=sentinel_kwargs(settings)
    )
    master = sentinel.master_for(
        master_name(settings), redis_class=cls, **db_and_credentials(url), **options
    )
    return cast(redis.Redis, master)


def broker_client(settings: Settings, **options: Any) -> redis.Redis:
    """``client`` for the broker's keys: the broker URL, keys with the settings' prefix."""
    return client(
        settings, settings.broker_connection_url, key_prefix=settings.broker_key_prefix, **options
    )


def polling_client(settings: Settings, timeout: float, name: str) -> redis.Redis:
    """A broker client for code that reads Redis in rounds (the exporter's scrape, the
    worker's stall check): it gives up after ``timeout`` and never retries, because the next
    round is the retry and a retry would double the wait."""
    return broker_client(
        settings,
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
        master_name(settings),
        redis_class=redis.asyncio.Redis,
        **db_and_credentials(url),
        **options,
    )
    return cast(redis.asyncio.Redis, master)
