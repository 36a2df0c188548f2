"""Worker groups: one Deployment each, the pool sized by the CPU limit through the Downward API,
a shutdown that fits the grace period, and the group -> queues file the exporter reads."""

from __future__ import annotations

import pytest
import yaml

from celeriac.worker.settings import DEFAULT_METRICS_PORT
from tests.chart.matrix import MATRIX
from tests.chart.render import Rendered, env_of, pod_spec, render, worker_groups

pytestmark = pytest.mark.chart


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_pool_size_comes_from_the_cpu_limit(renders: dict[str, Rendered], case: str) -> None:
    rendered = renders[case]
    groups = worker_groups(MATRIX[case])
    deployments = [
        d
        for d in rendered.of_kind("Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]
    assert sorted(d["metadata"]["name"] for d in deployments) == sorted(
        f"celeriac-worker-{name}" for name in groups
    )
    for deployment in deployments:
        (container,) = pod_spec(deployment)["containers"]
        env = env_of(container)
        assert "cpu" in container["resources"]["limits"]
        # The pool follows the limit itself: the pod reads limits.cpu of its own container.
        assert env["CELERIAC_WORKER_CPU_LIMIT"] == {
            "name": "CELERIAC_WORKER_CPU_LIMIT",
            "valueFrom": {
                "resourceFieldRef": {
                    "containerName": container["name"],
                    "resource": "limits.cpu",
                    "divisor": "1",
                }
            },
        }
        assert env["CELERIAC_WORKER_MEMORY_LIMIT_BYTES"]["valueFrom"]["resourceFieldRef"] == {
            "containerName": container["name"],
            "resource": "limits.memory",
            "divisor": "1",
        }
        # An explicit concurrency would break "pool size = CPU limit" and the KEDA target.
        assert "CELERIAC_WORKER_CONCURRENCY" not in env


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_each_group_consumes_its_queues_and_stops_within_its_grace_period(
    renders: dict[str, Rendered], case: str
) -> None:
    rendered = renders[case]
    for name, group in worker_groups(MATRIX[case]).items():
        spec = pod_spec(rendered.get("Deployment", f"celeriac-worker-{name}"))
        env = env_of(spec["containers"][0])
        assert env["CELERIAC_QUEUES"]["value"] == ",".join(group.get("queues", [name]))
        grace = spec["terminationGracePeriodSeconds"]
        shutdown = int(env["CELERIAC_WORKER_SHUTDOWN_TIMEOUT_SECONDS"]["value"])
        assert shutdown == grace - group["shutdownMarginSeconds"]
        assert 0 < shutdown < grace
        visibility = int(env["CELERIAC_VISIBILITY_TIMEOUT_SECONDS"]["value"])
        assert visibility > grace
        assert float(env["CELERIAC_WORKER_CONCURRENCY_PER_CPU"]["value"]) == float(
            group["concurrencyPerCpu"]
        )


def test_worker_probes_use_the_celeriac_probe_command(defaults: Rendered) -> None:
    (container,) = pod_spec(defaults.get("Deployment", "celeriac-worker-default"))["containers"]
    assert container["livenessProbe"]["exec"]["command"] == ["celeriac", "probe", "worker"]
    ready = ["celeriac", "probe", "worker", "--ready"]
    assert container["readinessProbe"]["exec"]["command"] == ready
    assert container["startupProbe"]["exec"]["command"] == ready
    port = DEFAULT_METRICS_PORT
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    assert env_of(container)["CELERIAC_WORKER_METRICS_PORT"]["value"] == str(port)


def test_a_probe_can_be_retimed_or_switched_off() -> None:
    rendered = render(
        {
            "workerDefaults": {"livenessProbe": {"periodSeconds": 30}},
            "workers": {"default": {"startupProbe": {"enabled": False}}},
        }
    )
    (container,) = pod_spec(rendered.get("Deployment", "celeriac-worker-default"))["containers"]
    assert container["livenessProbe"]["periodSeconds"] == 30
    assert "startupProbe" not in container


def test_groups_inherit_worker_defaults_and_override_them(renders: dict[str, Rendered]) -> None:
    rendered = renders["multiple-groups"]
    cpu = pod_spec(rendered.get("Deployment", "celeriac-worker-cpu"))
    io = pod_spec(rendered.get("Deployment", "celeriac-worker-io"))
    fixed = pod_spec(rendered.get("Deployment", "celeriac-worker-fixed"))
    assert cpu["terminationGracePeriodSeconds"] == 900
    assert io["terminationGracePeriodSeconds"] == 120
    assert cpu["nodeSelector"] == {"workload": "cpu"}
    assert "nodeSelector" not in io
    assert io["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert cpu["tolerations"][0]["value"] == "cpu"
    # Metrics off: no port, no Service, metrics disabled in the worker.
    assert "ports" not in fixed["containers"][0]
    assert env_of(fixed["containers"][0])["CELERIAC_WORKER_METRICS_PORT"]["value"] == "0"
    assert not rendered.has("Service", "celeriac-worker-fixed")
    assert rendered.get("Service", "celeriac-worker-io")["spec"]["clusterIP"] == "None"
    assert (
        rendered.get("PodDisruptionBudget", "celeriac-worker-fixed")["spec"]["maxUnavailable"]
        == "50%"
    )


def test_the_default_group_can_be_dropped() -> None:
    rendered = render(
        {
            "celery": {"defaultQueue": "jobs"},
            "workers": {"default": None, "jobs": {"resources": {"limits": {"cpu": "1"}}}},
        }
    )
    names = [d["metadata"]["name"] for d in rendered.of_kind("Deployment")]
    assert "celeriac-worker-jobs" in names
    assert "celeriac-worker-default" not in names
    spec = pod_spec(rendered.get("Deployment", "celeriac-worker-jobs"))
    assert env_of(spec["containers"][0])["CELERIAC_QUEUES"]["value"] == "jobs"


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_exporter_reads_the_same_groups_and_queues(renders: dict[str, Rendered], case: str) -> None:
    rendered = renders[case]
    groups = worker_groups(MATRIX[case])
    config = rendered.get("ConfigMap", "celeriac-worker-groups")
    assert yaml.safe_load(config["data"]["worker-groups.yaml"]) == {
        name: {"queues": group.get("queues", [name])} for name, group in groups.items()
    }
    exporter = pod_spec(rendered.get("Deployment", "celeriac-exporter"))["containers"][0]
    env = env_of(exporter)
    assert (
        env["CELERIAC_WORKER_GROUPS_FILE"]["value"] == "/etc/celeriac/exporter/worker-groups.yaml"
    )
    # The union itself is compared with the exporter's (celeriac.groups.all_queues) in
    # test_facts.py.
    mounts = {m["name"]: m["mountPath"] for m in exporter["volumeMounts"]}
    assert mounts["worker-groups"] == "/etc/celeriac/exporter"


def test_changing_the_groups_rolls_the_exporter() -> None:
    def checksum(values: dict[str, object]) -> str:
        exporter = render(values).get("Deployment", "celeriac-exporter")
        annotation: str = exporter["spec"]["template"]["metadata"]["annotations"][
            "checksum/worker-groups"
        ]
        return annotation

    base = checksum({})
    assert checksum({}) == base
    assert checksum({"workers": {"default": {"queues": ["default", "mail"]}}}) != base


def test_hpa_engine_scales_on_cpu(renders: dict[str, Rendered]) -> None:
    rendered = renders["hpa-engine"]
    hpa = rendered.get("HorizontalPodAutoscaler", "celeriac-worker-default")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "celeriac-worker-default"
    assert hpa["spec"]["minReplicas"] == 2
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in rendered.get("Deployment", "celeriac-worker-default")["spec"]
    assert not renders["defaults"].of_kind("HorizontalPodAutoscaler")
