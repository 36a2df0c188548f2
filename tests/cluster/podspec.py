"""What the process kubelet reads from a pod spec: pure functions, no cluster, no root.

The pod is the API's JSON (camelCase dicts), so the allow-list names fields as `kubectl` does.

- `unsupported_fields(pod)`: every field of the spec outside the allow-list (or with a value the
  agent cannot honour), as paths like ``spec.containers[0].lifecycle.postStart``.
- `container_env(...)`: env and envFrom resolved as the kubelet does (valueFrom secretKeyRef,
  configMapKeyRef, fieldRef, resourceFieldRef with divisor, rounded up; $(VAR) expansion).
- `container_argv(...)`: command + args with the image's executables replaced by the machine's.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

Obj = dict[str, Any]


class SpecError(Exception):
    """A container cannot be created from this spec; ``reason`` is the kubelet's status reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --- allow-list ------------------------------------------------------------------------------

ANY = "any"  # any value; a dict = an object with these fields; [dict] = a list of such objects


def only(*values: object) -> frozenset[object]:
    """The field is supported with these values only."""
    return frozenset(values)


_KEY_REF = {"name": ANY, "key": ANY, "optional": ANY}
_ITEMS = [{"key": ANY, "path": ANY, "mode": ANY}]
_PROBE = {
    "exec": {"command": ANY},
    "httpGet": {"path": ANY, "port": ANY, "scheme": only("HTTP"), "httpHeaders": ANY},
    "tcpSocket": {"port": ANY},
    "initialDelaySeconds": ANY,
    "periodSeconds": ANY,
    "timeoutSeconds": ANY,
    "successThreshold": ANY,
    "failureThreshold": ANY,
}
_SECCOMP = {"type": only("RuntimeDefault", "Unconfined")}
CONTAINER: Obj = {
    "name": ANY,
    "image": ANY,  # not pulled: the command runs from this machine (container_argv)
    "imagePullPolicy": ANY,
    "command": ANY,
    "args": ANY,
    "workingDir": ANY,
    "env": [
        {
            "name": ANY,
            "value": ANY,
            "valueFrom": {
                "secretKeyRef": _KEY_REF,
                "configMapKeyRef": _KEY_REF,
                "fieldRef": {"fieldPath": ANY, "apiVersion": only("v1")},
                "resourceFieldRef": {"containerName": ANY, "resource": ANY, "divisor": ANY},
            },
        }
    ],
    "envFrom": [
        {
            "prefix": ANY,
            "secretRef": {"name": ANY, "optional": ANY},
            "configMapRef": {"name": ANY, "optional": ANY},
        }
    ],
    "ports": [{"name": ANY, "containerPort": ANY, "protocol": only("TCP")}],
    "resources": {
        "limits": {"cpu": ANY, "memory": ANY},
        "requests": {"cpu": ANY, "memory": ANY},
    },
    "securityContext": {
        "runAsUser": ANY,
        "runAsGroup": ANY,
        "runAsNonRoot": ANY,
        "readOnlyRootFilesystem": ANY,
        "allowPrivilegeEscalation": ANY,
        "privileged": only(False),
        "capabilities": {"drop": ANY},
        "seccompProfile": _SECCOMP,
    },
    "startupProbe": _PROBE,
    "livenessProbe": _PROBE,
    "readinessProbe": _PROBE,
    "lifecycle": {"preStop": {"exec": {"command": ANY}, "sleep": {"seconds": ANY}}},
    "volumeMounts": [
        {
            "name": ANY,
            "mountPath": ANY,
            "readOnly": ANY,
            "subPath": ANY,
            "mountPropagation": only("None"),
        }
    ],
    "terminationMessagePath": only("/dev/termination-log"),
    "terminationMessagePolicy": only("File", "FallbackToLogsOnError"),
}
VOLUME: Obj = {
    "name": ANY,
    "secret": {"secretName": ANY, "items": _ITEMS, "defaultMode": ANY, "optional": ANY},
    "configMap": {"name": ANY, "items": _ITEMS, "defaultMode": ANY, "optional": ANY},
    "emptyDir": {"sizeLimit": ANY, "medium": only("")},
    "persistentVolumeClaim": {"claimName": ANY, "readOnly": ANY},
    # What the ServiceAccount admission plugin adds for automountServiceAccountToken: a bound
    # token (TokenRequest), the cluster CA (ConfigMap kube-root-ca.crt), the namespace.
    "projected": {
        "sources": [
            {
                "serviceAccountToken": {"audience": ANY, "expirationSeconds": ANY, "path": ANY},
                "configMap": {"name": ANY, "items": _ITEMS, "optional": ANY},
                "secret": {"name": ANY, "items": _ITEMS, "optional": ANY},
                "downwardAPI": {
                    "items": [
                        {
                            "path": ANY,
                            "mode": ANY,
                            "fieldRef": {"fieldPath": ANY, "apiVersion": only("v1")},
                        }
                    ]
                },
            }
        ],
        "defaultMode": ANY,
    },
}
POD_SPEC: Obj = {
    "containers": [CONTAINER],
    "volumes": [VOLUME],
    "restartPolicy": ANY,
    "terminationGracePeriodSeconds": ANY,
    "activeDeadlineSeconds": None,  # listed to say it: refused
    "securityContext": {
        "runAsUser": ANY,
        "runAsGroup": ANY,
        "runAsNonRoot": ANY,
        "fsGroup": ANY,
        "fsGroupChangePolicy": ANY,
        "supplementalGroups": ANY,
        "seccompProfile": _SECCOMP,
    },
    "serviceAccountName": ANY,
    "serviceAccount": ANY,
    # True: the admission plugin adds a `projected` token volume (VOLUME), which the agent fills
    # through the TokenRequest API (volumes.prepare), and KUBERNETES_SERVICE_* are set.
    "automountServiceAccountToken": ANY,
    "enableServiceLinks": only(False),  # Service env variables are not injected
    "hostname": ANY,
    "subdomain": ANY,
    "dnsPolicy": only("ClusterFirst", "Default"),  # names come from /etc/hosts (README)
    "imagePullSecrets": ANY,
    # The scheduler's fields: honoured by kube-scheduler before the pod reaches the node.
    "nodeName": ANY,
    "schedulerName": ANY,
    "nodeSelector": ANY,
    "affinity": ANY,
    "tolerations": ANY,
    "topologySpreadConstraints": ANY,
    "priority": ANY,
    "priorityClassName": ANY,
    "preemptionPolicy": ANY,
}


