"""The Celery app factory and the production-safe configuration every component applies.

``create_app`` makes a new app for your tasks; ``load_app`` imports any app given as
``module:attr`` and applies the same configuration, so the worker, beat, API and exporter
always agree on broker, serialization and queues.

The result backend is celeriac's Redis one, unless the app chose a backend that is not Redis
(django-celery-results' ``django-db``, ``db+postgresql://...``) and ``CELERIAC_RESULT_BACKEND_URL``
is not set: then the app's stays (``app_result_backend``), and the API reads task states through
it. A Redis URL in the app is replaced, so Redis results always live where the settings say.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from celery import Celery
from celery.app.defaults import DEFAULTS as CELERY_DEFAULTS
from celery.backends.redis import RedisBackend
from kombu import Queue

from celeriac import broker
from celeriac.broker import TRANSPORT, backend_url
from celeriac.env import ConfigError
from celeriac.settings import Settings, check_app_path

# Celery settings where celeriac's choice is a default: an app that sets its own value (one that
# differs from Celery's default) keeps it, unless a CELERIAC_* variable gives it
# (Settings.celery_from_environment). Everything else celery_config returns is enforced: the
# broker, the backend, JSON only, the queues, reconnecting for ever.
APP_MAY_SET = frozenset(
    {
        "result_expires",
        "task_ignore_result",
        "task_acks_late",
        "task_reject_on_worker_lost",
        "worker_prefetch_multiplier",
        "task_track_started",
        "result_extended",
        "task_default_priority",
        "worker_send_task_events",
        "task_send_sent_event",
        "worker_cancel_long_running_tasks_on_connection_loss",
    }
)
# How Celery names its Redis result backends: the scheme of the URL, or the alias before a "+".
REDIS_BACKEND_NAMES = frozenset({"redis", "rediss", "sentinel"})
# What configure() set on an app, so configuring it again does not take celeriac's own earlier
# value for one the app set.
_APPLIED = "celeriac_applied_defaults"
# kombu's transport option naming the prefix of every broker key (CELERIAC_BROKER_KEY_PREFIX).
GLOBAL_KEYPREFIX = "global_keyprefix"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings that celeriac enforces; see README "Configuration" for the why of each."""
    redis_options: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout_seconds,
        "socket_connect_timeout": settings.redis_socket_timeout_seconds,
        "socket_keepalive": True,
        "health_check_interval": 10,
        "retry_on_timeout": True,
    }
    # Through Sentinel, or with publishes WAITed for replicas, when configured (README
    # "Redis high availability"); unchanged otherwise.
    return broker.configure(settings, _redis_config(settings, redis_options))


def _redis_config(settings: Settings, redis_options: dict[str, Any]) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_connection_url,
        # kombu's Redis transport plus a per-queue index of held messages, so the exporter
        # counts in-flight tasks in O(log n) instead of reading the whole `unacked` hash.
        "broker_transport": TRANSPORT,
        # Celery's Redis result backend storing each state in one round trip, not two.
        "result_backend": backend_url(settings.result_backend_connection_url),
        "result_expires": settings.result_expires_seconds,
        # Pickle lets anyone who can write to Redis run code in every worker.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        # A task is acknowledged only when it finished, so a killed worker's task is redelivered.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # With acks late, multiplier 1 caps a worker's unacked messages at its pool size:
        # nothing waits inside a busy worker while a new replica idles.
        "worker_prefetch_multiplier": 1,
        # STARTED and extended results (task name, queue, retries) are what the API reports
        # for tasks other producers sent; with celeriac's backend a state is one round trip.
        "task_track_started": True,
        "result_extended": True,
        # A task with ignore_result (or every task, with CELERIAC_TASK_IGNORE_RESULT) stores
        # nothing, STARTED included: no result backend round trip at all.
        "task_ignore_result": settings.task_ignore_result,
        "broker_connection_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_channel_error_retry": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_transport_options": {
            **redis_options,
            "visibility_timeout": settings.visibility_timeout_seconds,
            "max_lost_deliveries": settings.max_lost_deliveries,
            "priority_steps": list(settings.priority_steps),
            "queue_order_strategy": "priority",
            # Applications sharing one Redis database: kombu's prefix before every key.
            **_key_prefix_option(settings),
        },
        "result_backend_transport_options": {
            **redis_options,
            "visibility_timeout": settings.visibility_timeout_seconds,
        },
        "redis_socket_timeout": settings.redis_socket_timeout_seconds,
        "redis_socket_connect_timeout": settings.redis_socket_timeout_seconds,
        "redis_retry_on_timeout": True,
        "redis_backend_health_check_interval": 10,
        "task_default_queue": settings.default_queue,
        "task_default_priority": None,
        "task_queues": [Queue(name, routing_key=name) for name in settings.queues],
        "task_create_missing_queues": True,
        # Events cost broker traffic on every task; celeriac's metrics come from Redis instead.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }


