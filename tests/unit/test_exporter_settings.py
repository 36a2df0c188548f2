"""Exporter settings and the worker-groups file: parsing, defaults, errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from celeriac.env import ConfigError
from celeriac.exporter.settings import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_REDIS_TIMEOUT_SECONDS,
    ExporterSettings,
)
from celeriac.groups import DEFAULT_GROUP, WorkerGroup, load_groups, parse_groups
from celeriac.settings import Settings
from tests.support import documented_default


def test_defaults_one_group_over_the_configured_queues() -> None:
    settings = ExporterSettings.from_env({"CELERIAC_QUEUES": "default,cpu"})
    assert (settings.host, settings.port, settings.redis_timeout_seconds) == (
        DEFAULT_HOST,
        DEFAULT_PORT,
        DEFAULT_REDIS_TIMEOUT_SECONDS,
    )
    assert settings.groups == (WorkerGroup(DEFAULT_GROUP, ("default", "cpu")),)
    assert settings.queues == ("default", "cpu")


def test_the_default_queue_is_measured_even_when_not_listed() -> None:
    # The API accepts tasks without a queue onto the default queue: its backlog must count.
    environ = {"CELERIAC_QUEUES": "cpu", "CELERIAC_DEFAULT_QUEUE": "jobs"}
    settings = ExporterSettings.from_env(environ)
    assert settings.queues == ("cpu", "jobs")
    assert settings.queues == Settings.from_env(environ).served_queues


@pytest.mark.parametrize(
    ("variable", "default"),
    [
        ("CELERIAC_EXPORTER_HOST", DEFAULT_HOST),
        ("CELERIAC_EXPORTER_PORT", str(DEFAULT_PORT)),
        ("CELERIAC_EXPORTER_REDIS_TIMEOUT_SECONDS", f"{DEFAULT_REDIS_TIMEOUT_SECONDS:g}"),
    ],
)
def test_the_exporter_readme_documents_the_defaults(variable: str, default: str) -> None:
    assert documented_default("exporter", variable) == default


def test_the_redis_timeout_stays_under_kedas_metrics_timeout() -> None:
    # Pinned on purpose: KEDA's metrics-api scaler gives up after 3 s by default; a hung Redis
    # must fail the scrape well before that, not KEDA's request.
    assert DEFAULT_REDIS_TIMEOUT_SECONDS < 3


def test_direct_construction_has_no_groups_unless_given() -> None:
    settings = ExporterSettings(common=Settings(queues=("a", "b")))
    assert settings.groups == ()
    assert settings.queues == ("a", "b", "default")  # the default queue is always measured


def test_an_empty_mapping_is_no_groups(tmp_path: Path) -> None:
    # What the chart writes when no worker group is enabled.
    path = tmp_path / "groups.yaml"
    path.write_text("{}\n")
    settings = ExporterSettings.from_env(
        {"CELERIAC_QUEUES": "a", "CELERIAC_WORKER_GROUPS_FILE": str(path)}
    )
    assert settings.groups == ()
    assert settings.queues == ("a", "default")


def test_environment_overrides(tmp_path: Path) -> None:
    groups_file = tmp_path / "groups.yaml"
    groups_file.write_text("default:\n  queues: [default]\ncpu:\n  queues: [cpu, reports]\n")
    settings = ExporterSettings.from_env(
        {
            "CELERIAC_QUEUES": "default,extra",
            "CELERIAC_EXPORTER_HOST": "127.0.0.1",
            "CELERIAC_EXPORTER_PORT": "9999",
            "CELERIAC_EXPORTER_REDIS_TIMEOUT_SECONDS": "0.25",
            "CELERIAC_WORKER_GROUPS_FILE": str(groups_file),
        }
    )
    assert (settings.host, settings.port, settings.redis_timeout_seconds) == (
        "127.0.0.1",
        9999,
        0.25,
    )
    assert settings.groups == (
        WorkerGroup("default", ("default",)),
        WorkerGroup("cpu", ("cpu", "reports")),
    )
    # CELERIAC_QUEUES first, then each group's queues, each once.
    assert settings.queues == ("default", "extra", "cpu", "reports")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"CELERIAC_EXPORTER_PORT": "http"}, "CELERIAC_EXPORTER_PORT='http' is not a whole number"),
        ({"CELERIAC_EXPORTER_PORT": "70000"}, "CELERIAC_EXPORTER_PORT=70000 is not a TCP port"),
        ({"CELERIAC_EXPORTER_PORT": "0"}, "CELERIAC_EXPORTER_PORT=0 is not a TCP port"),
        (
            {"CELERIAC_EXPORTER_REDIS_TIMEOUT_SECONDS": "0"},
            "CELERIAC_EXPORTER_REDIS_TIMEOUT_SECONDS='0' must be at least 0.05",
        ),
        (
            {"CELERIAC_WORKER_GROUPS_FILE": "/nonexistent/groups.yaml"},
            "CELERIAC_WORKER_GROUPS_FILE='/nonexistent/groups.yaml' is not a readable file",
        ),
    ],
)
def test_bad_environment(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ExporterSettings.from_env(environ)


def test_groups_file_with_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "groups.yaml"
    path.write_text("default:\n  queues: [default\n")
    with pytest.raises(ConfigError, match=r"groups.yaml' is not valid YAML at line \d"):
        load_groups(path)


def test_groups_keep_file_order() -> None:
    groups = parse_groups({"b": {"queues": ["x"]}, "a": {"queues": ["y", "x"]}})
    assert [group.name for group in groups] == ["b", "a"]
    assert groups[1].queues == ("y", "x")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "expected a mapping of group name to {queues: [...]}, got nothing"),
        ("", "got str ''"),
        ([{"queues": ["a"]}], "got a list"),
        ({"Bad_Name": {"queues": ["a"]}}, "group name 'Bad_Name' is invalid"),
        ({7: {"queues": ["a"]}}, "group name 7 is invalid"),
        ({"cpu": ["a"]}, "group 'cpu' must be a mapping with 'queues', got a list"),
        ({"cpu": None}, "group 'cpu' must be a mapping with 'queues', got nothing"),
        ({"cpu": {}}, "group 'cpu' is missing the field 'queues'"),
        ({"cpu": {"queues": ["a"], "replicas": 3}}, "group 'cpu' has unknown field(s) replicas"),
        ({"cpu": {"queues": []}}, "group 'cpu' field 'queues' must be a non-empty list"),
        ({"cpu": {"queues": "a,b"}}, "group 'cpu' field 'queues' must be a non-empty list"),
        ({"cpu": {"queues": ["ok", "not ok"]}}, "invalid queue name 'not ok'"),
        ({"cpu": {"queues": ["ok", 5]}}, "invalid queue name 5"),
        ({"cpu": {"queues": ["a", "a"]}}, "group 'cpu' field 'queues' lists a queue twice"),
    ],
)
def test_invalid_groups_name_the_group_and_field(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_groups(data, source="groups.yaml")
    assert str(info.value).startswith("groups.yaml: ")
    assert message in str(info.value)
