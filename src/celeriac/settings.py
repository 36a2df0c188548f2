"""Settings every component shares: broker, results, queues, the Celery app to load.

Read once from the environment into an immutable object and passed down.
Component-specific settings live beside their component (``celeriac.worker.settings`` ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

from celeriac.env import ConfigError, Env

DEFAULT_BROKER_URL = "redis://localhost:6379/0"
DEFAULT_APP = "celeriac.demo:app"
DEFAULT_QUEUE = "default"
# Must exceed the longest task, the longest countdown/ETA and the shutdown grace period:
# kombu redelivers any message left unacknowledged for longer than this.
DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 3600
DEFAULT_RESULT_EXPIRES_SECONDS = 86400
# A task whose worker was lost this many times (out of memory, a segfault) is dead-lettered
# instead of delivered again; 0: never.
DEFAULT_MAX_LOST_DELIVERIES = 3
# kombu's Redis transport keeps one list per step; 0 is the highest priority.
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
DEFAULT_REDIS_SOCKET_TIMEOUT_SECONDS = 5.0
DEFAULT_LOG_LEVEL = "INFO"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Task priorities the API and beat schedules accept; 0 is the highest (kombu's Redis order).
MIN_PRIORITY = 0
MAX_PRIORITY = 9
# A queue name is also a Redis key and a metric label; the chart's values.schema.json repeats it.
QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")
# A task id in an API path (tasks and dead letters); Celery's are UUIDs, clients may choose others.
TASK_ID_MAX_LENGTH = 255
# Its first character, then any number of the rest (the API's cursor embeds the same rule).
TASK_ID_FIRST, TASK_ID_REST = "[A-Za-z0-9]", "[A-Za-z0-9._:-]"
TASK_ID_PATTERN = rf"^{TASK_ID_FIRST}{TASK_ID_REST}*$"
# Sentinel: the broker URL lists the sentinels as kombu writes it, `;`-separated.
SENTINEL_SCHEME = "sentinel"
SENTINEL_SEPARATOR = ";"
# A Sentinel master name (`sentinel monitor <name> ...`); the chart's schema repeats it.
SENTINEL_MASTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_REDIS_WAIT_TIMEOUT_SECONDS = 1.0
# kombu's global_keyprefix (CELERIAC_BROKER_KEY_PREFIX), before every broker key: applications
# sharing one Redis database each have their own. The chart's values.schema.json repeats it.
BROKER_KEY_PREFIX = re.compile(r"^[A-Za-z0-9_.:{}/-]{1,100}$")
# Variables that set a Celery setting an app may also set itself (which then wins, unless the
# variable is given): variable -> Celery setting.
CELERY_SETTING_VARIABLES = {
    "RESULT_EXPIRES_SECONDS": "result_expires",
    "TASK_IGNORE_RESULT": "task_ignore_result",
}


@dataclass(frozen=True)
class Settings:
    """Shared settings. ``redis_password`` is kept out of ``repr`` so it never reaches a log."""

    broker_url: str = DEFAULT_BROKER_URL
    result_backend_url: str | None = None
    redis_password: str | None = field(default=None, repr=False)
    app: str = DEFAULT_APP
    # Where tasks go when the caller names no queue.
    default_queue: str = DEFAULT_QUEUE
    # The queues this process works with: a worker consumes exactly these; the API accepts them.
    queues: tuple[str, ...] = (DEFAULT_QUEUE,)
    priority_steps: tuple[int, ...] = DEFAULT_PRIORITY_STEPS
    visibility_timeout_seconds: int = DEFAULT_VISIBILITY_TIMEOUT_SECONDS
    max_lost_deliveries: int = DEFAULT_MAX_LOST_DELIVERIES
    result_expires_seconds: int = DEFAULT_RESULT_EXPIRES_SECONDS
    redis_socket_timeout_seconds: float = DEFAULT_REDIS_SOCKET_TIMEOUT_SECONDS
    log_level: str = DEFAULT_LOG_LEVEL
    # Celery's task_ignore_result: tasks store no result (nor STARTED) unless they ask to.
    task_ignore_result: bool = False
    # Redis Sentinel (a sentinel:// broker URL): the master's name, and whether the sentinels
    # themselves are sent the Redis password (`requirepass` in sentinel.conf).
    redis_sentinel_master: str | None = None
    redis_sentinel_auth: bool = True
    # After each publish, WAIT for this many replicas to acknowledge it (0: do not wait).
    redis_wait_replicas: int = 0
    redis_wait_timeout_seconds: float = DEFAULT_REDIS_WAIT_TIMEOUT_SECONDS
    # kombu's global_keyprefix for the broker's keys ("": none), read by every component.
    broker_key_prefix: str = ""
    # The Celery settings (of celeriac.app.APP_MAY_SET) that a CELERIAC_* variable gave: these
    # win over what the app sets itself.
    celery_from_environment: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = Env(environ)
        default_queue = _queue_names("DEFAULT_QUEUE", (env.string("DEFAULT_QUEUE", DEFAULT_QUEUE),))
        socket_timeout = env.number(
            "REDIS_SOCKET_TIMEOUT_SECONDS", DEFAULT_REDIS_SOCKET_TIMEOUT_SECONDS, minimum=0.1
        )
        broker_url = _redis_url("BROKER_URL", env.string("BROKER_URL", DEFAULT_BROKER_URL))
        result_backend_url = _optional_redis_url(
            "RESULT_BACKEND_URL", env.optional_string("RESULT_BACKEND_URL")
        )
        wait_replicas = env.integer("REDIS_WAIT_REPLICAS", 0, minimum=0)
        return cls(
            broker_url=broker_url,
            result_backend_url=result_backend_url,
            redis_password=env.secret("REDIS_PASSWORD"),
            app=check_app_path("CELERIAC_APP", env.string("APP", DEFAULT_APP)),
            default_queue=default_queue[0],
            queues=_queue_names("QUEUES", env.names("QUEUES", default_queue)),
            priority_steps=_priority_steps(env),
            max_lost_deliveries=env.integer(
                "MAX_LOST_DELIVERIES", DEFAULT_MAX_LOST_DELIVERIES, minimum=0
            ),
            visibility_timeout_seconds=env.integer(
                "VISIBILITY_TIMEOUT_SECONDS", DEFAULT_VISIBILITY_TIMEOUT_SECONDS, minimum=1
            ),
            result_expires_seconds=env.integer(
                "RESULT_EXPIRES_SECONDS", DEFAULT_RESULT_EXPIRES_SECONDS, minimum=1
            ),
            redis_socket_timeout_seconds=socket_timeout,
            log_level=env.choice("LOG_LEVEL", DEFAULT_LOG_LEVEL, LOG_LEVELS),
            task_ignore_result=env.boolean("TASK_IGNORE_RESULT", False),
            redis_sentinel_master=_sentinel_master(env, broker_url, result_backend_url),
            redis_sentinel_auth=env.boolean("REDIS_SENTINEL_AUTH", True),
            redis_wait_replicas=wait_replicas,
            redis_wait_timeout_seconds=_wait_timeout(env, socket_timeout, wait_replicas),
            broker_key_prefix=_broker_key_prefix(env),
            celery_from_environment=frozenset(
                key for variable, key in CELERY_SETTING_VARIABLES.items() if env.raw(variable)
            ),
        )

    @property
    def served_queues(self) -> tuple[str, ...]:
        """The queues plus the default queue (where tasks sent without one go), each once."""
        return union_of_queues(self.queues, (self.default_queue,))

    @property
    def broker_connection_url(self) -> str:
        """The broker URL with the password filled in; for connecting only, never for logs."""
        return with_password(self.broker_url, self.redis_password)

    @property
    def result_backend_connection_url(self) -> str:
        return with_password(self.result_backend_url or self.broker_url, self.redis_password)


def union_of_queues(*lists: Iterable[str]) -> tuple[str, ...]:
    """Every queue of ``lists``, each once, in the order first seen."""
    return tuple(dict.fromkeys(queue for queues in lists for queue in queues))


def _redis_url(name: str, value: str) -> str:
    if is_sentinel_url(value):
        for part in value.split(SENTINEL_SEPARATOR):
            parts = urlsplit(part)
            try:
                port = parts.port
            except ValueError:
                port = None
            if parts.scheme != SENTINEL_SCHEME or not parts.hostname or port is None:
                raise ConfigError(
                    f"CELERIAC_{name}={redact_url(value)!r}: {redact_url(part)!r} is not a "
                    "sentinel address; use sentinel://host1:26379;sentinel://host2:26379"
                )
        return value
    scheme = urlsplit(value).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"CELERIAC_{name}={redact_url(value)!r} is not a Redis URL; "
            "use redis://host:port/db, rediss:// for TLS, or sentinel://host:26379;..."
        )
    return value


def is_sentinel_url(url: str) -> bool:
    """A ``sentinel://`` URL (kombu's: one ``sentinel://host:port`` per sentinel, ``;`` between)."""
    return urlsplit(url.split(SENTINEL_SEPARATOR, 1)[0]).scheme == SENTINEL_SCHEME


