"""Run an inspection: read the report from the broker's Redis and render it."""

from __future__ import annotations

from urllib.parse import urlsplit

import redis

from celeriac import broker
from celeriac.inspection.render import to_json, to_table
from celeriac.inspection.report import Report, read_report
from celeriac.inspection.settings import InspectionSettings
from celeriac.local.plan import ENV_FILE
from celeriac.local.settings import DEFAULT_STATE_DIR
from celeriac.settings import SENTINEL_SEPARATOR, Settings, redact_url


def run_inspection(settings: InspectionSettings, *, as_json: bool) -> str:
    """The report as tables, or JSON; ``RedisUnavailable`` naming Redis when it cannot be read."""
    report = read_inspection(settings)
    return to_json(report) if as_json else to_table(report)


def read_inspection(settings: InspectionSettings) -> Report:
    """Read the report from the broker's Redis; an error naming it when Redis cannot be read."""
    timeout = settings.common.redis_socket_timeout_seconds
    # Through Sentinel when the broker URL names sentinels, as every component connects.
    client = broker.polling_client(settings.common, timeout, "celeriac-inspect")
    try:
        return read_report(client, settings.queues, settings.groups, settings.common.priority_steps)
    except (redis.RedisError, OSError) as exc:
        where = redact_url(settings.common.broker_url)
        reason = (
            password_problem(settings.common, exc)
            if isinstance(exc, redis.AuthenticationError)
            else str(exc)
        )
        raise RedisUnavailable(f"cannot read Redis at {where}: {reason}") from None
    finally:
        client.close()


def password_problem(settings: Settings, exc: redis.AuthenticationError) -> str:
    """What to do about Redis refusing us, instead of its own words: without a password redis-py's
    first command (``HELLO``) fails with "HELLO must be called with the client already
    authenticated", which does not say that a password is what is missing."""
    where = (
        f"the local stack of `celeriac up` writes it into {DEFAULT_STATE_DIR / ENV_FILE}; in "
        "Kubernetes it is key redis-password of the chart's Secret <fullname>-redis, or the "
        "Secret named by redis.auth.existingSecret or externalRedis.existingSecret"
    )
    if urlsplit(settings.broker_connection_url.split(SENTINEL_SEPARATOR, 1)[0]).password is None:
        return (
            "Redis requires a password and none was given: set CELERIAC_REDIS_PASSWORD or "
            f"CELERIAC_REDIS_PASSWORD_FILE; {where}"
        )
    return f"Redis refused the password ({exc}); check CELERIAC_REDIS_PASSWORD: {where}"


class RedisUnavailable(Exception):
    """Redis could not be read; the message names it (without its password)."""
