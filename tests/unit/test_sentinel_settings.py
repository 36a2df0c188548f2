"""Sentinel settings: the URL, the master's name, the sentinels' password, WAIT; and what
``celery_config`` makes of them. No network (the live failover is tests/integration)."""

from __future__ import annotations

import pytest
from kombu.utils.imports import symbol_by_name

from celeriac.app import celery_config, create_app
from celeriac.broker import TRANSPORT, sentinel
from celeriac.broker.config import SENTINEL_BACKEND
from celeriac.broker.replicas import ReplicatedChannel
from celeriac.env import ConfigError
from celeriac.settings import Settings, redact_url

URL = "sentinel://s1:26379;sentinel://s2:26380/2"
BASE = {"CELERIAC_BROKER_URL": URL, "CELERIAC_REDIS_SENTINEL_MASTER": "mymaster"}


def test_sentinel_url_master_and_password() -> None:
    settings = Settings.from_env(BASE | {"CELERIAC_REDIS_PASSWORD": "p@ss"})
    assert settings.redis_sentinel_master == "mymaster"
    url = settings.broker_connection_url
    assert url == "sentinel://:p%40ss@s1:26379;sentinel://:p%40ss@s2:26380/2"
    assert redact_url(url) == "sentinel://:***@s1:26379;sentinel://:***@s2:26380/2"
    assert sentinel.sentinel_addresses(url) == [("s1", 26379), ("s2", 26380)]
    assert sentinel.sentinel_kwargs(settings)["password"] == "p@ss"


def test_sentinels_without_a_password() -> None:
    settings = Settings.from_env(
        BASE | {"CELERIAC_REDIS_PASSWORD": "p", "CELERIAC_REDIS_SENTINEL_AUTH": "false"}
    )
    options = sentinel.sentinel_kwargs(settings)
    assert "password" not in options
    # Always a timeout: redis-py would otherwise connect to the sentinels without one.
    assert options["socket_timeout"] == settings.redis_socket_timeout_seconds


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"CELERIAC_BROKER_URL": URL}, "CELERIAC_REDIS_SENTINEL_MASTER"),
        (BASE | {"CELERIAC_REDIS_SENTINEL_MASTER": "a b"}, "CELERIAC_REDIS_SENTINEL_MASTER"),
        ({"CELERIAC_REDIS_SENTINEL_MASTER": "m"}, "CELERIAC_REDIS_SENTINEL_MASTER"),
        (BASE | {"CELERIAC_BROKER_URL": "sentinel://s1;sentinel://s2:1"}, "CELERIAC_BROKER_URL"),
        (BASE | {"CELERIAC_BROKER_URL": f"{URL};redis://r:6379"}, "CELERIAC_BROKER_URL"),
        (
            BASE
            | {"CELERIAC_REDIS_WAIT_REPLICAS": "1", "CELERIAC_REDIS_WAIT_TIMEOUT_SECONDS": "5"},
            "CELERIAC_REDIS_WAIT_TIMEOUT",
        ),
        (
            BASE
            | {"CELERIAC_REDIS_WAIT_REPLICAS": "1", "CELERIAC_REDIS_SOCKET_TIMEOUT_SECONDS": "1"},
            "CELERIAC_REDIS_WAIT_TIMEOUT",
        ),
        (BASE | {"CELERIAC_REDIS_WAIT_REPLICAS": "x"}, "CELERIAC_REDIS_WAIT_REPLICAS"),
    ],
)
def test_bad_values_name_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(environ)


@pytest.mark.parametrize("replicas", [None, "0"])
def test_wait_timeout_is_not_checked_without_replicas_to_wait_for(replicas: str | None) -> None:
    """No WAIT is sent, so a socket timeout shorter than the (unused) WAIT timeout is fine."""
    environ = {"CELERIAC_REDIS_SOCKET_TIMEOUT_SECONDS": "1"}
    if replicas is not None:
        environ["CELERIAC_REDIS_WAIT_REPLICAS"] = replicas
    settings = Settings.from_env(environ)
    assert settings.redis_socket_timeout_seconds == 1
    assert settings.redis_wait_replicas == 0


def test_celery_config_through_sentinel() -> None:
    settings = Settings.from_env(
        BASE | {"CELERIAC_REDIS_PASSWORD": "p", "CELERIAC_REDIS_WAIT_REPLICAS": "1"}
    )
    config = celery_config(settings)
    transport = config["broker_transport"]
    assert transport is sentinel.sentinel_transport(symbol_by_name(TRANSPORT))
    channel = transport.Channel
    assert "master_name" in channel.from_transport_options
    assert "wait_replicas" in channel.from_transport_options
    options = config["broker_transport_options"]
    assert options["master_name"] == "mymaster"
    assert options["wait_replicas"] == 1
    assert options["wait_timeout_ms"] == 1000
    assert options["sentinel_kwargs"]["password"] == "p"
    assert config["result_backend"].startswith(f"{SENTINEL_BACKEND}+sentinel://:p@s1:26379;")
    assert config["result_backend_transport_options"]["master_name"] == "mymaster"


def test_plain_redis_is_unchanged() -> None:
    config = celery_config(Settings.from_env({"CELERIAC_BROKER_URL": "redis://r:6379/0"}))
    assert config["broker_transport"] == TRANSPORT
    assert "master_name" not in config["broker_transport_options"]
    assert "wait_replicas" not in config["broker_transport_options"]


def test_a_connection_keeps_celeriacs_transport_where_kombu_would_switch_to_the_next_url() -> None:
    """kombu reads the ``;``-separated sentinels as alternate brokers and, after a failed
    connection attempt, switches to the next one, re-parsing the transport from its scheme: the
    stock ``sentinel`` transport, without celeriac's WAIT or fetch script (publishes were lost
    after a failover). celeriac's connections never switch."""
    settings = Settings.from_env(BASE | {"CELERIAC_REDIS_WAIT_REPLICAS": "1"})
    app = create_app("test-sentinel-switch", settings)
    try:
        with app.connection_for_write() as connection:
            transport = connection.transport_cls
            assert transport is not None
            assert not isinstance(transport, str)
            connection.maybe_switch_next()
            assert connection.transport_cls is transport
            assert issubclass(connection.transport.Channel, ReplicatedChannel)
            # Every sentinel stays known to the channel (kombu's SentinelChannel asks them all).
            assert len(connection.alt) == 2
    finally:
        app.close()


@pytest.mark.parametrize(
    "environ",
    [
        BASE | {"CELERIAC_REDIS_WAIT_REPLICAS": "1"},
        {"CELERIAC_BROKER_URL": "redis://r:6379/0", "CELERIAC_REDIS_WAIT_REPLICAS": "1"},
    ],
    ids=["sentinel", "replicated"],
)
def test_the_channel_reads_celeriacs_own_options_through_sentinel_and_wait(
    environ: dict[str, str],
) -> None:
    """kombu sets a channel attribute only for the names in ``from_transport_options``: one
    missing there is silently the class default (CELERIAC_MAX_LOST_DELIVERIES was ignored
    through Sentinel)."""
    config = celery_config(Settings.from_env(environ | {"CELERIAC_MAX_LOST_DELIVERIES": "7"}))
    assert config["broker_transport_options"]["max_lost_deliveries"] == 7
    channel = config["broker_transport"].Channel
    celeriac_channel = symbol_by_name(TRANSPORT).Channel
    assert set(celeriac_channel.from_transport_options) <= set(channel.from_transport_options)
    assert "wait_replicas" in channel.from_transport_options
    assert len(set(channel.from_transport_options)) == len(channel.from_transport_options)
