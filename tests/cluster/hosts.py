"""Service names as /etc/hosts lines: the process kubelet's stand-in for kube-proxy and DNS.

A Service's names (`svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`) get one line per
ready endpoint address from its EndpointSlices (sorted: the resolver returns them all, the
lowest first); a headless
Service's pods also get `hostname.svc.ns.svc.cluster.local`. There is no ClusterIP and no port
translation: a Service whose port differs from its target port is refused (no entry) and
reported, since a hosts line cannot remap ports.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from tests.cluster.podspec import Obj

HEADER = (
    "# Written by the process kubelet (tests/cluster/kubelet.py): Service names -> a ready\n"
    "# endpoint's address. No ClusterIPs, no DNS.\n"
    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
)


@dataclass
class Entries:
    lines: dict[str, list[str]] = field(default_factory=dict)  # name -> ready addresses
    refused: dict[tuple[str, str], str] = field(default_factory=dict)  # (ns, svc) -> why

    def text(self, own: str = "") -> str:
        body = "".join(
            f"{address}\t{name}\n"
            for name, addresses in sorted(self.lines.items())
            for address in addresses
        )
        return HEADER + own + body


def names(service: str, namespace: str) -> list[str]:
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def _ipv4(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).version == 4
    except ValueError:
        return False


def entries(services: list[Obj], slices: list[Obj]) -> Entries:
    """Hosts lines for ``services`` from their ``slices``, and the Services refused."""
    result = Entries()
    by_service: dict[tuple[str, str], list[Obj]] = {}
    for item in slices:
        meta = item["metadata"]
        owner = (meta.get("labels") or {}).get("kubernetes.io/service-name")
        if owner:
            by_service.setdefault((meta["namespace"], owner), []).append(item)
    for service in services:
        meta, spec = service["metadata"], service.get("spec") or {}
        key = (meta["namespace"], meta["name"])
        own_slices = by_service.get(key, [])
        remapped = _remapped_port(spec, own_slices)
        if remapped:
            result.refused[key] = remapped
            continue
        ready: list[str] = []
        for item in own_slices:
            for endpoint in item.get("endpoints") or []:
                if (endpoint.get("conditions") or {}).get("ready") is False:
                    continue
                addresses = [a for a in endpoint.get("addresses") or [] if _ipv4(a)]
                ready.extend(addresses)
                hostname = endpoint.get("hostname")
                if hostname and addresses and spec.get("clusterIP") == "None":
                    for name in names(meta["name"], meta["namespace"])[1:]:
                        result.lines[f"{hostname}.{name}"] = addresses[:1]
        if ready:
            ordered = sorted(set(ready), key=ipaddress.ip_address)
            for name in names(meta["name"], meta["namespace"]):
                result.lines[name] = ordered
    return result


def _remapped_port(spec: Obj, slices: list[Obj]) -> str:
    """Why the Service cannot be a hosts entry ('' if it can)."""
    for port in spec.get("ports") or []:
        target = port.get("targetPort", port["port"])
        if isinstance(target, int) or str(target).isdigit():
            if int(target) != port["port"]:
                return f"port {port['port']} targets port {target}"
            continue
        for item in slices:  # a named target: the slices carry the number
            for slice_port in item.get("ports") or []:
                if slice_port.get("name", "") == port.get("name", "") and slice_port.get(
                    "port"
                ) not in (
                    None,
                    port["port"],
                ):
                    return f"port {port['port']} targets {target!r} = {slice_port['port']}"
    return ""
