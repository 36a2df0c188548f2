from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery
from celery.backends.redis import RedisBackend
from celery.backends.rpc import RPCBackend

from celeriac.app import app_result_backend, celery_config, configure, load_app
from celeriac.env import ConfigError
from celeriac.settings import Settings, redact_url


def test_defaults_are_production_safe() -> None:
    config = celery_config(Settings.from_env({}))
    assert config["accept_content"] == ["json"]
    assert config["task_serializer"] == "json"
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert config["broker_connection_retry_on_startup"] is True
    assert config["broker_transport_options"]["visibility_timeout"] == 3600
    assert config["broker_transport_options"]["priority_steps"] == [0, 3, 6, 9]
    assert [q.name for q in config["task_queues"]] == ["default"]


def test_password_from_file_reaches_connection_url_but_not_repr(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cr:t/\n")
    settings = Settings.from_env(
        {
            "CELERIAC_BROKER_URL": "redis://redis:6379/0",
            "CELERIAC_REDIS_PASSWORD_FILE": str(secret),
        }
    )
    assert settings.broker_connection_url == "redis://:s3cr%3At%2F@redis:6379/0"
    assert "s3cr" not in repr(settings)
    assert "s3cr" not in redact_url(settings.broker_connection_url)


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"CELERIAC_VISIBILITY_TIMEOUT_SECONDS": "soon"}, "CELERIAC_VISIBILITY_TIMEOUT_SECONDS"),
        ({"CELERIAC_VISIBILITY_TIMEOUT_SECONDS": "0"}, "at least 1"),
        ({"CELERIAC_BROKER_URL": "amqp://x"}, "not a Redis URL"),
        ({"CELERIAC_PRIORITY_STEPS": "3,0"}, "CELERIAC_PRIORITY_STEPS"),
        ({"CELERIAC_QUEUES": "ok,bad queue"}, "'bad queue'"),
        ({"CELERIAC_REDIS_PASSWORD_FILE": "/nonexistent/pw"}, "cannot be read"),
        ({"CELERIAC_REDIS_PASSWORD": "a", "CELERIAC_REDIS_PASSWORD_FILE": "/x"}, "only one"),
        ({"CELERIAC_BROKER_KEY_PREFIX": "a b"}, "CELERIAC_BROKER_KEY_PREFIX='a b'"),
    ],
)
def test_bad_settings_name_the_variable(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        Settings.from_env(environ)


def test_queues_are_exactly_those_configured() -> None:
    # A worker group consumes only its own queues, never the default one by accident.
    settings = Settings.from_env({"CELERIAC_QUEUES": "cpu,io"})
    assert settings.queues == ("cpu", "io")
    assert settings.default_queue == "default"


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("no-colon", "must look like"),
        ("celeriac.nonexistent_module:app", "cannot import"),
        ("celeriac.demo:sleep", "is not a Celery app"),
    ],
)
def test_load_app_errors_name_the_path(path: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_app(path, Settings.from_env({}))


def test_results_use_celeriacs_backend_and_are_stored_by_default() -> None:
    config = celery_config(Settings.from_env({"CELERIAC_BROKER_URL": "redis://r:6379/0"}))
    assert config["result_backend"] == "celeriac.broker.backend:ResultBackend+redis://r:6379/0"
    # The API reports STARTED, the task name and the queue from the stored result.
    assert config["task_track_started"] is True
    assert config["result_extended"] is True
    assert config["task_ignore_result"] is False
    assert config["result_serializer"] == "json"
    assert config["result_accept_content"] == ["json"]


def test_task_ignore_result_is_a_setting() -> None:
    config = celery_config(Settings.from_env({"CELERIAC_TASK_IGNORE_RESULT": "true"}))
    assert config["task_ignore_result"] is True
    # Safety does not depend on results.
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True


def own_app(**conf: object) -> Celery:
    """A user's app that sets some of Celery's settings itself, as in its celery.py."""
    app = Celery("mine", set_as_current=False)
    app.conf.update(conf)
    return app


def test_an_app_keeps_what_it_sets_itself_where_celeriac_only_has_a_default() -> None:
    app = configure(own_app(result_expires=60, worker_prefetch_multiplier=8), Settings())
    assert app.conf.result_expires == 60
    assert app.conf.worker_prefetch_multiplier == 8
    # Left at Celery's default: celeriac's default applies.
    assert app.conf.task_acks_late is True
    assert app.conf.task_track_started is True


def test_the_environment_wins_over_the_app() -> None:
    settings = Settings.from_env(
        {"CELERIAC_RESULT_EXPIRES_SECONDS": "120", "CELERIAC_TASK_IGNORE_RESULT": "true"}
    )
    app = configure(own_app(result_expires=60, task_ignore_result=False), settings)
    assert (app.conf.result_expires, app.conf.task_ignore_result) == (120, True)
    # Without the variables the app's value stands; celeriac's default only where it set none.
    app = configure(own_app(result_expires=60), Settings.from_env({}))
    assert app.conf.result_expires == 60


def test_what_celeriac_enforces_an_app_cannot_change() -> None:
    app = configure(
        own_app(task_serializer="pickle", accept_content=["pickle"], broker_url="redis://x:1/0"),
        Settings(broker_url="redis://127.0.0.1:6390/0"),
    )
    assert app.conf.task_serializer == "json"
    assert app.conf.accept_content == ["json"]
    assert app.conf.broker_url == "redis://127.0.0.1:6390/0"


def test_configuring_again_replaces_celeriacs_own_earlier_defaults_only() -> None:
    app = configure(own_app(worker_prefetch_multiplier=8), Settings.from_env({}))
    assert app.conf.result_expires == 86400
    configure(app, Settings.from_env({"CELERIAC_RESULT_EXPIRES_SECONDS": "100"}))
    assert app.conf.result_expires == 100
    configure(app, Settings.from_env({}))
    assert app.conf.result_expires == 86400  # 100 was celeriac's, not the app's
    assert app.conf.worker_prefetch_multiplier == 8  # the app's, every time


@pytest.mark.parametrize("backend", ["django-db", "db+postgresql://db/results", "rpc://"])
def test_an_app_keeps_its_own_result_backend_when_it_is_not_redis(backend: str) -> None:
    app = configure(own_app(result_backend=backend), Settings.from_env({}))
    assert app.conf.result_backend == backend
    configure(app, Settings.from_env({}))  # as each component does again
    assert app.conf.result_backend == backend
    # CELERIAC_RESULT_BACKEND_URL wins, as every CELERIAC_* variable does.
    settings = Settings.from_env({"CELERIAC_RESULT_BACKEND_URL": "redis://127.0.0.1:6390/1"})
    configure(app, settings)
    assert (
        app.conf.result_backend == "celeriac.broker.backend:ResultBackend+redis://127.0.0.1:6390/1"
    )


@pytest.mark.parametrize("backend", [None, "redis://elsewhere:6379/1", "rediss://x/0"])
def test_a_redis_result_backend_is_always_celeriacs(backend: str | None) -> None:
    settings = Settings(broker_url="redis://127.0.0.1:6390/0")
    app = configure(own_app(result_backend=backend), settings)
    assert (
        app.conf.result_backend == "celeriac.broker.backend:ResultBackend+redis://127.0.0.1:6390/0"
    )
    assert app_result_backend(app) is None


def test_a_backend_class_counts_as_redis_when_it_is_one() -> None:
    assert app_result_backend(own_app(result_backend=RedisBackend)) is None
    assert app_result_backend(own_app(result_backend=RPCBackend)) is RPCBackend


def test_the_broker_key_prefix_becomes_kombus_global_keyprefix() -> None:
    assert "global_keyprefix" not in celery_config(Settings())["broker_transport_options"]
    settings = Settings.from_env({"CELERIAC_BROKER_KEY_PREFIX": "billing:"})
    assert settings.broker_key_prefix == "billing:"
    options = celery_config(settings)["broker_transport_options"]
    assert options["global_keyprefix"] == "billing:"


def test_an_apps_own_global_keyprefix_must_be_the_settings_one() -> None:
    app = Celery("t", set_as_current=False)
    app.conf.broker_transport_options = {"global_keyprefix": "billing:"}
    with pytest.raises(ConfigError, match="CELERIAC_BROKER_KEY_PREFIX='billing:'"):
        configure(app, Settings())
    with pytest.raises(ConfigError, match="'reports:'"):
        configure(app, Settings(broker_key_prefix="reports:"))
    configure(app, Settings(broker_key_prefix="billing:"))
    # Configured again (celeriac's own options now): still the same prefix.
    configure(app, Settings(broker_key_prefix="billing:"))
    assert app.conf.broker_transport_options["global_keyprefix"] == "billing:"
    # celeriac's own earlier prefix is not the app's: configured with another, it is replaced.
    configure(app, Settings())
    assert "global_keyprefix" not in app.conf.broker_transport_options
