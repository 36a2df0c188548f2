"""The chart renders and lints strictly over the whole values matrix, with the shared invariants
every object must keep: namespace, standard labels, selectors without the version, DNS names."""

from __future__ import annotations

import re

import pytest

from tests.chart.matrix import MATRIX
from tests.chart.render import NAMESPACE, RELEASE, Rendered, lint, pod_spec

pytestmark = pytest.mark.chart

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
STANDARD_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
)


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_lint_strict(case: str) -> None:
    assert lint(MATRIX[case]) == []


def test_lint_strict_on_oldest_supported_kubernetes() -> None:
    assert lint(kube_version="v1.29.0") == []


def test_chart_metadata_requires_kubernetes_1_29() -> None:
    from tests.chart.render import chart_metadata

    metadata = chart_metadata()
    assert metadata["apiVersion"] == "v2"
    assert metadata["kubeVersion"] == ">=1.29.0-0"


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_every_object_is_namespaced_labelled_and_named(
    renders: dict[str, Rendered], case: str
) -> None:
    seen: set[tuple[str, str]] = set()
    for obj in renders[case].objects:
        meta = obj["metadata"]
        where = f"{obj['kind']}/{meta['name']}"
        assert DNS_LABEL.match(meta["name"]), where
        assert len(meta["name"]) <= 63, where
        assert (obj["kind"], meta["name"]) not in seen, f"{where} rendered twice"
        seen.add((obj["kind"], meta["name"]))
        if not (obj["kind"] == "ConfigMap" and meta["name"].endswith("-dashboard")):
            assert meta["namespace"] == NAMESPACE, where
        for label in STANDARD_LABELS:
            assert label in meta["labels"], f"{where} lacks {label}"
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_selectors_never_carry_the_version(renders: dict[str, Rendered], case: str) -> None:
    rendered = renders[case]
    selectors = [
        obj["spec"]["selector"]["matchLabels"]
        for obj in rendered.objects
        if obj["kind"] in ("Deployment", "StatefulSet", "PodDisruptionBudget")
    ]
    selectors += [obj["spec"]["selector"] for obj in rendered.of_kind("Service")]
    assert selectors
    for selector in selectors:
        assert set(selector) >= {"app.kubernetes.io/name", "app.kubernetes.io/instance"}
        assert "app.kubernetes.io/version" not in selector
        assert "helm.sh/chart" not in selector


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_workload_selectors_match_their_pods_and_no_other_workload(
    renders: dict[str, Rendered], case: str
) -> None:
    workloads = [w for w in renders[case].workloads() if w["kind"] != "Pod"]
    for workload in workloads:
        selector = workload["spec"]["selector"]["matchLabels"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), workload["metadata"]["name"]
        for other in workloads:
            if other is not workload:
                other_labels = other["spec"]["template"]["metadata"]["labels"]
                assert not selector.items() <= other_labels.items(), (
                    f"{workload['metadata']['name']} would select {other['metadata']['name']}"
                )


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_every_celeriac_container_runs_the_cli_of_its_component(
    renders: dict[str, Rendered], case: str
) -> None:
    for workload in renders[case].workloads():
        component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
        if component in ("redis", "test"):
            continue
        (container,) = pod_spec(workload)["containers"]
        assert container["command"] == ["celeriac"]
        assert container["args"] == [component]
        assert container["name"] == component


def test_image_defaults_to_the_app_version(defaults: Rendered) -> None:
    images = {
        c["image"]
        for w in defaults.workloads()
        for c in pod_spec(w)["containers"]
        if c["name"] != "redis"
    }
    assert images == {"ghcr.io/celeriac/celeriac:0.1.0"}


def test_a_digest_pins_every_celeriac_image(renders: dict[str, Rendered]) -> None:
    rendered = renders["existing-secrets-digest"]
    for workload in rendered.workloads():
        for container in pod_spec(workload)["containers"]:
            if container["name"] == "redis":
                assert container["image"] == "docker.io/library/redis:7.2.8-alpine"
            else:
                assert container["image"] == "ghcr.io/celeriac/celeriac@sha256:" + "ab" * 32
        assert pod_spec(workload)["imagePullSecrets"] == [{"name": "regcred"}]
        assert pod_spec(workload)["serviceAccountName"] == "tasks"
    assert not rendered.of_kind("ServiceAccount")


def test_a_component_image_overrides_the_shared_one() -> None:
    from tests.chart.render import render

    rendered = render({"api": {"image": {"repository": "example.com/api", "tag": "v2"}}})
    api = rendered.get("Deployment", "celeriac-api")
    assert pod_spec(api)["containers"][0]["image"] == "example.com/api:v2"
    worker = rendered.get("Deployment", "celeriac-worker-default")
    assert pod_spec(worker)["containers"][0]["image"] == "ghcr.io/celeriac/celeriac:0.1.0"


def test_your_own_tasks_image_and_app_reach_every_component() -> None:
    from tests.chart.render import env_of, render

    rendered = render(
        {"image": {"repository": "example.com/mytasks", "tag": "1.4"}, "app": "mytasks.celery:app"}
    )
    for workload in rendered.workloads():
        container = pod_spec(workload)["containers"][0]
        if container["name"] in ("redis", "test"):
            continue
        assert container["image"] == "example.com/mytasks:1.4"
        assert env_of(container)["CELERIAC_APP"]["value"] == "mytasks.celery:app"


def test_the_broker_key_prefix_reaches_every_component() -> None:
    from tests.chart.render import env_of, render

    def prefixes(rendered: Rendered) -> set[str | None]:
        found = set()
        for workload in rendered.workloads():
            container = pod_spec(workload)["containers"][0]
            if container["name"] not in ("redis", "test"):
                entry = env_of(container).get("CELERIAC_BROKER_KEY_PREFIX")
                found.add(None if entry is None else entry["value"])
        return found

    assert prefixes(render()) == {None}
    assert prefixes(render({"celery": {"brokerKeyPrefix": "billing:"}})) == {"billing:"}


def test_a_name_too_long_for_63_characters_fails_instead_of_colliding() -> None:
    from tests.chart.render import RenderError, render

    with pytest.raises(RenderError, match=r"longer than 63 characters.*fullnameOverride"):
        render({"fullnameOverride": "x" * 60})
    rendered = render({"fullnameOverride": "x" * 40})
    names = [obj["metadata"]["name"] for obj in rendered.objects]
    assert "x" * 40 in names  # the ServiceAccount carries the full name itself
    assert all(len(name) <= 63 and name.startswith("x" * 40) for name in names)
