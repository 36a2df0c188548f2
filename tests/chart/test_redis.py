"""Redis: one replica with a password from a Secret and AOF on a claim; replicas with Sentinel;
or an external Redis."""

from __future__ import annotations

import base64

import pytest

from tests.chart.render import Rendered, RenderError, env_of, pod_spec

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


SENTINEL_HOSTS = [
    f"celeriac-redis-{i}.celeriac-redis-headless.tasks.svc.cluster.local" for i in range(3)
]


def test_sentinel_pods_pdb_and_placement(renders: dict[str, Rendered]) -> None:
    rendered = renders["sentinel"]
    statefulset = rendered.get("StatefulSet", "celeriac-redis")
    assert statefulset["spec"]["replicas"] == 3
    assert statefulset["spec"]["serviceName"] == "celeriac-redis-headless"
    spec = pod_spec(statefulset)
    redis, sentinel = spec["containers"]
    assert (redis["name"], sentinel["name"]) == ("redis", "sentinel")
    assert redis["command"] == ["sh", "/etc/redis/start-redis.sh"]
    assert sentinel["command"] == ["sh", "/etc/redis/start-sentinel.sh"]
    assert sentinel["ports"] == [{"name": "sentinel", "containerPort": 26379, "protocol": "TCP"}]
    for container, port in ((redis, "6379"), (sentinel, "26379")):
        assert env_of(container)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == (
            "metadata.name"
        )
        for probe in ("livenessProbe", "readinessProbe"):
            command = container[probe]["exec"]["command"][-1]
            assert f"redis-cli -h 127.0.0.1 -p {port} ping" in command
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["runAsNonRoot"] is True
    assert "startupProbe" in redis
    mounts = {m["name"]: m["mountPath"] for m in sentinel["volumeMounts"]}
    assert mounts["sentinel-config"] == "/etc/sentinel"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["sentinel-config"]
    selector = {
        "app.kubernetes.io/name": "celeriac",
        "app.kubernetes.io/instance": "celeriac",
        "app.kubernetes.io/component": "redis",
    }
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"] == {
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": selector},
    }
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["labelSelector"] == {"matchLabels": selector}
    budget = rendered.get("PodDisruptionBudget", "celeriac-redis")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == selector
    headless = rendered.get("Service", "celeriac-redis-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert {p["name"]: p["port"] for p in headless["spec"]["ports"]} == {
        "redis": 6379,
        "sentinel": 26379,
    }
    policy = rendered.get("NetworkPolicy", "celeriac-redis")
    (rule,) = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["redis", "sentinel"]


def test_sentinel_required_anti_affinity_and_user_placement() -> None:
    from tests.chart.render import render

    hard = render({"redis": {"sentinel": {"enabled": True, "antiAffinity": "hard"}}})
    spec = pod_spec(hard.get("StatefulSet", "celeriac-redis"))
    (term,) = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    mine = {"nodeAffinity": {"x": 1}}
    placed = render({"redis": {"affinity": mine, "replicas": 5, "sentinel": {"enabled": True}}})
    statefulset = placed.get("StatefulSet", "celeriac-redis")
    assert pod_spec(statefulset)["affinity"] == mine
    assert statefulset["spec"]["replicas"] == 5
    script = placed.get("ConfigMap", "celeriac-redis")["data"]["ha.sh"]
    assert "QUORUM=3" in script.splitlines()


def test_sentinel_scripts_and_config(renders: dict[str, Rendered]) -> None:
    data = renders["sentinel"].get("ConfigMap", "celeriac-redis")["data"]
    config = data["redis.conf"].splitlines()
    assert "min-replicas-to-write 1" in config
    assert "min-replicas-max-lag 10" in config
    head = data["ha.sh"].splitlines()
    assert f"HOSTS='{' '.join(SENTINEL_HOSTS)}'" in head
    assert "MASTER_NAME='celeriac'" in head
    assert "QUORUM=2" in head
    assert "DOWN_AFTER_MS=5000" in head
    assert "FAILOVER_TIMEOUT_MS=60000" in head
    assert "SENTINEL get-master-addr-by-name" in data["ha.sh"]
    redis = data["start-redis.sh"]
    for line in ("requirepass", "masterauth", "replica-announce-ip", "replicaof"):
        assert f"printf '{line} " in redis
    sentinel = data["start-sentinel.sh"]
    for line in (
        'requirepass "$REDISCLI_AUTH"',
        "sentinel monitor $MASTER_NAME $master $QUORUM",
        'sentinel auth-pass $MASTER_NAME "$REDISCLI_AUTH"',
        "sentinel down-after-milliseconds $MASTER_NAME $DOWN_AFTER_MS",
        "sentinel failover-timeout $MASTER_NAME $FAILOVER_TIMEOUT_MS",
        "sentinel resolve-hostnames yes",
        "sentinel announce-hostnames yes",
        "sentinel announce-ip $SELF",
    ):
        assert line in sentinel.splitlines()
    assert '> "$SENTINEL_DIR/sentinel.conf"' in sentinel


def test_sentinel_clients_and_no_password_in_plain_text(renders: dict[str, Rendered]) -> None:
    rendered = renders["sentinel"]
    url = ";".join(f"sentinel://{host}:26379" for host in SENTINEL_HOSTS)
    for container in celeriac_containers(rendered):
        env = env_of(container)
        assert env["CELERIAC_BROKER_URL"]["value"] == url
        assert env["CELERIAC_REDIS_SENTINEL_MASTER"]["value"] == "celeriac"
        assert env["CELERIAC_REDIS_WAIT_REPLICAS"]["value"] == "1"
        assert env["CELERIAC_REDIS_WAIT_TIMEOUT_SECONDS"]["value"] == "1"
        assert env["CELERIAC_REDIS_PASSWORD_FILE"]["value"] == "/etc/celeriac/redis/password"
    secret = rendered.get("Secret", "celeriac-redis")["data"]["redis-password"]
    password = base64.b64decode(secret).decode()
    for obj in rendered.objects:
        if obj["kind"] != "Secret":
            assert password not in str(obj), obj["metadata"]["name"]


def test_plain_redis_has_no_sentinel_parts(defaults: Rendered) -> None:
    assert not defaults.has("PodDisruptionBudget", "celeriac-redis")
    data = defaults.get("ConfigMap", "celeriac-redis")["data"]
    assert set(data) == {"redis.conf"}
    assert "min-replicas-to-write" not in data["redis.conf"]
    spec = pod_spec(defaults.get("StatefulSet", "celeriac-redis"))
    assert [c["name"] for c in spec["containers"]] == ["redis"]
    assert "affinity" not in spec
    service = defaults.get("Service", "celeriac-redis")
    assert [p["port"] for p in service["spec"]["ports"]] == [6379]
    for container in celeriac_containers(defaults):
        assert "CELERIAC_REDIS_SENTINEL_MASTER" not in env_of(container)


def test_the_wait_timeout_matters_only_when_publishes_wait() -> None:
    """The chart checks the WAIT timeout against the socket timeout only with waitReplicas > 0,
    as the code does (celeriac.settings)."""
    from tests.chart.render import render

    values = {"waitTimeoutSeconds": 5, "sentinel": {"enabled": True}}
    rendered = render({"redis": {**values, "waitReplicas": 0}})
    (api,) = pod_spec(rendered.get("Deployment", "celeriac-api"))["containers"]
    assert env_of(api)["CELERIAC_REDIS_WAIT_REPLICAS"]["value"] == "0"
    with pytest.raises(RenderError, match=r"must be less than celery\.redisSocketTimeoutSeconds"):
        render({"redis": {**values, "waitReplicas": 1}})
