"""Facts the chart repeats from the Python code (STYLE.md, "One source for each fact").

Each test renders the chart (or reads its schema and helpers) and compares with the Python
constant, so a rename on either side fails here instead of silently breaking KEDA, a dashboard
or an install.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import yaml

from celeriac.api.settings import (
    DEFAULT_IDEMPOTENCY_WINDOW_SECONDS,
    DEFAULT_RECENT_TASKS,
    MAX_RECENT_TASKS,
    ApiSettings,
)
from celeriac.api.settings import DEFAULT_PORT as API_PORT
from celeriac.beat.settings import DEFAULT_HEARTBEAT_FILE as BEAT_HEARTBEAT_FILE
from celeriac.exporter.collector import GROUP_BACKLOG, GROUP_OLDEST_AGE, create_registry
from celeriac.exporter.settings import DEFAULT_PORT as EXPORTER_PORT
from celeriac.exporter.settings import ExporterSettings
from celeriac.groups import GROUP_NAME, WorkerGroup, all_queues, parse_groups
from celeriac.settings import (
    BROKER_KEY_PREFIX,
    MAX_PRIORITY,
    MIN_PRIORITY,
    QUEUE_NAME,
    SENTINEL_MASTER_NAME,
)
from celeriac.testing import HA_NODE_CONFIG
from celeriac.worker.settings import DEFAULT_HEARTBEAT_FILE as WORKER_HEARTBEAT_FILE
from celeriac.worker.settings import DEFAULT_METRICS_PORT as WORKER_METRICS_PORT
from celeriac.worker.settings import DEFAULT_READY_FILE as WORKER_READY_FILE
from celeriac.worker.settings import DEFAULT_UNREGISTERED_TASK_SECONDS
from celeriac.worker.sizing import pool_size
from tests.chart.matrix import MATRIX
from tests.chart.render import CHART_DIR, Obj, Rendered, containers, env_of, pod_spec, render
from tests.chart.served import served_series
from tests.cluster.infra.redis_pods import MASTER_NAME, REDIS_PODS, REDIS_PORT, SENTINEL_PORT
from tests.support import variables_in_code

pytestmark = pytest.mark.chart

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))
HELPERS = (CHART_DIR / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
# What a metrics-api trigger's valueLocation selects: name{label="value"}.
SELECTOR = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<label>\w+)="(?P<value>[^"]*)"\}$')


def workloads_of(rendered: Rendered, component: str) -> list[Obj]:
    return [
        w
        for w in rendered.workloads()
        if w["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]


def port_named(container: Obj, name: str) -> int:
    (port,) = [p["containerPort"] for p in container.get("ports", []) if p["name"] == name]
    return int(port)


def rendered_groups(rendered: Rendered) -> tuple[WorkerGroup, ...]:
    """The worker groups the chart hands the exporter, read by the exporter's own parser."""
    config = rendered.get("ConfigMap", "celeriac-worker-groups")
    return parse_groups(yaml.safe_load(config["data"]["worker-groups.yaml"]))


