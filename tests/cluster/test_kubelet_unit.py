"""The process kubelet's spec translation, without a cluster or root: env resolution (the
Downward API's rounding and divisors), the allow-list, command mapping, hosts entries and
volume projections. The chart's own pod templates must pass the allow-list."""

from __future__ import annotations

import copy
import stat
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import hosts, podspec, volumes
from tests.cluster.podspec import SpecError

NODE = {"cpu": "2", "memory": "8Gi"}


def pod(**container: Any) -> dict[str, Any]:
    spec = {"name": "main", "image": "celeriac:1", "command": ["celeriac"], "args": ["worker"]}
    spec.update(container)
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "x"}},
        "spec": {"nodeName": "n1", "serviceAccountName": "sa", "containers": [spec]},
        "status": {"podIP": "10.231.1.2", "hostIP": "10.231.0.1"},
    }


def env_of(p: dict[str, Any], lookup: podspec.Lookup = lambda *_: None) -> dict[str, str]:
    return podspec.container_env(p, p["spec"]["containers"][0], lookup, NODE)


def cpu_ref(resource: str = "limits.cpu", divisor: str | None = "1") -> list[dict[str, Any]]:
    ref: dict[str, Any] = {"containerName": "main", "resource": resource}
    if divisor is not None:
        ref["divisor"] = divisor
    return [{"name": "V", "valueFrom": {"resourceFieldRef": ref}}]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        ("1.5", Decimal("1.5")),
        ("1Gi", Decimal(2**30)),
        ("256Mi", Decimal(2**28)),
        ("1G", Decimal(10**9)),
        ("1e3", Decimal(1000)),
        (3, Decimal(3)),
    ],
)
def test_quantity(text: str | int, value: Decimal) -> None:
    assert podspec.quantity(text) == value


def test_quantity_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        podspec.quantity("1 cpu")


@pytest.mark.parametrize(
    ("limit", "divisor", "expected"),
    [
        ("500m", "1", "1"),  # rounded up: the worker's pool from limits.cpu
        ("1", "1", "1"),
        ("1500m", "1", "2"),
        ("2", None, "2"),  # divisor defaults to 1
        ("1500m", "0", "2"),  # the API server stores an unset divisor as "0": 1
        ("1500m", "1m", "1500"),
        ("250m", "100m", "3"),
    ],
)
def test_resource_field_ref_cpu_rounds_up(limit: str, divisor: str | None, expected: str) -> None:
    p = pod(resources={"limits": {"cpu": limit}}, env=cpu_ref(divisor=divisor))
    assert env_of(p)["V"] == expected


def test_resource_field_ref_memory_divisor() -> None:
    env = [
        {"name": "B", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
        {
            "name": "M",
            "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
        },
    ]
    p = pod(resources={"limits": {"memory": "1Gi"}}, env=env)
    assert env_of(p) == {"B": str(2**30), "M": "1024"}


def test_resource_field_ref_without_limit_reads_node_allocatable() -> None:
    assert env_of(pod(env=cpu_ref()))["V"] == "2"
    requests = pod(resources={"limits": {"cpu": "3"}}, env=cpu_ref("requests.cpu"))
    assert env_of(requests)["V"] == "3"  # a request defaults to the limit


def test_resource_field_ref_refuses_other_resources() -> None:
    with pytest.raises(SpecError, match="ephemeral-storage"):
        env_of(pod(env=cpu_ref("limits.ephemeral-storage")))


def test_env_sources_and_expansion() -> None:
    data = {("Secret", "s"): {"password": "pw"}, ("ConfigMap", "c"): {"a": "1", "b": "2"}}

    def lookup(kind: str, namespace: str, name: str) -> dict[str, str] | None:
        assert namespace == "ns"
        return data.get((kind, name))

    env = [
        {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
        {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "a"}}},
        {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "URL", "value": "redis://$(IP):6379/$(UNDEFINED)$$(A)"},
        {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "x", "key": "k", "optional": True}}},
    ]
    p = pod(env=env, envFrom=[{"prefix": "CM_", "configMapRef": {"name": "c"}}])
    assert env_of(p, lookup) == {
        "CM_a": "1",
        "CM_b": "2",
        "PW": "pw",
        "A": "1",
        "NAME": "p",
        "IP": "10.231.1.2",
        "APP": "x",
        "URL": "redis://10.231.1.2:6379/$(UNDEFINED)$(A)",
    }