def _key_prefix_option(settings: Settings) -> dict[str, str]:
    prefix = settings.broker_key_prefix
    return {GLOBAL_KEYPREFIX: prefix} if prefix else {}


def configure(app: Celery, settings: Settings) -> Celery:
    """Apply celeriac's configuration to an existing app: enforced settings always, the
    defaults of ``APP_MAY_SET`` where the app left Celery's default or the environment gives
    them (README "Configuration": environment, then app code, then celeriac's defaults)."""
    check_key_prefix(app, settings)
    config = celery_config(settings)
    if settings.result_backend_url is None and app_result_backend(app) is not None:
        del config["result_backend"]  # the app's own, not Redis
    applied: dict[str, Any] = getattr(app, _APPLIED, {})
    for key in APP_MAY_SET - settings.celery_from_environment:
        current = app.conf.get(key)
        if current != CELERY_DEFAULTS[key] and (key not in applied or current != applied[key]):
            del config[key]  # the app's own choice
    app.conf.update(config)
    setattr(
        app,
        _APPLIED,
        {
            **applied,
            **{k: config[k] for k in APP_MAY_SET & config.keys()},
            GLOBAL_KEYPREFIX: settings.broker_key_prefix,
        },
    )
    return app


def check_key_prefix(app: Celery, settings: Settings) -> None:
    """The app's own ``broker_transport_options['global_keyprefix']``, if any, must be
    ``CELERIAC_BROKER_KEY_PREFIX``: the exporter, the API and ``celeriac inspect`` read the
    broker's keys with the setting's prefix, so a prefix only the app knew would hide its
    queues from them (and celeriac's transport options replace the app's)."""
    options = app.conf.get("broker_transport_options") or {}
    own = options.get(GLOBAL_KEYPREFIX) or ""
    # Configured before (a test, a process that loads the app twice): celeriac's own.
    earlier = getattr(app, _APPLIED, {}).get(GLOBAL_KEYPREFIX)
    if own and own not in (settings.broker_key_prefix, earlier):
        raise ConfigError(
            f"the app sets broker_transport_options['{GLOBAL_KEYPREFIX}']={own!r} but "
            f"CELERIAC_BROKER_KEY_PREFIX is {settings.broker_key_prefix!r}: set "
            f"CELERIAC_BROKER_KEY_PREFIX={own!r} (every component reads the broker's keys with "
            "it) and remove it from the app, or make them agree"
        )


def app_result_backend(app: Celery) -> object | None:
    """The app's own result backend when it is not a Redis one (``django-db``, ``db+...``,
    a backend class ...); None for a Redis backend (celeriac's included) or none at all."""
    backend = app.conf.get("result_backend")
    if backend is None:
        return None
    if isinstance(backend, type):
        return None if issubclass(backend, RedisBackend) else backend
    # "redis://h", "celeriac.broker.backend:ResultBackend+redis://h", "redis+socket:///s",
    # "django-db"
    names = str(backend).split("://", 1)[0].split("+")
    return None if REDIS_BACKEND_NAMES.intersection(names) else backend


def create_app(name: str = "celeriac", settings: Settings | None = None) -> Celery:
    """A new Celery app with celeriac's configuration; define your tasks on it."""
    return configure(Celery(name), settings or Settings.from_env())


def load_app(path: str, settings: Settings) -> Celery:
    """Import the Celery app named ``module:attr`` and configure it.

    The current directory is on the import path, as with ``celery -A`` and ``python -m``: the
    ``celeriac`` console script's own path holds only its bin directory, so ``mytasks/`` beside
    you would not be found. Errors name the path and what is wrong with it, not a traceback.
    """
    module_name, _, attr = check_app_path("app", path).partition(":")
    cwd_on_path()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"app {path!r}: cannot import {module_name!r}: {exc}") from None
    app = getattr(module, attr, None)
    if not isinstance(app, Celery):
        raise ConfigError(f"app {path!r}: {module_name}.{attr} is not a Celery app")
    return configure(app, settings)


def cwd_on_path() -> None:
    """Put the current directory first on ``sys.path`` unless it is there already.

    For the whole process, not just the import: tasks may import more of their package later,
    in the worker's pool processes too.
    """
    cwd = os.getcwd()
    if not any(entry in ("", cwd) for entry in sys.path):
        sys.path.insert(0, cwd)