# --- ports -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_ports_are_the_components_defaults(renders: dict[str, Rendered], case: str) -> None:
    rendered = renders[case]
    for workload in workloads_of(rendered, "exporter"):
        (container,) = pod_spec(workload)["containers"]
        assert port_named(container, "metrics") == EXPORTER_PORT
        assert env_of(container)["CELERIAC_EXPORTER_PORT"]["value"] == str(EXPORTER_PORT)
    for workload in workloads_of(rendered, "api"):
        (container,) = pod_spec(workload)["containers"]
        assert port_named(container, "http") == API_PORT
        assert env_of(container)["CELERIAC_API_PORT"]["value"] == str(API_PORT)
    for workload in workloads_of(rendered, "worker"):
        (container,) = pod_spec(workload)["containers"]
        value = env_of(container)["CELERIAC_WORKER_METRICS_PORT"]["value"]
        if value != "0":  # metrics off
            assert value == str(WORKER_METRICS_PORT)
            assert port_named(container, "metrics") == WORKER_METRICS_PORT
    expected = {"exporter": EXPORTER_PORT, "worker": WORKER_METRICS_PORT}
    for service in rendered.of_kind("Service"):
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        if component in expected:
            assert [p["port"] for p in service["spec"]["ports"]] == [expected[component]]
    for scaled in rendered.of_kind("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            assert urlsplit(trigger["metadata"]["url"]).port == EXPORTER_PORT


def test_the_helm_test_and_notes_reach_the_exporter_on_its_port(defaults: Rendered) -> None:
    (test_pod,) = defaults.of_kind("Pod")
    assert f"celeriac-exporter:{EXPORTER_PORT}/metrics" in yaml.safe_dump(test_pod)
    assert f"{EXPORTER_PORT}:{EXPORTER_PORT}" in defaults.notes
    assert GROUP_BACKLOG in defaults.notes


# --- metrics -----------------------------------------------------------------------------------


@pytest.fixture
def exporter_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.mark.integration
@pytest.mark.parametrize("case", ["defaults", "multiple-groups", "scale-to-zero"])
def test_keda_selects_a_series_the_exporter_serves(
    renders: dict[str, Rendered], case: str, exporter_client: redis.Redis
) -> None:
    """The exporter, given the chart's groups file, scraped against a real (empty) Redis."""
    rendered = renders[case]
    settings = ExporterSettings(groups=rendered_groups(rendered))
    served = {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in create_registry(settings, exporter_client).collect()
        for sample in family.samples
    }
    scaled = rendered.of_kind("ScaledObject")
    assert scaled
    # The backlog trigger always; the age trigger where a group switches it on.
    expected = {"backlog": GROUP_BACKLOG, "oldest-age": GROUP_OLDEST_AGE}
    for so in scaled:
        triggers = so["spec"]["triggers"]
        assert triggers[0]["name"] == "backlog"
        for trigger in triggers:
            found = SELECTOR.match(trigger["metadata"]["valueLocation"])
            assert found, trigger["metadata"]["valueLocation"]
            assert found["name"] == expected[trigger["name"]]
            series = (found["name"], ((found["label"], found["value"]),))
            assert series in served, f"{so['metadata']['name']}: {series} not in {sorted(served)}"


def test_rules_and_dashboard_read_only_metrics_celeriac_serves(
    renders: dict[str, Rendered],
) -> None:
    rendered = renders["servicemonitor-rule-dashboard"]
    (rule,) = rendered.of_kind("PrometheusRule")
    exprs = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    dashboard = json.loads(rendered.get("ConfigMap", "celeriac-dashboard")["data"]["celeriac.json"])
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = set(re.findall(r"\bceleriac_[a-z_]+\b", " ".join(exprs)))
    assert GROUP_BACKLOG in used
    assert used <= served_series(), used - served_series()


# --- name rules and priorities -----------------------------------------------------------------


def test_schema_name_rules_are_the_python_rules() -> None:
    assert SCHEMA["definitions"]["queueName"]["pattern"] == QUEUE_NAME.pattern
    assert list(SCHEMA["properties"]["workers"]["patternProperties"]) == [GROUP_NAME.pattern]
    sentinel = SCHEMA["properties"]["redis"]["properties"]["sentinel"]["properties"]
    assert sentinel["masterName"]["pattern"] == SENTINEL_MASTER_NAME.pattern
    prefix = SCHEMA["properties"]["celery"]["properties"]["brokerKeyPrefix"]
    assert prefix["anyOf"] == [{"maxLength": 0}, {"pattern": BROKER_KEY_PREFIX.pattern}]


def test_the_chart_helpers_check_group_names_with_the_python_rule() -> None:
    (pattern,) = re.findall(r'regexMatch "([^"]+)" \$name', HELPERS)
    assert pattern == GROUP_NAME.pattern


def test_schema_priority_bounds_are_the_python_bounds() -> None:
    priority = SCHEMA["definitions"]["scheduleEntry"]["properties"]["priority"]
    assert (priority["minimum"], priority["maximum"]) == (MIN_PRIORITY, MAX_PRIORITY)


def test_api_defaults_and_bounds_are_the_python_ones(defaults: Rendered) -> None:
    """The chart's API settings start where the code's do, within the code's bounds."""
    api = SCHEMA["properties"]["api"]["properties"]
    assert api["recentTasks"]["maximum"] == MAX_RECENT_TASKS
    assert api["idempotencyWindowSeconds"]["minimum"] == 1
    (container,) = pod_spec(defaults.get("Deployment", "celeriac-api"))["containers"]
    env = env_of(container)
    settings = ApiSettings.from_env(
        {
            name: env[name]["value"]
            for name in env
            if name.startswith("CELERIAC_API_") and name != "CELERIAC_API_TOKENS_FILE"
        }
        | {"CELERIAC_API_TOKENS": "facts-test-token"}
    )
    assert settings.recent_tasks == DEFAULT_RECENT_TASKS
    assert settings.idempotency_window_seconds == DEFAULT_IDEMPOTENCY_WINDOW_SECONDS


def test_worker_defaults_are_the_python_ones(defaults: Rendered) -> None:
    """The chart's worker settings without a Kubernetes source start where the code's do."""
    assert (
        SCHEMA["definitions"]["workerGroup"]["properties"]["unregisteredTaskSeconds"]["minimum"]
        == 0
    )
    (workload,) = workloads_of(defaults, "worker")
    (container,) = pod_spec(workload)["containers"]
    env = env_of(container)
    seconds = float(env["CELERIAC_WORKER_UNREGISTERED_TASK_SECONDS"]["value"])
    assert seconds == DEFAULT_UNREGISTERED_TASK_SECONDS


# --- the union of queues -----------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_api_and_exporter_get_the_union_of_the_queues(
    renders: dict[str, Rendered], case: str
) -> None:
    rendered = renders[case]
    (exporter,) = pod_spec(rendered.get("Deployment", "celeriac-exporter"))["containers"]
    env = env_of(exporter)
    expected = set(all_queues([env["CELERIAC_DEFAULT_QUEUE"]["value"]], rendered_groups(rendered)))
    assert set(env["CELERIAC_QUEUES"]["value"].split(",")) == expected
    for workload in workloads_of(rendered, "api"):
        (container,) = pod_spec(workload)["containers"]
        assert set(env_of(container)["CELERIAC_QUEUES"]["value"].split(",")) == expected


