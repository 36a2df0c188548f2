"""Pod volumes as host folders: Secret and ConfigMap projections, emptyDir, PVC folders.

The sandbox binds each folder at its mountPath inside the container's mount namespace. fsGroup:
the folder and its files get the group, group-readable (and writable, except projections), and
set-gid folders, as the kubelet's volume ownership does; the container joins the group.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.cluster.podspec import Obj, SpecError, field_ref

DEFAULT_MODE = 0o644

# lookup(kind, namespace, name) -> the object's raw data (Secret data still base64) or None
RawLookup = Callable[[str, str, str], "Obj | None"]
# claim(namespace, claimName) -> the bound PersistentVolume's host folder, or None while unbound
ClaimPath = Callable[[str, str], "str | None"]
# token(pod, audience, expirationSeconds) -> a token of the pod's ServiceAccount bound to the pod
# (the TokenRequest API; audience None: the API server's own); raises SpecError when refused
TokenFor = Callable[[Obj, "str | None", "int | None"], str]


def _no_token(pod: Obj, audience: str | None, expiration: int | None) -> str:
    raise SpecError("FailedMount", "no TokenRequest client: cannot mount a service-account token")


def project(
    folder: Path,
    data: Mapping[str, bytes],
    items: list[Obj] | None,
    default_mode: int,
    gid: int | None,
) -> None:
    """Write a Secret/ConfigMap's keys (or ``items``) as files of ``folder``."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    chosen = items if items else [{"key": key, "path": key} for key in sorted(data)]
    for item in chosen:
        if item["key"] not in data:
            raise SpecError("FailedMount", f"key {item['key']!r} not found")
        path = folder / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[item["key"]])
        os.chmod(path, item.get("mode", default_mode))
        if gid is not None:
            os.chown(path, 0, gid)
    if gid is not None:
        os.chown(folder, 0, gid)
    os.chmod(folder, 0o755 if gid is None else 0o2755)


def own_folder(folder: Path, gid: int | None, policy: str | None) -> None:
    """emptyDir and PVC folders: group ``gid``, group-writable, set-gid (fsGroup)."""
    folder.mkdir(parents=True, exist_ok=True)
    if gid is None:
        return
    if (
        policy == "OnRootMismatch"
        and folder.stat().st_gid == gid
        and folder.stat().st_mode & 0o2070 == 0o2070
    ):
        return
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, -1, gid, follow_symlinks=False)
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        os.chmod(path, (mode | 0o2070) if path.is_dir() else (mode | 0o060))


def decoded(kind: str, obj: Obj) -> dict[str, bytes]:
    """A Secret's or ConfigMap's keys as bytes."""
    if kind == "Secret":
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return data


def projected(pod: Obj, volume: Obj, lookup: RawLookup, token: TokenFor) -> dict[str, bytes]:
    """A projected volume's files, path -> content: the service-account token volume the
    admission plugin adds (serviceAccountToken, configMap kube-root-ca.crt, downwardAPI
    namespace), and Secret/ConfigMap sources generally."""
    namespace = pod["metadata"]["namespace"]
    files: dict[str, bytes] = {}
    for source in volume["projected"].get("sources") or []:
        if "serviceAccountToken" in source:
            request = source["serviceAccountToken"]
            value = token(pod, request.get("audience"), request.get("expirationSeconds"))
            files[request["path"]] = value.encode()
        elif "downwardAPI" in source:
            for item in source["downwardAPI"].get("items") or []:
                files[item["path"]] = field_ref(pod, item["fieldRef"]["fieldPath"]).encode()
        else:
            kind = "Secret" if "secret" in source else "ConfigMap"
            ref = source["secret"] if kind == "Secret" else source["configMap"]
            obj = lookup(kind, namespace, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise SpecError("FailedMount", f"{kind} {ref['name']!r} not found")
            data = decoded(kind, obj)
            for item in ref.get("items") or [{"key": k, "path": k} for k in sorted(data)]:
                if item["key"] not in data:
                    raise SpecError("FailedMount", f"key {item['key']!r} not found in {kind}")
                files[item["path"]] = data[item["key"]]
    return files


def prepare(
    pod: Obj,
    pod_dir: Path,
    lookup: RawLookup,
    claim_path: ClaimPath,
    token: TokenFor = _no_token,
) -> dict[str, str]:
    """Every volume of the pod as a host folder: volume name -> folder. Raises SpecError
    (FailedMount) while something it needs is missing."""
    spec, namespace = pod["spec"], pod["metadata"]["namespace"]
    security: dict[str, Any] = spec.get("securityContext") or {}
    gid = security.get("fsGroup")
    folders: dict[str, str] = {}
    for volume in spec.get("volumes") or []:
        name = volume["name"]
        folder = pod_dir / "volumes" / name
        if "secret" in volume or "configMap" in volume:
            kind = "Secret" if "secret" in volume else "ConfigMap"
            source = volume["secret"] if kind == "Secret" else volume["configMap"]
            object_name = source.get("secretName") or source.get("name")
            obj = lookup(kind, namespace, object_name)
            if obj is None and not source.get("optional"):
                raise SpecError(
                    "FailedMount", f"{kind} {object_name!r} not found (volume {name!r})"
                )
            data = decoded(kind, obj) if obj else {}
            try:
                project(
                    folder, data, source.get("items"), source.get("defaultMode", DEFAULT_MODE), gid
                )
            except SpecError as exc:
                raise SpecError("FailedMount", f"{exc.message} in {kind} {object_name!r}") from None
        elif "projected" in volume:
            files = projected(pod, volume, lookup, token)
            mode = volume["projected"].get("defaultMode", DEFAULT_MODE)
            project(folder, files, None, mode, gid)
        elif "emptyDir" in volume:
            own_folder(folder, gid, None)
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            path = claim_path(namespace, claim)
            if path is None:
                raise SpecError("FailedMount", f"PersistentVolumeClaim {claim!r} is not bound yet")
            own_folder(Path(path), gid, security.get("fsGroupChangePolicy"))
            folders[name] = path
            continue
        folders[name] = str(folder)
    return folders


def folder_bytes(folder: str) -> int:
    """Disk used under ``folder`` (emptyDir sizeLimit)."""
    total = 0
    for directory, _, files in os.walk(folder):
        for file in files:
            try:
                total += os.lstat(os.path.join(directory, file)).st_blocks * 512
            except OSError:
                continue
    return total