def test_missing_secret_key_is_a_config_error() -> None:
    env = [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope"}}}]
    with pytest.raises(SpecError, match="key 'nope' in Secret 's' not found") as info:
        env_of(pod(env=env), lambda *_: {"password": "pw"})
    assert info.value.reason == "CreateContainerConfigError"


def test_command_mapping() -> None:
    table = podspec.executables()
    assert table["celeriac"] == str(Path(sys.prefix) / "bin" / "celeriac")
    assert Path(table["redis-server"]).name == "redis-server"
    argv = podspec.container_argv(pod()["spec"]["containers"][0], {}, table)
    assert argv == [table["celeriac"], "worker"]
    assert podspec.resolve_executable("/usr/local/bin/celeriac", table) == table["celeriac"]
    path = podspec.container_path(table).split(":")
    assert str(Path(sys.prefix) / "bin") in path


def test_unknown_command_fails_naming_it() -> None:
    container = pod(command=["nginx", "-g", "daemon off;"])["spec"]["containers"][0]
    with pytest.raises(SpecError, match="command 'nginx' is not provided"):
        podspec.container_argv(container, {}, podspec.executables())


def test_no_command_fails() -> None:
    container = pod(command=None)["spec"]["containers"][0]
    with pytest.raises(SpecError, match="entrypoint is unknown"):
        podspec.container_argv(container, {}, {"celeriac": "/x"})


def test_supported_pod_passes_the_allow_list() -> None:
    p = pod(
        ports=[{"name": "http", "containerPort": 8000, "protocol": "TCP"}],
        securityContext={"privileged": False, "capabilities": {"drop": ["ALL"]}},
        livenessProbe={"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"}},
        lifecycle={"preStop": {"exec": {"command": ["sleep", "1"]}}},
        terminationMessagePath="/dev/termination-log",
    )
    p["spec"].update(
        volumes=[{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
        enableServiceLinks=False,
        automountServiceAccountToken=False,
        dnsPolicy="ClusterFirst",
        tolerations=[{"key": "k", "operator": "Exists"}],
    )
    assert podspec.unsupported_fields(p) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hostNetwork": True}, "spec.hostNetwork"),
        ({"initContainers": [{"name": "i"}]}, "spec.initContainers"),
        ({"enableServiceLinks": True}, "spec.enableServiceLinks=True"),
        ({"activeDeadlineSeconds": 5}, "spec.activeDeadlineSeconds"),
        (
            {"volumes": [{"name": "t", "projected": {"sources": [{"clusterTrustBundle": {}}]}}]},
            "spec.volumes[0].projected.sources[0].clusterTrustBundle",
        ),
        ({"volumes": [{"name": "t", "hostPath": {"path": "/"}}]}, "spec.volumes[0].hostPath"),
        ({"volumes": [{"name": "t", "emptyDir": {"medium": "Memory"}}]}, "medium='Memory'"),
    ],
)
def test_unsupported_pod_fields_are_named(change: dict[str, Any], field: str) -> None:
    p = pod()
    p["spec"].update(change)
    found = podspec.unsupported_fields(p)
    assert len(found) == 1
    assert field in found[0]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lifecycle": {"postStart": {"exec": {"command": ["x"]}}}}, "lifecycle.postStart"),
        ({"securityContext": {"privileged": True}}, "securityContext.privileged=True"),
        ({"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}, "capabilities.add"),
        ({"ports": [{"containerPort": 80, "hostPort": 80}]}, "ports[0].hostPort"),
        ({"resources": {"limits": {"nvidia.com/gpu": "1"}}}, "limits.nvidia.com/gpu"),
        ({"livenessProbe": {"grpc": {"port": 1}}}, "livenessProbe.grpc"),
        ({"stdin": True}, "containers[0].stdin"),
    ],
)
def test_unsupported_container_fields_are_named(change: dict[str, Any], field: str) -> None:
    found = podspec.unsupported_fields(pod(**change))
    assert len(found) == 1
    assert field in found[0]


