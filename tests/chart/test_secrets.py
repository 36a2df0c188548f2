"""No secret in a plain environment value: passwords and tokens reach the containers only as
files mounted from Secrets, and NOTES.txt never prints one."""

from __future__ import annotations

import base64
import json

import pytest

from celeriac.api.settings import DEFAULT_PORT as API_PORT
from tests.chart.matrix import MATRIX
from tests.chart.render import CHART_DIR, Rendered, containers, render

pytestmark = pytest.mark.chart

SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "KEY")
# Names with one of those words that hold no secret: the prefix of the broker's key names.
NOT_SECRET = frozenset({"CELERIAC_BROKER_KEY_PREFIX"})


def secret_values(rendered: Rendered) -> list[str]:
    values = []
    for secret in rendered.of_kind("Secret"):
        for encoded in secret.get("data", {}).values():
            for line in base64.b64decode(encoded).decode().splitlines():
                if line.strip():
                    values.append(line.strip())
        values.extend(secret.get("stringData", {}).values())
    return values


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_no_secret_in_a_plain_env_value(renders: dict[str, Rendered], case: str) -> None:
    rendered = renders[case]
    secrets = secret_values(rendered)
    if case == "defaults":
        assert len(secrets) == 2  # the Redis password and the API token
    for workload in rendered.workloads():
        for container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            for entry in container.get("env", []):
                if "valueFrom" in entry:
                    # Secrets come as files, not environment values.
                    assert "secretKeyRef" not in entry["valueFrom"], where
                    continue
                value = entry["value"]
                assert not any(secret in value for secret in secrets), f"{where} {entry['name']}"
                if entry["name"] not in NOT_SECRET and any(
                    w in entry["name"] for w in SECRET_WORDS
                ):
                    assert entry["name"].endswith("_FILE"), f"{where} {entry['name']}"
                    assert value.startswith("/etc/celeriac/"), f"{where} {entry['name']}"
            # Nor anywhere else in the container: command, args, probes.
            text = json.dumps(container)
            assert not any(secret in text for secret in secrets), where
    assert not any(secret in rendered.notes for secret in secrets)


def test_secret_files_are_mounted_read_only(defaults: Rendered) -> None:
    for workload in defaults.workloads():
        spec = (
            workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]
        )
        secret_volumes = {v["name"] for v in spec["volumes"] if "secret" in v}
        for container in containers(workload):
            for mount in container["volumeMounts"]:
                if mount["name"] in secret_volumes:
                    assert mount["readOnly"] is True


def test_generated_secrets_are_looked_up_and_kept_across_upgrades() -> None:
    """`helm template` has no cluster, so lookup finds nothing and a value is generated; on an
    upgrade the templates reuse the Secret that lookup finds instead."""
    for template, key in (("redis/secret.yaml", "redis-password"), ("api/secret.yaml", "tokens")):
        text = (CHART_DIR / "templates" / template).read_text(encoding="utf-8")
        assert f'"celeriac.generatedSecretValue" (dict "root" . "name" $name "key" "{key}"' in text
    # The helper looks the Secret up and keeps what it holds (tests/cluster/test_helm.py
    # upgrades a real release and finds the same token).
    helpers = (CHART_DIR / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    assert 'lookup "v1" "Secret" .root.Release.Namespace .name' in helpers
    assert 'dig "data" .key ""' in helpers
    first = render().get("Secret", "celeriac-redis")["data"]["redis-password"]
    assert render().get("Secret", "celeriac-redis")["data"]["redis-password"] != first


def test_notes_explain_how_to_reach_the_api_and_watch_scaling(defaults: Rendered) -> None:
    notes = defaults.notes
    assert f"port-forward svc/celeriac-api {API_PORT}:{API_PORT}" in notes
    assert "get secret celeriac-api" in notes
    assert "get scaledobject,hpa,deploy" in notes
    assert "helm test celeriac" in notes
