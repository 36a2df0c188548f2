"""Redis high availability: every component reaches the master through Redis Sentinel.

``CELERIAC_BROKER_URL=sentinel://host1:26379;sentinel://host2:26379`` (kombu's form) names the
sentinels, ``CELERIAC_REDIS_SENTINEL_MASTER`` the master they monitor. Here: where the
sentinels are and how to talk to them (every client of ``celeriac.broker.clients`` asks them
for the master on each new connection), and, per component:

- worker and Celery producers: kombu's ``SentinelChannel`` joined to celeriac's channel (the
  atomic fetch, in-flight index and dead letters of ``celeriac.broker.transport``, and the
  ``WAIT`` of ``celeriac.broker.replicas``) by ``sentinel_transport``, which works for any
  subclass of celeriac's transport (the API's publisher has its own);
- the result backend: Celery's ``SentinelBackend`` with celeriac's one-round-trip store
  (``celeriac.broker.backend.SentinelResultBackend``);
- beat and its lock, the API and the exporter: plain redis-py clients from ``master_for``
  (``celeriac.broker.clients``).

The Redis password (``CELERIAC_REDIS_PASSWORD``) authenticates to Redis and, unless
``CELERIAC_REDIS_SENTINEL_AUTH`` is off, to the sentinels too (``requirepass`` in
sentinel.conf, as the chart configures them).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from kombu.transport import redis as kombu_redis

from celeriac.broker.replicas import ReplicatedChannel, channel_options
from celeriac.settings import SENTINEL_SEPARATOR, Settings

DEFAULT_SENTINEL_PORT = 26379


def sentinel_addresses(url: str) -> list[tuple[str, int]]:
    """``(host, port)`` of each sentinel in a ``sentinel://a:26379;sentinel://b:26379`` URL."""
    addresses = []
    for part in url.split(SENTINEL_SEPARATOR):
        parts = urlsplit(part)
        addresses.append((parts.hostname or "localhost", parts.port or DEFAULT_SENTINEL_PORT))
    return addresses


def db_and_credentials(url: str) -> dict[str, Any]:
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


def master_name(settings: Settings) -> str:
    if settings.redis_sentinel_master is None:
        raise ValueError("a sentinel:// URL needs CELERIAC_REDIS_SENTINEL_MASTER")
    return settings.redis_sentinel_master


@functools.cache
def sentinel_transport(base: type[kombu_redis.Transport]) -> type[kombu_redis.Transport]:
    """``base`` (celeriac's transport or a subclass) connecting through Sentinel."""
    channel = type(
        f"Sentinel{base.Channel.__name__}",
        (ReplicatedChannel, base.Channel, kombu_redis.SentinelChannel),
        {
            "__module__": __name__,
            # celeriac's own options (max_lost_deliveries) as well as Sentinel's.
            "from_transport_options": channel_options(base.Channel, kombu_redis.SentinelChannel),
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