def _sentinel_master(env: Env, broker_url: str, result_backend_url: str | None) -> str | None:
    master = env.optional_string("REDIS_SENTINEL_MASTER")
    urls = (broker_url, result_backend_url)
    sentinel_urls = [url for url in urls if url and is_sentinel_url(url)]
    if master is None:
        if sentinel_urls:
            raise ConfigError(
                "CELERIAC_REDIS_SENTINEL_MASTER: not set, but a sentinel:// URL needs the name "
                "of the master the sentinels monitor (e.g. mymaster)"
            )
        return None
    if not sentinel_urls:
        raise ConfigError(
            f"CELERIAC_REDIS_SENTINEL_MASTER={master!r} is set, but neither "
            "CELERIAC_BROKER_URL nor CELERIAC_RESULT_BACKEND_URL is a sentinel:// URL"
        )
    if not SENTINEL_MASTER_NAME.match(master):
        raise ConfigError(
            f"CELERIAC_REDIS_SENTINEL_MASTER={master!r} is not a master name; "
            "use letters, digits, '_', '.' or '-'"
        )
    return master


def _broker_key_prefix(env: Env) -> str:
    prefix = env.optional_string("BROKER_KEY_PREFIX")
    if prefix is None:
        return ""
    if not BROKER_KEY_PREFIX.match(prefix):
        raise ConfigError(
            f"CELERIAC_BROKER_KEY_PREFIX={prefix!r} is not a key prefix; use at most 100 "
            "letters, digits or '_', '.', ':', '{', '}', '/', '-' (e.g. 'billing:')"
        )
    return prefix