def unsupported_fields(pod: Obj) -> list[str]:
    """Every field of ``pod['spec']`` the agent does not support, as a path (empty: runnable)."""
    found: list[str] = []
    _check(pod.get("spec") or {}, POD_SPEC, "spec", found)
    return found


def _check(value: Any, allowed: Any, path: str, found: list[str]) -> None:
    if allowed is None:
        found.append(path)
    elif isinstance(allowed, frozenset):
        if value not in allowed:
            found.append(f"{path}={value!r}")
    elif isinstance(allowed, list):
        for index, item in enumerate(value or []):
            _check(item, allowed[0], f"{path}[{index}]", found)
    elif isinstance(allowed, dict):
        if not isinstance(value, dict):
            found.append(path)
            return
        for key, item in value.items():
            if item is None:
                continue
            if key not in allowed:
                found.append(f"{path}.{key}")
            else:
                _check(item, allowed[key], f"{path}.{key}", found)


# --- quantities ------------------------------------------------------------------------------

_SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[numkMGTPE]i?|)$")


def quantity(text: str | int | float) -> Decimal:
    """A Kubernetes quantity as a number: "500m" -> 0.5, "1Gi" -> 1073741824, "1e3" -> 1000."""
    match = _QUANTITY.match(str(text).strip())
    if match is None or match.group(2) in ("ni", "ui", "mi", "ki"):
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    number, suffix = Decimal(match.group(1)), match.group(2)
    if suffix[:1] in ("e", "E"):
        return number * Decimal(10) ** int(suffix[1:])
    return number * _SUFFIXES[suffix]


# --- env -------------------------------------------------------------------------------------

Lookup = Callable[[str, str, str], "Mapping[str, str] | None"]
"""lookup(kind, namespace, name): a Secret's or ConfigMap's data, decoded, or None if missing."""


def resource_field(pod: Obj, container: Obj, ref: Obj, node_allocatable: Mapping[str, str]) -> str:
    """The Downward API's value for a resourceFieldRef: ceil(quantity / divisor).

    A limit that is not set reads as the node's allocatable, as the kubelet does."""
    name = ref.get("containerName") or container["name"]
    target = next((c for c in pod["spec"]["containers"] if c["name"] == name), None)
    if target is None:
        raise SpecError("CreateContainerConfigError", f"resourceFieldRef: no container {name!r}")
    resource = ref["resource"]
    kind, _, what = resource.partition(".")
    if kind not in ("limits", "requests") or what not in ("cpu", "memory"):
        raise SpecError(
            "CreateContainerConfigError", f"resourceFieldRef: unsupported resource {resource!r}"
        )
    resources = target.get("resources") or {}
    value = (resources.get(kind) or {}).get(what)
    if value is None and kind == "requests":
        value = (resources.get("limits") or {}).get(what)
    if value is None:
        value = node_allocatable[what] if kind == "limits" else "0"
    divisor = quantity(ref.get("divisor") or "1") or Decimal(1)  # the API defaults it to "0"
    return str(math.ceil(quantity(value) / divisor))


def field_ref(pod: Obj, path: str) -> str:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
        "status.hostIPs": ",".join(i["ip"] for i in status.get("hostIPs") or []),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs") or []),
    }
    if path in simple:
        return str(simple[path] or "")
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise SpecError("CreateContainerConfigError", f"fieldRef: unsupported fieldPath {path!r}")


def _key_ref(kind: str, ref: Obj, namespace: str, lookup: Lookup) -> str | None:
    data = lookup(kind, namespace, ref["name"])
    if data is None or ref["key"] not in data:
        if ref.get("optional"):
            return None
        missing = (
            f"{kind} {ref['name']!r}"
            if data is None
            else f"key {ref['key']!r} in {kind} {ref['name']!r}"
        )
        raise SpecError("CreateContainerConfigError", f"{missing} not found")
    return data[ref["key"]]


