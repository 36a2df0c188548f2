"""API: Deployment and Service, optional Ingress and CPU HPA, tokens from a Secret file."""

from __future__ import annotations

import base64

import pytest

from celeriac.api.settings import DEFAULT_PORT as API_PORT
from tests.chart.render import Rendered, env_of, pod_spec, render

pytestmark = pytest.mark.chart


def test_api_serves_on_its_service(defaults: Rendered) -> None:
    spec = pod_spec(defaults.get("Deployment", "celeriac-api"))
    (container,) = spec["containers"]
    assert container["ports"] == [{"name": "http", "containerPort": API_PORT, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    service = defaults.get("Service", "celeriac-api")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": API_PORT, "targetPort": "http", "protocol": "TCP"}
    ]
    assert not defaults.of_kind("Ingress")
    env = env_of(container)
    # The API accepts tasks for every queue a worker group consumes.
    assert env["CELERIAC_QUEUES"]["value"] == "default"
    assert env["CELERIAC_API_PORT"]["value"] == str(API_PORT)


def test_tokens_come_from_a_generated_secret_file(defaults: Rendered) -> None:
    spec = pod_spec(defaults.get("Deployment", "celeriac-api"))
    container = spec["containers"][0]
    assert env_of(container)["CELERIAC_API_TOKENS_FILE"]["value"] == "/etc/celeriac/api/tokens"
    assert "CELERIAC_API_TOKENS" not in env_of(container)
    volume = next(v for v in spec["volumes"] if v["name"] == "api-tokens")
    assert volume["secret"]["secretName"] == "celeriac-api"
    assert volume["secret"]["items"] == [{"key": "tokens", "path": "tokens"}]
    token = base64.b64decode(defaults.get("Secret", "celeriac-api")["data"]["tokens"]).decode()
    assert len(token) == 40
    assert token.isalnum()


def test_an_existing_secret_replaces_the_generated_one(renders: dict[str, Rendered]) -> None:
    rendered = renders["existing-secrets-digest"]
    assert not rendered.has("Secret", "celeriac-api")
    spec = pod_spec(rendered.get("Deployment", "celeriac-api"))
    volume = next(v for v in spec["volumes"] if v["name"] == "api-tokens")
    assert volume["secret"]["secretName"] == "api-auth"
    assert volume["secret"]["items"] == [{"key": "list", "path": "tokens"}]


def test_ingress_and_hpa(renders: dict[str, Rendered]) -> None:
    rendered = renders["api-ingress-hpa"]
    ingress = rendered.get("Ingress", "celeriac-api")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "celeriac.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "celeriac-api", "port": {"name": "http"}}
    assert ingress["spec"]["tls"] == [
        {"secretName": "celeriac-tls", "hosts": ["celeriac.example.com"]}
    ]
    hpa = rendered.get("HorizontalPodAutoscaler", "celeriac-api")
    assert hpa["spec"]["minReplicas"] == 2
    assert hpa["spec"]["scaleTargetRef"]["name"] == "celeriac-api"
    assert "replicas" not in rendered.get("Deployment", "celeriac-api")["spec"]
    assert rendered.get("Deployment", "celeriac-worker-default")  # workers untouched


def test_allowed_tasks() -> None:
    rendered = render({"api": {"allowedTasks": ["mytasks.report", "mytasks.mail"]}})
    container = pod_spec(rendered.get("Deployment", "celeriac-api"))["containers"][0]
    assert env_of(container)["CELERIAC_API_ALLOWED_TASKS"]["value"] == (
        "mytasks.report,mytasks.mail"
    )


def test_api_off(renders: dict[str, Rendered]) -> None:
    rendered = renders["beat-api-tests-off"]
    assert not [
        obj
        for obj in rendered.objects
        if obj["metadata"]["labels"].get("app.kubernetes.io/component") == "api"
    ]
