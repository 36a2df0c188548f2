"""tests/cluster/infra/network.py in a network namespace of the test's own (``unshare -n``), so the
machine's real ``celeriac0`` and anything attached to it are left alone: the bridge and its
address come and go idempotently, and a pod netns attached to it reaches the host and is
reached from it over TCP."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)"),
]

SCENARIO = textwrap.dedent(
    """
    import os, socket, subprocess, sys
    from celeriac.testing import wait_until
    from tests.cluster.infra import network as n

    def ip(*args):
        return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout

    n.ensure()
    n.ensure()
    assert ip("-o", "-4", "addr", "show", "dev", n.BRIDGE).count("10.231.0.1/16") == 1
    pod = subprocess.Popen(["unshare", "-n", "sleep", "60"])
    own_netns = os.readlink("/proc/self/ns/net")

    def pod_has_own_netns():
        return os.readlink(f"/proc/{pod.pid}/ns/net") != own_netns

    wait_until(pod_has_own_netns, message="the pod's netns")
    address = n.pod_ip(9)
    n.attach(pod.pid, address, "vcp9")
    # A listener in the pod (no reverse DNS: a pod netns has no resolver to ask).
    code = (
        "import socket; s = socket.socket(); s.bind((%r, 8000)); s.listen();"
        "c, _ = s.accept(); c.sendall(b'pod'); c.close()" % address
    )
    server = subprocess.Popen(["nsenter", "-t", str(pod.pid), "-n", sys.executable, "-c", code])

    def host_to_pod():
        with socket.create_connection((address, 8000), timeout=2) as c:
            return c.recv(8)

    assert wait_until(host_to_pod, message="host -> pod") == b"pod"
    server.wait(10)
    # Pod -> host on the bridge's address.
    listener = socket.create_server((n.HOST_IP, 0))
    port = listener.getsockname()[1]
    client = subprocess.run(
        ["nsenter", "-t", str(pod.pid), "-n", sys.executable, "-c",
         "import socket; socket.create_connection((%r, %d), timeout=5).sendall(b'host')"
         % (n.HOST_IP, port)],
        timeout=30,
    )
    conn, _ = listener.accept()
    assert conn.recv(8) == b"host" and client.returncode == 0
    n.detach("vcp9")
    n.detach("vcp9")
    n.teardown()
    n.teardown()
    assert not n.bridge_exists()
    pod.terminate()
    pod.wait()
    print("ok")
    """
)


def test_bridge_and_pod_attach_in_a_private_netns() -> None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", SCENARIO],
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