# --- pool size ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpu", "per_cpu"),
    [("1", 1.5), ("2", 1.1), ("4", 0.6), ("250m", 0.25), ("2", 1.25), ("1500m", 0.3)],
)
def test_the_keda_target_uses_the_workers_pool_size(cpu: str, per_cpu: float) -> None:
    """Fractions that round: the chart's arithmetic must land where the worker's does."""
    group = {"resources": {"limits": {"cpu": cpu}}, "concurrencyPerCpu": per_cpu}
    group["autoscaling"] = {"keda": {"targetTasksPerProcess": 1}}
    so = render({"workers": {"default": group}}).get("ScaledObject", "celeriac-worker-default")
    cpus = -(-int(cpu.removesuffix("m")) // 1000) if cpu.endswith("m") else int(cpu)
    assert so["spec"]["triggers"][0]["metadata"]["targetValue"] == str(pool_size(cpus, per_cpu))


# --- environment and probe files ---------------------------------------------------------------


def test_every_celeriac_variable_the_chart_sets_is_read_by_the_code(
    renders: dict[str, Rendered],
) -> None:
    read = variables_in_code()
    set_by_chart = {
        (case, name)
        for case, rendered in renders.items()
        for workload in rendered.workloads()
        for container in containers(workload)
        for name in env_of(container)
        if name.startswith("CELERIAC_")
    }
    assert {name for _, name in set_by_chart} >= {"CELERIAC_BROKER_URL", "CELERIAC_QUEUES"}
    unread = sorted({f"{name} ({case})" for case, name in set_by_chart if name not in read})
    assert not unread, f"the chart sets variables no code reads: {unread}"


@pytest.mark.parametrize(
    ("component", "files"),
    [("worker", (WORKER_HEARTBEAT_FILE, WORKER_READY_FILE)), ("beat", (BEAT_HEARTBEAT_FILE,))],
)
def test_probe_files_are_on_a_writable_volume(
    defaults: Rendered, component: str, files: tuple[Path, ...]
) -> None:
    """The probes read the default paths (no option), so those must sit on an emptyDir."""
    for workload in workloads_of(defaults, component):
        spec = pod_spec(workload)
        (container,) = spec["containers"]
        assert not any("FILE" in name for name in env_of(container) if "HEARTBEAT" in name)
        empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        mounts = [
            Path(m["mountPath"]) for m in container["volumeMounts"] if m["name"] in empty_dirs
        ]
        for path in files:
            assert any(path.is_relative_to(mount) for mount in mounts), (path, mounts)
        assert container["livenessProbe"]["exec"]["command"] == ["celeriac", "probe", component]


# --- Redis with Sentinel ---------------------------------------------------------------------


def test_the_sentinel_tests_run_redis_as_the_chart_configures_it(
    renders: dict[str, Rendered],
) -> None:
    """tests/integration/test_sentinel.py's nodes take ``HA_NODE_CONFIG``: the chart's
    redis.conf must say the same, so the failover measured there is the chart's."""
    config = renders["sentinel"].get("ConfigMap", "celeriac-redis")["data"]["redis.conf"]
    directives = {
        name: value
        for line in config.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
        for name, _, value in [line.strip().partition(" ")]
    }
    assert {name: directives.get(name) for name, _ in HA_NODE_CONFIG} == dict(HA_NODE_CONFIG)


def test_the_cluster_tests_reach_redis_as_the_chart_runs_it(renders: dict[str, Rendered]) -> None:
    """tests/cluster's RedisPods (test_redis_sentinel.py, soak.py) asks the pods on these ports
    for this master name: the chart's defaults with Sentinel on."""
    rendered = renders["sentinel"]
    statefulset = rendered.get("StatefulSet", "celeriac-redis")
    assert statefulset["spec"]["replicas"] == REDIS_PODS
    ports = {c["name"]: port_named(c, c["name"]) for c in pod_spec(statefulset)["containers"]}
    assert ports == {"redis": REDIS_PORT, "sentinel": SENTINEL_PORT}
    (worker,) = workloads_of(rendered, "worker")
    (container,) = pod_spec(worker)["containers"]
    assert env_of(container)["CELERIAC_REDIS_SENTINEL_MASTER"]["value"] == MASTER_NAME
