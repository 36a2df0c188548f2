"""Monitoring objects: ServiceMonitors or PodMonitors for the exporter and workers, the alerts,
and the Grafana dashboard.

The Prometheus Operator's CRDs are not available here, so these kinds are checked against a
small strict schema of the fields this chart uses (a typo fails), and the PromQL they carry is
checked by promtool: rule syntax (`promtool check rules`), alert behaviour on sample series
(`promtool test rules`) and every dashboard query.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from celeriac.exporter.collector import (
    GROUP_BACKLOG,
    QUEUE_DEAD_LETTERS,
    QUEUE_IN_FLIGHT,
    QUEUE_WAITING,
    REDIS_UP,
)
from celeriac.worker.metrics import TASKS_FAILED, TASKS_SUCCEEDED
from tests.chart.render import NAMESPACE, Obj, Rendered, pod_spec
from tests.chart.served import served_series
from tests.support import PROMETHEUS_HOW_TO_GET, require_tool

pytestmark = pytest.mark.chart

MONITORING = "monitoring.coreos.com/v1"
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": LABELS, "matchExpressions": {"type": "array"}},
}
RELABELING = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "action": {"enum": ["replace", "keep", "drop", "labelmap", "labeldrop", "labelkeep"]},
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "targetLabel": {"type": "string"},
        "replacement": {"type": "string"},
        "regex": {"type": "string"},
        "separator": {"type": "string"},
    },
}
ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port"],
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string"},
        "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
        "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
        "relabelings": {"type": "array", "items": RELABELING},
    },
}
METADATA = {
    "type": "object",
    "required": ["name", "namespace", "labels"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": LABELS},
}


def monitor_schema(endpoints: str) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": MONITORING},
            "kind": {"type": "string"},
            "metadata": METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", endpoints],
                "properties": {
                    "selector": SELECTOR,
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "matchNames": {"type": "array", "items": {"type": "string"}}
                        },
                    },
                    endpoints: {"type": "array", "minItems": 1, "items": ENDPOINT},
                },
            },
        },
    }


RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": {"type": "string"},
        "record": {"type": "string"},
        "expr": {"type": "string"},
        "for": {"type": "string"},
        "labels": LABELS,
        "annotations": LABELS,
    },
}
SCHEMAS = {
    "ServiceMonitor": monitor_schema("endpoints"),
    "PodMonitor": monitor_schema("podMetricsEndpoints"),
    "PrometheusRule": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": MONITORING},
            "kind": {"const": "PrometheusRule"},
            "metadata": METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string"},
                                "rules": {"type": "array", "minItems": 1, "items": RULE},
                            },
                        },
                    }
                },
            },
        },
    },
}


def promtool() -> str:
    return require_tool("promtool", PROMETHEUS_HOW_TO_GET)


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("case", ["servicemonitor-rule-dashboard", "podmonitor"])
def test_monitoring_objects_have_the_expected_shape(
    renders: dict[str, Rendered], case: str
) -> None:
    rendered = renders[case]
    found = [obj for obj in rendered.objects if obj["apiVersion"].startswith("monitoring.coreos")]
    assert found
    for obj in found:
        jsonschema.validate(obj, SCHEMAS[obj["kind"]])


def monitors(rendered: Rendered, kind: str) -> dict[str, Obj]:
    return {m["metadata"]["name"]: m for m in rendered.of_kind(kind)}


def test_service_monitors_scrape_the_exporter_and_worker_services(
    renders: dict[str, Rendered],
) -> None:
    rendered = renders["servicemonitor-rule-dashboard"]
    found = monitors(rendered, "ServiceMonitor")
    assert set(found) == {"celeriac-exporter", "celeriac-worker"}
    for component, monitor in found.items():
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        spec = monitor["spec"]
        assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        (endpoint,) = spec["endpoints"]
        assert endpoint["port"] == "metrics"
        assert endpoint["relabelings"][0] == {
            "action": "replace",
            "targetLabel": "job",
            "replacement": component,
        }
        selector = spec["selector"]["matchLabels"]
        services = [
            s
            for s in rendered.of_kind("Service")
            if selector.items() <= s["metadata"]["labels"].items()
            and any(p["name"] == "metrics" for p in s["spec"]["ports"])
        ]
        assert services, component
    assert not rendered.of_kind("PodMonitor")


def test_pod_monitors_scrape_the_exporter_and_worker_pods(renders: dict[str, Rendered]) -> None:
    rendered = renders["podmonitor"]
    found = monitors(rendered, "PodMonitor")
    assert set(found) == {"celeriac-exporter", "celeriac-worker"}
    for component, monitor in found.items():
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] == "metrics"
        selector = monitor["spec"]["selector"]["matchLabels"]
        pods = [
            w
            for w in rendered.workloads()
            if w["kind"] == "Deployment"
            and selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
            and any(p["name"] == "metrics" for p in pod_spec(w)["containers"][0].get("ports", []))
        ]
        assert pods, component
    assert not rendered.of_kind("ServiceMonitor")
    assert not renders["defaults"].of_kind("PodMonitor")


@pytest.fixture(scope="module")
def rules_file(renders: dict[str, Rendered], tmp_path_factory: pytest.TempPathFactory) -> Path:
    (rule,) = renders["servicemonitor-rule-dashboard"].of_kind("PrometheusRule")
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


def test_alert_rules_pass_promtool(rules_file: Path) -> None:
    checked = run_promtool("check", "rules", str(rules_file))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    alerts = [
        r["alert"] for g in yaml.safe_load(rules_file.read_text())["groups"] for r in g["rules"]
    ]
    assert alerts == [
        "CeleriacExporterDown",
        "CeleriacRedisDown",
        "CeleriacBacklogGrowing",
        "CeleriacWorkersAbsent",
        "CeleriacWorkersNotConsuming",
        "CeleriacDeadLetters",
        "CeleriacTaskFailureRate",
        "CeleriacAutoscalerAtMax",
    ]


def series(name: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{labels}}}", "values": values}


def alert(labels: dict[str, str], summary: str, description: str) -> dict[str, object]:
    return {
        "exp_labels": labels,
        "exp_annotations": {"summary": summary, "description": description},
    }


def test_alerts_fire_on_the_right_series(rules_file: Path) -> None:
    exporter = f'job="celeriac-exporter",namespace="{NAMESPACE}"'
    worker = f'job="celeriac-worker",namespace="{NAMESPACE}"'
    deployment = f'namespace="{NAMESPACE}",deployment="celeriac-worker-'
    available = "kube_deployment_status_replicas_available"
    input_series = [
        # Group "default" has work and no worker; "io" has work and two.
        series(GROUP_BACKLOG, f'{exporter},group="default"', "5x30"),
        series(GROUP_BACKLOG, f'{exporter},group="io"', "5x30"),
        series(available, f'{deployment}default"', "0x30"),
        series(available, f'{deployment}io"', "2x30"),
        series(REDIS_UP, exporter, "1 1 0x28"),
        series("up", exporter, "1x30"),
        # t.flaky fails every other run; t.fine never fails.
        series(TASKS_FAILED, f'{worker},task="t.flaky"', "0+5x30"),
        series(TASKS_SUCCEEDED, f'{worker},task="t.flaky"', "0+5x30"),
        series(TASKS_FAILED, f'{worker},task="t.fine"', "0x30"),
        # Queue "cpu" gets a dead letter at minute 20; "default" has had one for ever.
        series(QUEUE_DEAD_LETTERS, f'{exporter},queue="cpu"', "0x20 1x10"),
        series(QUEUE_DEAD_LETTERS, f'{exporter},queue="default"', "1x30"),
        series(TASKS_SUCCEEDED, f'{worker},task="t.fine"', "0+9x30"),
    ]
    workers_absent = alert(
        {
            "severity": "critical",
            "group": "default",
            "job": "celeriac-exporter",
            "namespace": NAMESPACE,
        },
        "Worker group default has work but no available worker.",
        "Check the ScaledObject (kubectl describe scaledobject), pod events and image pulls.",
    )
    redis_down = alert(
        {"severity": "critical"},
        "The exporter cannot reach the Redis broker.",
        "No task can be queued or consumed while Redis is unreachable.",
    )
    failing = alert(
        {"severity": "warning", "task": "t.flaky"},
        "Task t.flaky fails often.",
        "50% of the runs of t.flaky failed over 10 minutes.",
    )
    dead_letter = alert(
        {"severity": "warning", "queue": "cpu", "job": "celeriac-exporter", "namespace": NAMESPACE},
        "Tasks of queue cpu were set aside as dead letters.",
        "Their worker was lost on each of their last deliveries (out of memory, a segfault). "
        "List them with GET /v1/dead-letters?queue=cpu, then replay or discard them.",
    )
    expectations = [
        ("15m", "CeleriacDeadLetters", []),
        ("25m", "CeleriacDeadLetters", [dead_letter]),
        ("15m", "CeleriacWorkersAbsent", [workers_absent]),
        ("10m", "CeleriacRedisDown", [redis_down]),
        ("10m", "CeleriacExporterDown", []),
        ("25m", "CeleriacBacklogGrowing", []),
        ("25m", "CeleriacTaskFailureRate", [failing]),
    ]
    tests = {
        "rule_files": [rules_file.name],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": input_series,
                "alert_rule_test": [
                    {"eval_time": at, "alertname": name, "exp_alerts": expected}
                    for at, name, expected in expectations
                ],
            }
        ],
    }
    test_file = rules_file.parent / "tests.yaml"
    test_file.write_text(yaml.safe_dump(tests))
    tested = run_promtool("test", "rules", str(test_file))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_workers_not_consuming_fires_only_with_waiting_nothing_in_flight_and_replicas(
    rules_file: Path,
) -> None:
    exporter = f'job="celeriac-exporter",namespace="{NAMESPACE}"'
    queue = f'{exporter},queue="default"'
    available = "kube_deployment_status_replicas_available"
    deployment = f'namespace="{NAMESPACE}",deployment="celeriac-worker-default"'
    stuck = alert(
        {"severity": "critical", "group": "default"},
        "Worker group default has waiting tasks and available workers, but runs nothing.",
        "Messages wait in the queues of group default (default), none is in flight and the "
        "group has available replicas: its workers do not consume (silent consumers, e.g. "
        "after a Redis restart; each worker's liveness probe should restart it after "
        "workers.default.stallSeconds). Check the workers' logs and probes.",
    )

    def case(waiting: str, in_flight: str, replicas: str, expected: list[object]) -> object:
        return {
            "interval": "1m",
            "input_series": [
                series(QUEUE_WAITING, queue, waiting),
                series(QUEUE_IN_FLIGHT, queue, in_flight),
                # Another group's queue in flight must not hide this group's stall.
                series(QUEUE_IN_FLIGHT, f'{exporter},queue="io"', "3x30"),
                series(available, deployment, replicas),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "10m",
                    "alertname": "CeleriacWorkersNotConsuming",
                    "exp_alerts": expected,
                }
            ],
        }

    tests = {
        "rule_files": [rules_file.name],
        "evaluation_interval": "1m",
        "tests": [
            case("7x30", "0x30", "2x30", [stuck]),  # waiting, nothing runs, workers up
            case("7x30", "2x30", "2x30", []),  # busy: tasks in flight
            case("0x30", "0x30", "2x30", []),  # idle: nothing waits
            case("7x30", "0x30", "0x30", []),  # no worker (CeleriacWorkersAbsent's case)
            case("7x30", "0 0 0 0 0 0 0 1 0x22", "2x30", []),  # ran a task 3 minutes ago
        ],
    }
    test_file = rules_file.parent / "not-consuming-tests.yaml"
    test_file.write_text(yaml.safe_dump(tests))
    tested = run_promtool("test", "rules", str(test_file))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_dashboard_configmap_is_found_by_the_grafana_sidecar(renders: dict[str, Rendered]) -> None:
    rendered = renders["servicemonitor-rule-dashboard"]
    config = rendered.get("ConfigMap", "celeriac-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config["data"]["celeriac.json"])
    assert dashboard["uid"] == "celeriac"
    assert len(dashboard["panels"]) >= 8
    assert not renders["defaults"].has("ConfigMap", "celeriac-dashboard")


def test_every_dashboard_query_is_valid_promql(
    renders: dict[str, Rendered], tmp_path: Path
) -> None:
    config = renders["servicemonitor-rule-dashboard"].get("ConfigMap", "celeriac-dashboard")
    dashboard = json.loads(config["data"]["celeriac.json"])
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 12
    variables = {"$__rate_interval": "5m", "$namespace": NAMESPACE}
    variables |= {"$exporter": "celeriac-exporter", "$worker": "celeriac-worker"}
    rules = []
    for index, expr in enumerate(exprs):
        for name, value in variables.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = run_promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Every metric the dashboard reads is one celeriac or kube-state-metrics exports.
    metrics = set(re.findall(r"\b(celeriac_[a-z_]+|kube_[a-z_]+)\b", " ".join(exprs)))
    kube = {"kube_deployment_status_replicas_available", "kube_deployment_spec_replicas"}
    known = served_series() | kube
    assert metrics <= known, metrics - known