@pytest.mark.chart
def test_every_pod_the_chart_renders_is_supported() -> None:
    from tests.chart.render import render

    values = {"api": {"enabled": True}, "redis": {"persistence": {"enabled": True}}}
    workloads = render(values).workloads()
    assert {w["kind"] for w in workloads} == {"Deployment", "StatefulSet", "Pod"}
    for workload in workloads:
        template = workload if workload["kind"] == "Pod" else workload["spec"]["template"]
        p = {**copy.deepcopy(template), "metadata": {"name": "p", "namespace": "ns", "uid": "u"}}
        assert podspec.unsupported_fields(p) == [], workload["metadata"]["name"]
        for container in p["spec"]["containers"]:
            podspec.container_argv(container, {}, podspec.executables())  # every command runs
        if workload["metadata"]["name"].endswith("worker-default"):
            env = podspec.container_env(p, p["spec"]["containers"][0], lambda *_: None, NODE)
            assert env["CELERIAC_WORKER_CPU_LIMIT"] == "1"
            assert env["CELERIAC_WORKER_MEMORY_LIMIT_BYTES"] == str(2**30)


def slice_of(service: str, ready: dict[str, bool], port: int = 6379) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "ns",
            "name": f"{service}-abc",
            "labels": {"kubernetes.io/service-name": service},
        },
        "ports": [{"name": "redis", "port": port}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": ok}, "hostname": "r-0"}
            for ip, ok in ready.items()
        ],
    }


def service(name: str, port: int = 6379, target: Any = "redis", **spec: Any) -> dict[str, Any]:
    ports = [{"name": "redis", "port": port, "targetPort": target}]
    return {"metadata": {"namespace": "ns", "name": name}, "spec": {"ports": ports, **spec}}


def test_hosts_point_service_names_at_a_ready_endpoint() -> None:
    ready = {"10.231.1.9": True, "10.231.1.3": False, "10.231.1.10": True}
    entries = hosts.entries([service("redis")], [slice_of("redis", ready)])
    both = ["10.231.1.9", "10.231.1.10"]
    assert entries.lines == {
        "redis": both,
        "redis.ns": both,
        "redis.ns.svc": both,
        "redis.ns.svc.cluster.local": both,
    }
    assert "10.231.1.9\tredis.ns.svc\n10.231.1.10\tredis.ns.svc\n" in entries.text()
    assert "10.231.1.3" not in entries.text()
    assert entries.text().startswith(hosts.HEADER)


def test_hosts_headless_service_names_each_pod() -> None:
    svc = service("h", clusterIP="None")
    entries = hosts.entries([svc], [slice_of("h", {"10.231.1.4": True})])
    assert entries.lines["r-0.h.ns.svc.cluster.local"] == ["10.231.1.4"]


def test_hosts_without_ready_endpoint_has_no_entry() -> None:
    entries = hosts.entries([service("redis")], [slice_of("redis", {"10.231.1.3": False})])
    assert entries.lines == {}


@pytest.mark.parametrize(
    ("svc", "slice_port"),
    [(service("r", port=80, target=6379), 6379), (service("r", port=80, target="redis"), 6379)],
)
def test_hosts_refuse_a_port_remap(svc: dict[str, Any], slice_port: int) -> None:
    entries = hosts.entries([svc], [slice_of("r", {"10.231.1.4": True}, port=slice_port)])
    assert entries.lines == {}
    assert "port 80 targets" in entries.refused[("ns", "r")]


def test_secret_projection_items_and_modes(tmp_path: Path) -> None:
    secret = {"data": {"password": "cHc=", "other": "eA=="}}
    data = volumes.decoded("Secret", secret)
    items = [{"key": "password", "path": "sub/password"}]
    volumes.project(tmp_path / "v", data, items, 0o440, None)
    target = tmp_path / "v" / "sub" / "password"
    assert target.read_bytes() == b"pw"
    assert stat.S_IMODE(target.stat().st_mode) == 0o440
    assert not (tmp_path / "v" / "other").exists()
    volumes.project(tmp_path / "all", data, None, 0o644, None)
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["other", "password"]
    with pytest.raises(SpecError, match="key 'nope' not found"):
        volumes.project(tmp_path / "bad", data, [{"key": "nope", "path": "x"}], 0o644, None)


def test_prepare_waits_for_missing_objects_and_unbound_claims(tmp_path: Path) -> None:
    p = pod()
    p["spec"]["volumes"] = [{"name": "cm", "configMap": {"name": "missing"}}]
    with pytest.raises(SpecError, match="ConfigMap 'missing' not found"):
        volumes.prepare(p, tmp_path, lambda *_: None, lambda *_: None)
    p["spec"]["volumes"] = [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]
    with pytest.raises(SpecError, match="not bound yet"):
        volumes.prepare(p, tmp_path, lambda *_: None, lambda *_: None)
    bound = str(tmp_path / "pv")
    assert volumes.prepare(p, tmp_path, lambda *_: None, lambda *_: bound) == {"d": bound}


