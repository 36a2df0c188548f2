"""Security and operations: locked-down pods, a service-account token only in worker pods that
patch their own pod-deletion-cost (a Role with get and patch on pods), NetworkPolicies that
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
        # Only a worker whose deletion cost is on gets a token (it patches its own pod).
        assert spec["automountServiceAccountToken"] is deletion_cost_on(workload), where
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


def deletion_cost_on(workload: Obj) -> bool:
    if workload["metadata"]["labels"].get("app.kubernetes.io/component") != "worker":
        return False
    (container,) = pod_spec(workload)["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    return env.get("CELERIAC_WORKER_DELETION_COST") == "true"


WORKER_RULES = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]


def test_the_service_accounts_mount_no_token_by_themselves(defaults: Rendered) -> None:
    accounts = {a["metadata"]["name"]: a for a in defaults.of_kind("ServiceAccount")}
    assert set(accounts) == {"celeriac", "celeriac-worker"}
    for account in accounts.values():
        assert account["automountServiceAccountToken"] is False
    assert not defaults.of_kind("ClusterRole")
    assert not defaults.of_kind("ClusterRoleBinding")


def test_the_worker_role_allows_get_and_patch_on_pods_only(defaults: Rendered) -> None:
    (role,) = defaults.of_kind("Role")
    assert role["metadata"]["name"] == "celeriac-worker"
    assert role["metadata"]["namespace"] == "tasks"
    assert role["rules"] == WORKER_RULES
    (binding,) = defaults.of_kind("RoleBinding")
    assert binding["metadata"]["namespace"] == "tasks"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "celeriac-worker",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "celeriac-worker", "namespace": "tasks"}
    ]


def test_only_worker_pods_with_deletion_cost_run_as_the_worker_account(
    renders: dict[str, Rendered],
) -> None:
    rendered = renders["multiple-groups"]
    accounts = {
        w["metadata"]["name"]: (
            pod_spec(w)["serviceAccountName"],
            pod_spec(w)["automountServiceAccountToken"],
        )
        for w in rendered.workloads()
    }
    assert accounts.pop("celeriac-worker-cpu") == ("celeriac-worker", True)
    assert accounts.pop("celeriac-worker-io") == ("celeriac-worker", True)
    assert accounts.pop("celeriac-worker-default") == ("celeriac-worker", True)
    # engine none: nothing scales in, so no token and the release's account
    assert accounts.pop("celeriac-worker-fixed") == ("celeriac", False)
    assert set(accounts.values()) == {("celeriac", False)}
    worker = rendered.get("Deployment", "celeriac-worker-cpu")
    (container,) = pod_spec(worker)["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CELERIAC_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["CELERIAC_POD_NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }


def test_deletion_cost_off_renders_no_token_no_role_no_account() -> None:
    from tests.chart.render import render

    rendered = render({"workerDefaults": {"deletionCost": {"enabled": False}}})
    assert [a["metadata"]["name"] for a in rendered.of_kind("ServiceAccount")] == ["celeriac"]
    assert not rendered.of_kind("Role")
    assert not rendered.of_kind("RoleBinding")
    for workload in rendered.workloads():
        assert pod_spec(workload)["automountServiceAccountToken"] is False
        for container in pod_spec(workload)["containers"]:
            names = {e["name"] for e in container.get("env") or []}
            assert not names & {"CELERIAC_WORKER_DELETION_COST", "CELERIAC_POD_NAMESPACE"}
    rendered = render({"workers": {"default": {"autoscaling": {"engine": "none"}}}})
    assert not rendered.of_kind("Role")
    # one group on is enough for the Role; the others stay without a token
    rendered = render(
        {
            "workerDefaults": {"deletionCost": {"enabled": False}},
            "workers": {
                "io": {
                    "resources": {"limits": {"cpu": "1"}},
                    "deletionCost": {"enabled": True},
                }
            },
        }
    )
    assert [r["rules"] for r in rendered.of_kind("Role")] == [WORKER_RULES]
    tokens = {
        w["metadata"]["name"]: pod_spec(w)["automountServiceAccountToken"]
        for w in rendered.workloads()
        if w["metadata"]["name"].startswith("celeriac-worker-")
    }
    assert tokens == {"celeriac-worker-default": False, "celeriac-worker-io": True}


def test_without_created_accounts_the_role_binds_the_named_one(
    renders: dict[str, Rendered],
) -> None:
    rendered = renders["existing-secrets-digest"]
    assert not rendered.of_kind("ServiceAccount")
    (binding,) = rendered.of_kind("RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tasks", "namespace": "tasks"}
    ]
    worker = rendered.get("Deployment", "celeriac-worker-default")
    assert pod_spec(worker)["serviceAccountName"] == "tasks"
    assert pod_spec(worker)["automountServiceAccountToken"] is True


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
        # Single-replica components get none: a budget could only block or mean nothing
        # (Redis has replicas only with Sentinel).
        single = ("beat",) if MATRIX[case].get("redis", {}).get("sentinel") else ("beat", "redis")
        assert component not in single
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
