"""Security and operations: locked-down pods, no service-account token, NetworkPolicies that
deny by default, PodDisruptionBudgets that never block a node drain."""

from __future__ import annotations

import pytest

from tests.chart.matrix import MATRIX
from tests.chart.render import Obj, Rendered, containers, pod_spec

pytestmark = pytest.mark.chart

RELEASE_SELECTOR = {"app.kubernetes.io/name": "celeriac", "app.kubernetes.io/instance": "celeriac"}


def pod_labels(workload: Obj) -> dict[str, str]:
    metadata = (
        workload["metadata"]
        if workload["kind"] == "Pod"
        else workload["spec"]["template"]["metadata"]
    )
    labels: dict[str, str] = metadata["labels"]
    return labels


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_every_pod_is_locked_down(renders: dict[str, Rendered], case: str) -> None:
    workloads = renders[case].workloads()
    assert workloads
    for workload in workloads:
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        spec = pod_spec(workload)
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["enableServiceLinks"] is False, where
        pod_context = spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True, where
        assert pod_context["runAsUser"] == 10001, where
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}, where
        tmp = next(v for v in spec["volumes"] if v["name"] == "tmp")
        assert "emptyDir" in tmp, where
        for container in containers(workload):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["privileged"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["runAsNonRoot"] is True, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], where
            limits = container["resources"]["limits"]
            assert {"cpu", "memory"} <= set(limits), where


def test_the_service_account_mounts_no_token(defaults: Rendered) -> None:
    (account,) = defaults.of_kind("ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert not [obj for obj in defaults.objects if obj["kind"] in ("Role", "RoleBinding")]


def test_a_component_security_context_is_merged_over_the_shared_one() -> None:
    from tests.chart.render import render

    rendered = render({"api": {"containerSecurityContext": {"runAsUser": 20000}}})
    api = rendered.get("Deployment", "celeriac-api")
    context = pod_spec(api)["containers"][0]["securityContext"]
    assert context["runAsUser"] == 20000
    assert context["readOnlyRootFilesystem"] is True


def policies(rendered: Rendered) -> dict[str, Obj]:
    return {p["metadata"]["name"]: p["spec"] for p in rendered.of_kind("NetworkPolicy")}


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_ingress_is_denied_by_default_to_every_pod(renders: dict[str, Rendered], case: str) -> None:
    rendered = renders[case]
    found = policies(rendered)
    if MATRIX[case].get("networkPolicy", {}).get("enabled") is False:
        assert found == {}
        return
    deny = found["celeriac-default-deny"]
    assert deny == {
        "podSelector": {"matchLabels": RELEASE_SELECTOR},
        "policyTypes": ["Ingress"],
    }
    for workload in rendered.workloads():
        assert RELEASE_SELECTOR.items() <= pod_labels(workload).items()


def test_redis_is_reachable_only_from_the_release(defaults: Rendered) -> None:
    redis = policies(defaults)["celeriac-redis"]
    assert redis["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    (rule,) = redis["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": RELEASE_SELECTOR}}]
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]


def test_exporter_is_reachable_from_keda_and_prometheus(defaults: Rendered) -> None:
    exporter = policies(defaults)["celeriac-exporter"]
    (rule,) = exporter["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}},
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        },
        {"podSelector": {"matchLabels": RELEASE_SELECTOR}},
    ]
    workers = policies(defaults)["celeriac-worker"]
    assert workers["ingress"][0]["from"] == rule["from"][1:2]


def test_api_is_reachable_from_anywhere_or_from_the_listed_peers(
    renders: dict[str, Rendered],
) -> None:
    (open_rule,) = policies(renders["defaults"])["celeriac-api"]["ingress"]
    assert open_rule == {"ports": [{"port": "http", "protocol": "TCP"}]}
    (rule,) = policies(renders["api-ingress-hpa"])["celeriac-api"]["ingress"]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"ingress": "true"}}},
        {"podSelector": {"matchLabels": RELEASE_SELECTOR}},
    ]


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_disruption_budgets_never_block_a_drain(renders: dict[str, Rendered], case: str) -> None:
    rendered = renders[case]
    budgets = rendered.of_kind("PodDisruptionBudget")
    assert budgets
    for budget in budgets:
        spec = budget["spec"]
        assert "minAvailable" not in spec
        assert spec["maxUnavailable"] == 1 or str(spec["maxUnavailable"]).endswith("%")
        assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        component = spec["selector"]["matchLabels"]["app.kubernetes.io/component"]
        # Single-replica components get none: a budget could only block or mean nothing.
        assert component not in ("beat", "redis")
        selected = [
            w
            for w in rendered.workloads()
            if spec["selector"]["matchLabels"].items() <= pod_labels(w).items()
        ]
        assert len(selected) == 1, budget["metadata"]["name"]


def test_redis_secret_change_rolls_its_clients(defaults: Rendered) -> None:
    for workload in defaults.workloads():
        if workload["kind"] == "Pod":
            continue
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert "checksum/redis-secret" in annotations, workload["metadata"]["name"]
