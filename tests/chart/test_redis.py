"""Redis: one replica with a password from a Secret and AOF on a claim; or an external Redis."""

from __future__ import annotations

import base64

import pytest

from tests.chart.render import Rendered, env_of, pod_spec

pytestmark = pytest.mark.chart


def celeriac_containers(rendered: Rendered) -> list[dict[str, object]]:
    return [
        pod_spec(w)["containers"][0]
        for w in rendered.workloads()
        if w["metadata"]["labels"]["app.kubernetes.io/component"] not in ("redis", "test")
    ]


def test_bundled_redis(defaults: Rendered) -> None:
    statefulset = defaults.get("StatefulSet", "celeriac-redis")
    assert statefulset["spec"]["replicas"] == 1
    assert statefulset["spec"]["serviceName"] == "celeriac-redis-headless"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    config = defaults.get("ConfigMap", "celeriac-redis")["data"]["redis.conf"]
    assert "appendonly yes" in config.splitlines()
    assert "appendfsync everysec" in config.splitlines()
    assert "maxmemory-policy noeviction" in config.splitlines()
    (container,) = pod_spec(statefulset)["containers"]
    assert "--include /tmp/auth.conf" in container["args"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "redis-cli" in container[probe]["exec"]["command"][-1]
    assert container["resources"]["limits"]["memory"] == "1Gi"
    assert not any(v["name"] == "data" for v in pod_spec(statefulset)["volumes"])
    password = base64.b64decode(defaults.get("Secret", "celeriac-redis")["data"]["redis-password"])
    assert len(password) == 32


def test_clients_reach_bundled_redis_with_the_password_file(defaults: Rendered) -> None:
    for container in celeriac_containers(defaults):
        env = env_of(container)
        assert env["CELERIAC_BROKER_URL"]["value"] == "redis://celeriac-redis:6379/0"
        assert env["CELERIAC_REDIS_PASSWORD_FILE"]["value"] == "/etc/celeriac/redis/password"
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["redis-password"]["mountPath"] == "/etc/celeriac/redis"
        assert mounts["redis-password"]["readOnly"] is True


def test_persistence_off_uses_an_empty_dir(renders: dict[str, Rendered]) -> None:
    statefulset = renders["persistence-off"].get("StatefulSet", "celeriac-redis")
    assert "volumeClaimTemplates" not in statefulset["spec"]
    assert {"name": "data", "emptyDir": {}} in pod_spec(statefulset)["volumes"]


@pytest.mark.parametrize("case", ["external-redis", "external-redis-no-password"])
def test_external_redis_switches_the_bundled_one_off(
    renders: dict[str, Rendered], case: str
) -> None:
    rendered = renders[case]
    components = {
        obj["metadata"]["labels"].get("app.kubernetes.io/component") for obj in rendered.objects
    }
    assert "redis" not in components
    for container in celeriac_containers(rendered):
        env = env_of(container)
        if case == "external-redis":
            assert env["CELERIAC_BROKER_URL"]["value"] == "rediss://redis.example.com:6380/0"
            assert env["CELERIAC_REDIS_PASSWORD_FILE"]["value"] == "/etc/celeriac/redis/password"
        else:
            assert env["CELERIAC_BROKER_URL"]["value"] == "redis://redis.infra.svc:6379/2"
            assert "CELERIAC_REDIS_PASSWORD_FILE" not in env
    spec = pod_spec(rendered.get("Deployment", "celeriac-exporter"))
    volumes = {v["name"]: v for v in spec["volumes"]}
    if case == "external-redis":
        assert volumes["redis-password"]["secret"] == {
            "secretName": "broker",
            "defaultMode": 0o440,
            "items": [{"key": "password", "path": "password"}],
        }
    else:
        assert "redis-password" not in volumes


def test_existing_redis_secret(renders: dict[str, Rendered]) -> None:
    rendered = renders["existing-secrets-digest"]
    assert not rendered.has("Secret", "celeriac-redis")
    statefulset = rendered.get("StatefulSet", "celeriac-redis")
    volume = next(v for v in pod_spec(statefulset)["volumes"] if v["name"] == "password")
    assert volume["secret"]["secretName"] == "redis-auth"
    assert volume["secret"]["items"] == [{"key": "pw", "path": "password"}]


def test_appendfsync_always() -> None:
    from tests.chart.render import render

    rendered = render({"redis": {"persistence": {"appendfsync": "always"}}})
    lines = rendered.get("ConfigMap", "celeriac-redis")["data"]["redis.conf"].splitlines()
    assert [line for line in lines if line.startswith("appendfsync")] == ["appendfsync always"]


def test_a_config_change_rolls_redis() -> None:
    from tests.chart.render import render

    def checksum(extra: str) -> str:
        statefulset = render({"redis": {"extraConfig": extra}}).get("StatefulSet", "celeriac-redis")
        value: str = statefulset["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    assert checksum("") == checksum("")
    assert checksum("maxmemory 800mb") != checksum("")
    config = render({"redis": {"extraConfig": "maxmemory 800mb"}}).get(
        "ConfigMap", "celeriac-redis"
    )
    assert config["data"]["redis.conf"].splitlines()[-1] == "maxmemory 800mb"
