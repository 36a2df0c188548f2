"""The local control plane's own test network (issue 9).

One Linux bridge, ``celeriac0``, in the root network namespace with ``10.231.0.1/16``: the host
side, where kube-apiserver and KEDA's metrics adapter listen. A node (tests/cluster/infra/node.py)
gets its own network namespace with a veth pair whose far end has an address on it and a
default route via 10.231.0.1 (``attach`` below); its pods live behind it, on routes it adds.

Traffic: namespace <-> namespace on the bridge is bridged (layer 2, no routing); host <->
namespace is local delivery on the bridge's address. Neither needs IP forwarding, so
``net.ipv4.ip_forward`` is left alone. When the bridge hands frames to iptables (br_netfilter
with ``bridge-nf-call-iptables=1``) and an ``iptables`` binary exists, one FORWARD rule accepts
traffic that enters and leaves this bridge (``-i celeriac0 -o celeriac0``) so a DROP policy
elsewhere cannot cut that traffic; ``teardown`` removes it. Nothing here touches any address
but the ones it creates.

``python -m tests.cluster.infra.network up|down|status``.
"""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import subprocess
import sys
from pathlib import Path

BRIDGE = "celeriac0"
HOST_IP = "10.231.0.1"
PREFIX_LENGTH = 16
NETWORK = ipaddress.ip_network(f"{HOST_IP}/{PREFIX_LENGTH}", strict=False)
POD_SUBNET = ipaddress.ip_network("10.231.1.0/24")  # pod addresses: 10.231.1.2 .. 10.231.1.254
SERVICE_CIDR = "10.232.0.0/16"  # kube-apiserver's --service-cluster-ip-range

_FORWARD_RULE = ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def bridge_exists() -> bool:
    return _ip("link", "show", "dev", BRIDGE, check=False).returncode == 0


def _has_host_address() -> bool:
    out = _ip("-o", "-4", "addr", "show", "dev", BRIDGE, check=False).stdout
    return f" {HOST_IP}/{PREFIX_LENGTH} " in out


def _bridge_calls_iptables() -> bool:
    path = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    return path.exists() and path.read_text().strip() == "1"


def _iptables() -> str | None:
    return shutil.which("iptables")


def ensure() -> None:
    """Create the bridge, its host address and the forward rule if missing (idempotent)."""
    if not bridge_exists():
        _ip("link", "add", "name", BRIDGE, "type", "bridge")
    if not _has_host_address():
        _ip("addr", "add", f"{HOST_IP}/{PREFIX_LENGTH}", "dev", BRIDGE)
    _ip("link", "set", "dev", BRIDGE, "up")
    iptables = _iptables()
    if iptables and _bridge_calls_iptables():
        present = subprocess.run([iptables, "-C", *_FORWARD_RULE], capture_output=True)
        if present.returncode != 0:
            subprocess.run([iptables, "-I", *_FORWARD_RULE], check=True, capture_output=True)


def teardown() -> None:
    """Remove the bridge (and with it its address and attached veths) and the forward rule."""
    iptables = _iptables()
    if iptables:
        while subprocess.run([iptables, "-D", *_FORWARD_RULE], capture_output=True).returncode == 0:
            pass
    if bridge_exists():
        _ip("link", "del", "dev", BRIDGE)


def pod_ip(index: int) -> str:
    """The index-th pod address, 10.231.1.<index> (2..254)."""
    if not 2 <= index <= 254:
        raise ValueError(f"pod index {index} outside 2..254")
    return str(POD_SUBNET.network_address + index)


def _in_netns(netns: str | int, *args: str) -> None:
    """Run ``ip ARGS`` inside a named netns (str) or the netns of a process (int pid)."""
    if isinstance(netns, int):
        cmd = ["nsenter", "-t", str(netns), "-n", "ip", *args]
    else:
        cmd = ["ip", "-n", netns, *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def attach(netns: str | int, address: str, host_if: str, pod_if: str = "eth0") -> None:
    """Give a network namespace (name or pid) a veth on the bridge with ``address``/16.

    ``host_if`` names the root-side end (at most 15 characters); the pod side is ``pod_if`` with
    the address, loopback up and a default route via the bridge's address.
    """
    if ipaddress.ip_address(address) not in NETWORK or address == HOST_IP:
        raise ValueError(f"{address} is not a pod address in {NETWORK}")
    peer = f"{host_if}p"[:15]
    _ip("link", "add", "name", host_if, "type", "veth", "peer", "name", peer)
    try:
        _ip("link", "set", "dev", host_if, "master", BRIDGE)
        _ip("link", "set", "dev", host_if, "up")
        _ip("link", "set", "dev", peer, "netns", str(netns))
        _in_netns(netns, "link", "set", "dev", peer, "name", pod_if)
        _in_netns(netns, "addr", "add", f"{address}/{PREFIX_LENGTH}", "dev", pod_if)
        _in_netns(netns, "link", "set", "dev", pod_if, "up")
        _in_netns(netns, "link", "set", "dev", "lo", "up")
        _in_netns(netns, "route", "add", "default", "via", HOST_IP)
    except BaseException:
        detach(host_if)
        raise


def detach(host_if: str) -> None:
    """Delete a veth by its root-side name (its peer goes with it); no error when gone."""
    _ip("link", "del", "dev", host_if, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.infra.network")
    parser.add_argument("action", choices=["up", "down", "status"])
    action = parser.parse_args(argv).action
    if action == "up":
        ensure()
    elif action == "down":
        teardown()
    if bridge_exists():
        print(_ip("-br", "addr", "show", "dev", BRIDGE).stdout.strip())
    else:
        print(f"{BRIDGE}: absent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