# What the ServiceAccount admission plugin adds to a pod with automountServiceAccountToken: true.
TOKEN_VOLUME = {
    "name": "kube-api-access-x1",
    "projected": {
        "defaultMode": 420,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {
                "configMap": {
                    "name": "kube-root-ca.crt",
                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                }
            },
            {
                "downwardAPI": {
                    "items": [
                        {
                            "path": "namespace",
                            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                        }
                    ]
                }
            },
        ],
    },
}
TOKEN_MOUNT = {
    "name": "kube-api-access-x1",
    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
    "readOnly": True,
}


def token_pod() -> dict[str, Any]:
    p = pod(volumeMounts=[TOKEN_MOUNT])
    p["spec"].update(automountServiceAccountToken=True, volumes=[copy.deepcopy(TOKEN_VOLUME)])
    return p


def test_a_mounted_service_account_token_passes_the_allow_list() -> None:
    assert podspec.unsupported_fields(token_pod()) == []


def test_the_token_volume_holds_a_requested_token_the_ca_and_the_namespace(
    tmp_path: Path,
) -> None:
    requests: list[tuple[str, str | None, int | None]] = []

    def token(p: dict[str, Any], audience: str | None, seconds: int | None) -> str:
        requests.append((p["metadata"]["uid"], audience, seconds))
        return "eyJtoken"

    root_ca = {"data": {"ca.crt": "-----BEGIN CERTIFICATE-----\n"}}

    def lookup(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return (
            root_ca if (kind, namespace, name) == ("ConfigMap", "ns", "kube-root-ca.crt") else None
        )

    folders = volumes.prepare(token_pod(), tmp_path, lookup, lambda *_: None, token)
    folder = Path(folders["kube-api-access-x1"])
    assert (folder / "token").read_text() == "eyJtoken"
    assert (folder / "ca.crt").read_text() == "-----BEGIN CERTIFICATE-----\n"
    assert (folder / "namespace").read_text() == "ns"
    assert stat.S_IMODE((folder / "token").stat().st_mode) == 0o644
    assert requests == [("u-1", None, 3607)]  # no audience: the API server's own


def test_the_token_volume_waits_for_the_root_ca_and_reports_a_refused_token(
    tmp_path: Path,
) -> None:
    with pytest.raises(SpecError, match=r"ConfigMap 'kube-root-ca\.crt' not found"):
        volumes.prepare(token_pod(), tmp_path, lambda *_: None, lambda *_: None, lambda *_: "t")
    with pytest.raises(SpecError, match="no TokenRequest client"):
        volumes.prepare(token_pod(), tmp_path, lambda *_: {"data": {}}, lambda *_: None)


@pytest.mark.parametrize(
    ("server", "port"), [("https://10.231.0.1:6443", "6443"), ("https://10.231.0.1", "443")]
)
def test_kubernetes_service_env_names_the_api_server(server: str, port: str) -> None:
    assert podspec.kubernetes_service_env(server) == {
        "KUBERNETES_SERVICE_HOST": "10.231.0.1",
        "KUBERNETES_SERVICE_PORT": port,
        "KUBERNETES_SERVICE_PORT_HTTPS": port,
    }


def test_a_mount_path_through_a_symlink_stays_inside_the_container_root(tmp_path: Path) -> None:
    from tests.cluster.sandbox import inside

    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")  # as on Debian: absolute, to the host's /run
    (root / "etc").mkdir()
    (root / "etc" / "rel").symlink_to("../run")
    target = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert inside(str(root), target) == f"{root}/run/secrets/kubernetes.io/serviceaccount"
    assert inside(str(root), "/etc/rel/x") == f"{root}/run/x"
    assert inside(str(root), "/../../tmp") == f"{root}/tmp"
    assert inside(str(root), "/tmp") == f"{root}/tmp"


def test_the_checkout_and_venv_are_provided_once_each() -> None:
    folders = podspec.provided_folders()
    checkout = str(Path(podspec.__file__).resolve().parents[2])
    assert checkout in folders
    assert all(Path(folder).is_dir() for folder in folders)
    # The venv and redis-server's folder are inside a provided folder (or provided).
    for needed in (sys.prefix, podspec.executables()["redis-server"]):
        path = Path(needed).resolve()
        assert any(path == Path(f) or Path(f) in path.parents for f in folders), needed
    for folder in folders:
        assert not any(Path(other) in Path(folder).parents for other in folders)
