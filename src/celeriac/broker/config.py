"""The broker's part of Celery's configuration: which transport and result backend, with what
options, for a plain Redis URL, for Sentinel and with ``WAIT`` for replicas.

The backends are named by path, not imported: configuring (the exporter, ``celeriac inspect``)
never pays for importing Celery's backends.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.imports import symbol_by_name

from celeriac.broker.replicas import replicated_transport, wait_timeout_ms
from celeriac.broker.sentinel import StayOnFirstURL, sentinel_kwargs, sentinel_transport
from celeriac.settings import Settings, is_sentinel_url

# How Celery's ``result_backend`` names celeriac's backends (celeriac.broker.backend):
# "<class>+redis://...".
BACKEND = "celeriac.broker.backend:ResultBackend"
SENTINEL_BACKEND = "celeriac.broker.backend:SentinelResultBackend"


def backend_url(url: str) -> str:
    """The ``result_backend`` value selecting celeriac's backend for a ``redis://`` (or other)
    URL."""
    return f"{BACKEND}+{url}"


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
            config["result_backend"] = f"{SENTINEL_BACKEND}+{results_url}"
            config["result_backend_transport_options"] = {
                **config["result_backend_transport_options"],
                **sentinel_options,
            }
    config["broker_transport_options"] = broker_options
    return config