_REFERENCE = re.compile(r"\$\((\w[\w.-]*)\)|\$\$")


def expand(text: str, env: Mapping[str, str]) -> str:
    """$(VAR) from ``env`` (left as is when undefined), $$ -> $: the kubelet's expansion."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(one, text)


def container_env(
    pod: Obj, container: Obj, lookup: Lookup, node_allocatable: Mapping[str, str]
) -> dict[str, str]:
    """The container's environment as the kubelet builds it (envFrom first, then env)."""
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        kind, ref = (
            ("Secret", source["secretRef"])
            if source.get("secretRef")
            else (
                "ConfigMap",
                source["configMapRef"],
            )
        )
        data = lookup(kind, namespace, ref["name"])
        if data is None:
            if ref.get("optional"):
                continue
            raise SpecError("CreateContainerConfigError", f"{kind} {ref['name']!r} not found")
        for key, value in data.items():
            env[(source.get("prefix") or "") + key] = value
    for var in container.get("env") or []:
        source = var.get("valueFrom")
        value: str | None
        if source is None:
            value = expand(var.get("value") or "", env)
        elif "secretKeyRef" in source:
            value = _key_ref("Secret", source["secretKeyRef"], namespace, lookup)
        elif "configMapKeyRef" in source:
            value = _key_ref("ConfigMap", source["configMapKeyRef"], namespace, lookup)
        elif "fieldRef" in source:
            value = field_ref(pod, source["fieldRef"]["fieldPath"])
        else:
            value = resource_field(pod, container, source["resourceFieldRef"], node_allocatable)
        if value is not None:
            env[var["name"]] = value
    return env


def kubernetes_service_env(server: str) -> dict[str, str]:
    """KUBERNETES_SERVICE_HOST/PORT, as the kubelet sets them in every container (in-cluster
    clients read them), from the API server's URL: its address, not the Service's ClusterIP,
    since there is no kube-proxy to route 10.232.0.1."""
    url = urlsplit(server)
    if not url.hostname:
        raise ValueError(f"not an API server URL: {server!r}")
    port = str(url.port or 443)
    return {
        "KUBERNETES_SERVICE_HOST": url.hostname,
        "KUBERNETES_SERVICE_PORT": port,
        "KUBERNETES_SERVICE_PORT_HTTPS": port,
    }


# --- command ---------------------------------------------------------------------------------


def executables() -> dict[str, str]:
    """The image's executables the agent provides, from this machine: name -> path."""
    from celeriac.local.redis_server import find_redis_server

    venv_bin = Path(sys.prefix) / "bin"
    redis_bin = find_redis_server().parent
    table = {
        "celeriac": str(venv_bin / "celeriac"),
        "python": sys.executable,
        "python3": sys.executable,
        "redis-server": str(redis_bin / "redis-server"),
        "redis-cli": str(redis_bin / "redis-cli"),
        "sh": "/bin/sh",  # the Redis pod's `sh -c`; PATH (container_path) finds the rest
    }
    return table


def provided_folders() -> list[str]:
    """Host folders every container sees at their own paths, read-only: the checkout (the
    editable install's source) and the venv, standing in for the image's files. Bound on top
    of the container's volumes, so a checkout below /tmp (where the chart's pods mount an
    emptyDir) or behind a folder closed to others (``mktemp -d``) is still there."""
    from celeriac.local.redis_server import find_redis_server

    folders = {
        str(Path(__file__).resolve().parents[2]),
        str(Path(sys.prefix).resolve()),
        str(find_redis_server().resolve().parent),
    }
    # A folder inside another is bound with it.
    return sorted(
        folder
        for folder in folders
        if not any(other != folder and Path(other) in Path(folder).parents for other in folders)
    )


def container_path(table: Mapping[str, str]) -> str:
    """PATH inside the container: the provided executables' folders, then the system's."""
    folders = dict.fromkeys(str(Path(p).parent) for p in table.values())
    return ":".join([*folders, "/usr/local/bin", "/usr/bin", "/bin"])


def container_argv(container: Obj, env: Mapping[str, str], table: Mapping[str, str]) -> list[str]:
    """command + args, $(VAR)-expanded, the executable replaced from ``table``."""
    command = [expand(part, env) for part in container.get("command") or []]
    args = [expand(part, env) for part in container.get("args") or []]
    if not command:
        raise SpecError(
            "CreateContainerConfigError",
            "no command: the image's entrypoint is unknown to the process kubelet",
        )
    return [resolve_executable(command[0], table), *command[1:], *args]


def resolve_executable(name: str, table: Mapping[str, str]) -> str:
    path = table.get(Path(name).name) if name.startswith("/") else table.get(name)
    if path is None:
        raise SpecError(
            "CreateContainerConfigError",
            f"command {name!r} is not provided by the process kubelet (it runs {sorted(table)})",
        )
    return path