def _wait_timeout(env: Env, socket_timeout: float, wait_replicas: int) -> float:
    seconds = env.number(
        "REDIS_WAIT_TIMEOUT_SECONDS", DEFAULT_REDIS_WAIT_TIMEOUT_SECONDS, minimum=0.001
    )
    # Without replicas to wait for no WAIT is sent, so the timeout cannot outlast the socket's:
    # a short socket timeout alone must not be refused over a setting that is not used.
    if wait_replicas > 0 and seconds >= socket_timeout:
        raise ConfigError(
            f"CELERIAC_REDIS_WAIT_TIMEOUT_SECONDS={seconds:g} must be less than "
            f"CELERIAC_REDIS_SOCKET_TIMEOUT_SECONDS ({socket_timeout:g}): the socket would "
            "time out first"
        )
    return seconds


def _optional_redis_url(name: str, value: str | None) -> str | None:
    return None if value is None else _redis_url(name, value)


def _queue_names(name: str, queues: tuple[str, ...]) -> tuple[str, ...]:
    for queue in queues:
        if not QUEUE_NAME.match(queue):
            raise ConfigError(
                f"CELERIAC_{name}: queue name {queue!r} is invalid; "
                "use letters, digits, '_', '.', ':' or '-'"
            )
    return queues


def check_app_path(label: str, path: str) -> str:
    """``path`` if it looks like ``package.module:attribute``; else an error naming ``label``."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{label}={path!r} must look like 'package.module:attribute'")
    return path


def _priority_steps(env: Env) -> tuple[int, ...]:
    raw = env.names("PRIORITY_STEPS", tuple(str(step) for step in DEFAULT_PRIORITY_STEPS))
    try:
        steps = tuple(int(step) for step in raw)
    except ValueError:
        raise ConfigError(
            f"CELERIAC_PRIORITY_STEPS={','.join(raw)!r} must be whole numbers, e.g. 0,3,6,9"
        ) from None
    if steps[0] != 0 or list(steps) != sorted(set(steps)) or steps[-1] > 255:
        raise ConfigError(
            f"CELERIAC_PRIORITY_STEPS={','.join(raw)!r} must start at 0 and rise, at most 255"
        )
    return steps


def with_password(url: str, password: str | None) -> str:
    """Put ``password`` into a Redis URL unless the URL already carries one."""
    if not password:
        return url
    if SENTINEL_SEPARATOR in url:
        urls = url.split(SENTINEL_SEPARATOR)
        return SENTINEL_SEPARATOR.join(with_password(part, password) for part in urls)
    parts = urlsplit(url)
    if parts.password or parts.scheme == "unix":
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe to log."""
    if SENTINEL_SEPARATOR in url:
        return SENTINEL_SEPARATOR.join(redact_url(part) for part in url.split(SENTINEL_SEPARATOR))
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
