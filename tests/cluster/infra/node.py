"""A real Kubernetes node joined to the local control plane (issue 17, item 3).

``with Node(plane, state_dir) as node:`` runs the kubelet of the control plane's release with a
real container runtime: containerd (its Go module) driving Debian's runc, CNI networking from
Debian's reference plugins (bridge, host-local, loopback, portmap), and kube-proxy for Services.
Everything a node changes on the machine stays in namespaces of its own:

- **Network**: a network namespace (``celeriac-<name>``) with a veth on the control plane's
  bridge and the node's address (``10.231.0.10/16``). Inside it, the CNI bridge ``cni0`` gives
  pods addresses of the node's pod range (``10.233.0.0/24``) with the node as their gateway;
  IP forwarding and kube-proxy's iptables rules live in that namespace only. The root namespace
  gets one route, to the pod range via the node's address, so the host's processes (the
  apiserver, KEDA, the tests) reach pods; the machine's forwarding is never turned on.
- **Mounts**: containerd and the kubelet share one private mount namespace (mounts propagate
  in from the host, never out), so volume, overlay and network-namespace mounts vanish with
  them.
- **Cgroups** (v1 here, cgroupfs driver: no systemd): the kubelet's ``cgroupRoot`` is a folder
  under this process's own memory cgroup (``failCgroupV1: false``: 1.35 refuses v1 otherwise);
  containerd and its shims run in ``<root>/runtime`` so a stop can end every process.
- **Images**: pulled from the project's own registry (``tests/cluster/infra/registry.py``;
  containerd trusts its CA through ``trust_registry``), or copied from the project's podman storage
  (``make image``) with ``load_image``; the sandbox ("pause") image is made from the same
  Debian base (tini waiting for ever) and loaded: no public registry can be reached.

State, logs and sockets live under ``state_dir`` (``logs/<component>.log``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from celeriac.testing import Child, free_port
from tests.cluster.infra import build, network
from tests.cluster.infra.controlplane import CLUSTER_DOMAIN, ControlPlane, module_ports
from tests.cluster.infra.lifecycle import Processes
from tests.cluster.infra.pki import KeyPair, issue_cert, write_kubeconfig
from tests.image import build as image_build

NODE_ADDRESS = "10.231.0.10"
POD_RANGE = ipaddress.ip_network("10.233.0.0/24")
CLUSTER_POD_RANGE = "10.233.0.0/16"
CNI_PLUGINS = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
RUNC = "/usr/sbin/runc"
CGROUP_ROOT = Path("/sys/fs/cgroup")
K8S_NAMESPACE = "k8s.io"  # containerd's namespace for the CRI's images and containers
START_TIMEOUT = 120.0


def own_cgroup() -> str:
    """This process's memory cgroup (v1), where the node's cgroups go."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
    return "/"


def cgroup_controllers() -> list[Path]:
    """Every mounted hierarchy (``cpu,cpuacct`` style links skipped); ``unified`` too, where
    runc makes each container's folder on this hybrid layout."""
    return [p for p in sorted(CGROUP_ROOT.iterdir()) if p.is_dir() and not p.is_symlink()]


def make_cgroup(path: str) -> list[Path]:
    """Create ``path`` in every controller; the folders it created, parents first.

    In v1 a new cpuset inherits no CPUs or memory nodes: each level gets its parent's.
    """
    created: list[Path] = []
    for controller in cgroup_controllers():
        current = controller
        for part in Path(path.lstrip("/")).parts:
            child = current / part
            if not child.is_dir():
                child.mkdir()
                created.append(child)
            if controller.name == "cpuset":
                for name in ("cpuset.cpus", "cpuset.mems"):
                    if not (child / name).read_text().strip():
                        (child / name).write_text((current / name).read_text())
            current = child
    return created


def cgroup_pids(path: str) -> set[int]:
    """Every process in ``path`` or below it (memory hierarchy)."""
    pids: set[int] = set()
    folder = CGROUP_ROOT / "memory" / path.lstrip("/")
    if not folder.is_dir():
        return pids
    for procs in folder.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in procs.read_text().split())
    return pids


def remove_cgroups(folders: list[Path]) -> None:
    """Remove cgroup folders and whatever the kubelet made below them, deepest first."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if not folder.is_dir():
            continue
        for child in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if child.is_dir():
                with contextlib.suppress(OSError):
                    child.rmdir()
        with contextlib.suppress(OSError):
            folder.rmdir()


# What CoreDNS's kubernetes plugin reads (CoreDNS's own deployment manifest grants the same).
COREDNS_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}
"""


def _healthy(url: str, node: Node) -> bool:
    """Whether ``url``, served inside the node's network namespace, answers 200."""
    probe = ["curl", "-fsS", "-o", "/dev/null", "--max-time", "2", url]
    command = ["nsenter", f"--net=/run/netns/{node.netns}", *probe]
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


def pause_image() -> str:
    """The sandbox image: the Debian base, tini reaping and waiting for a signal."""
    base = image_build.base_image()
    reference = f"localhost/celeriac-pause:{base.rsplit(':', 1)[1]}"
    if not image_build.image_exists(reference):
        with tempfile.TemporaryDirectory(prefix="celeriac-pause-") as context:
            containerfile = Path(context) / "Containerfile"
            containerfile.write_text(
                f"FROM {base}\n"
                'ENTRYPOINT ["/usr/bin/tini", "-s", "--", "sleep", "infinity"]\n'
                "USER 65535:65535\n"
            )
            image_build.podman("build", "--quiet", "-t", reference, context, capture=True)
    return reference


class Node(Processes):
    """containerd, the kubelet and kube-proxy of one node, joined to ``plane``."""

    def __init__(
        self,
        plane: ControlPlane,
        state_dir: Path,
        *,
        name: str = "node0",
        address: str = NODE_ADDRESS,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.plane = plane
        self.name = name
        self.address = address
        self.state_dir = Path(state_dir).resolve()
        self.logs = self.state_dir / "logs"
        self.netns = f"celeriac-{name}"
        self.host_if = f"cn-{name}"[:15]
        self.cgroup = f"{own_cgroup().rstrip('/')}/celeriac-{name}"
        self.socket = self.state_dir / "containerd" / "containerd.sock"
        self.start_timeout = start_timeout
        self.children: dict[str, Child] = {}
        self.binaries: dict[str, Path] = {}
        self.cgroups: list[Path] = []  # the cgroup folders this node created
        self.sandbox_image = ""  # the pause image's reference, once started
        self._chart_images: dict[str, Any] = {}  # chart_values' images, once loaded

    # public helpers

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """containerd's own client on this node's socket, in the CRI's namespace."""
        return subprocess.run(
            [str(self.binaries["ctr"]), "--address", str(self.socket), "-n", K8S_NAMESPACE, *args],
            capture_output=True,
            text=True,
            check=check,
        )

    def load_image(self, reference: str) -> None:
        """Copy an image of the project's podman storage into containerd (what a pull does)."""
        with tempfile.TemporaryDirectory(prefix="celeriac-image-", dir=self.state_dir) as tmp:
            archive = Path(tmp) / "image.tar"
            image_build.podman(
                "save", "--format", "docker-archive", "-o", str(archive), reference, capture=True
            )
            self.ctr("images", "import", "--no-unpack=false", str(archive))

    def trust_registry(self, address: str, ca: Path) -> None:
        """Pull from the registry at ``address`` over TLS with ``ca`` (containerd's hosts
        configuration, read at each pull)."""
        folder = self.state_dir / "containerd" / "certs.d" / address
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hosts.toml").write_text(
            f'server = "https://{address}"\n\n'
            f'[host."https://{address}"]\n'
            '  capabilities = ["pull", "resolve"]\n'
            f'  ca = "{ca}"\n'
        )

    def add_volume(self, name: str, size: str) -> None:
        """A local PersistentVolume on this node, as the administrator of a cluster without a
        dynamic provisioner makes one: a claim of no StorageClass for at most ``size`` binds
        to it (the chart's Redis claim, with ``redis.persistence.storageClass`` empty)."""
        folder = self.state_dir / "volumes" / name
        folder.mkdir(parents=True, exist_ok=True)
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "local": {"path": str(folder)},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/hostname",
                                        "operator": "In",
                                        "values": [self.name],
                                    }
                                ]
                            }
                        ]
                    }
                },
            },
        }
        self.plane.kubectl("apply", "-f", "-", input=json.dumps(volume))

    def chart_values(self, *claims: str, redis_size: str = "1Gi") -> dict[str, Any]:
        """Chart values that run the project's images (``make image``) on this node, loaded
        into its runtime once (what a pull does), with Redis on a claim: one local volume is
        made for each of ``claims`` (a release, or one of its Redis pods with Sentinel)."""
        if not self._chart_images:
            images = {"image": image_build.image_tag(), "redis": image_build.redis_image()}
            for key, reference in images.items():
                self.load_image(reference)
                repository, tag = reference.rsplit(":", 1)
                image = {"repository": repository, "tag": tag, "pullPolicy": "Never"}
                self._chart_images.update(
                    {key: image} if key == "image" else {key: {"image": image}}
                )
        for claim in claims:
            self.add_volume(f"redis-{claim}", redis_size)
        persistence = {"persistence": {"enabled": True, "size": redis_size}}
        return {**self._chart_images, "redis": {**self._chart_images["redis"], **persistence}}

    def pod_pids(self, uid: str) -> set[int]:
        """The processes of the pod ``uid`` on this node (its cgroup and its containers')."""
        memory = CGROUP_ROOT / "memory"
        node = memory / self.cgroup.lstrip("/")
        pods = node.rglob(f"pod{uid}") if node.is_dir() else []
        return {pid for pod in pods for pid in cgroup_pids(f"/{pod.relative_to(memory)}")}

    def restart_containerd(self) -> None:
        """Stop containerd and start it again beside the kubelet (a runtime upgrade or crash):
        running containers keep running under their shims, in process groups of their own."""
        self.children.pop("containerd").stop()
        self._start_containerd()

    # lifecycle

    def start(self) -> None:
        self.binaries = build.ensure_built(build.NODE)
        self.sandbox_image = pause_image()
        for folder in (
            "logs",
            "pki",
            "containerd",
            "kubelet",
            "pods-logs",
            "cni/net.d",
            "cni/ipam",
        ):
            (self.state_dir / folder).mkdir(parents=True, exist_ok=True)
        self._network_up()
        self.cgroups += make_cgroup(f"{self.cgroup}/runtime")
        self._start_containerd()
        self.load_image(self.sandbox_image)
        self._start_coredns()
        self._start_kubelet()
        self._start_kube_proxy()
        self._serve_the_control_plane()

    def stop(self) -> None:
        for name in ("kube-proxy", "kubelet"):
            child = self.children.pop(name, None)
            if child is not None:
                child.stop()
        # Containers, shims and containerd: every process in the node's cgroups.
        deadline = time.monotonic() + 15
        while (pids := cgroup_pids(self.cgroup)) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for child in self.children.values():
            child.stop()
        self.children.clear()
        remove_cgroups(self.cgroups)
        self.cgroups.clear()
        self._network_down()

    # network

    def _in_netns(self, *args: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.netns, *args], check=True, capture_output=True)

    def _network_up(self) -> None:
        network.ensure()
        self._network_down()
        subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
        network.attach(self.netns, self.address, self.host_if)
        # Forwarding between the pods' bridge and the node's veth: this namespace only.
        self._in_netns("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        subprocess.run(
            ["ip", "route", "replace", str(POD_RANGE), "via", self.address, "dev", network.BRIDGE],
            check=True,
            capture_output=True,
        )
        (self.state_dir / "cni" / "net.d" / "10-celeriac.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "celeriac",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "cni0",
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": str(POD_RANGE)}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.state_dir / "cni" / "ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=2,
            )
        )

    def _serve_the_control_plane(self) -> None:
        """Let the control plane's host processes (KEDA's operator fetching a metrics-api URL)
        reach Services by name, as a pod does: the Service range routed to this node, whose
        kube-proxy rules translate it, and its CoreDNS in the operator's resolv.conf (written in
        place: the operator's mount namespace holds the file's inode; Go re-reads it)."""
        subprocess.run(
            ["ip", "route", "replace", network.SERVICE_CIDR, "via", self.address],
            check=True,
            capture_output=True,
        )
        with self.plane.resolv_file.open("w") as resolv:
            resolv.write(
                f"nameserver {self.address}\n"
                f"search svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n"
                "options ndots:5\n"
            )

    def _network_down(self) -> None:
        with contextlib.suppress(FileNotFoundError), self.plane.resolv_file.open("w"):
            pass  # no cluster DNS without this node
        for destination in (str(POD_RANGE), network.SERVICE_CIDR):
            subprocess.run(
                ["ip", "route", "del", destination, "via", self.address],
                check=False,
                capture_output=True,
            )
        network.detach(self.host_if)
        subprocess.run(["ip", "netns", "del", self.netns], check=False, capture_output=True)

    # components

    def _beside_containerd(self) -> list[str]:
        """The command prefix that runs a component in containerd's mount and network
        namespaces (volume and netns mounts must be the same for the kubelet and the runtime)."""
        return ["nsenter", f"--target={self.children['containerd'].pid}", "--mount", "--net", "--"]

    def _start_containerd(self) -> None:
        root = self.state_dir / "containerd"
        config = root / "config.toml"
        config.write_text(
            f"""version = 3
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing", "io.containerd.grpc.v1.cri-checkpoint"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[debug]
  level = "info"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{self.sandbox_image}"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "{root}/certs.d"

[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  disable_apparmor = true
  # No CAP_SYS_RESOURCE here: runc cannot give the sandbox the kubelet's -998.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_cdi = false
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{CNI_PLUGINS}"]
    conf_dir = "{self.state_dir}/cni/net.d"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
"""
        )
        shim_dir = self.binaries["containerd-shim-runc-v2"].parent
        runtime_procs = [
            str(c / self.cgroup.lstrip("/") / "runtime" / "cgroup.procs")
            for c in cgroup_controllers()
        ]
        # Join the runtime cgroup, then a private mount namespace and the node's network (or,
        # on a restart, the namespaces the kubelet still runs in).
        join = " ".join(f'echo $$ > "{p}";' for p in runtime_procs)
        namespaces = (
            f"nsenter --target={self.children['kubelet'].pid} --mount --net"
            if "kubelet" in self.children
            else f"unshare --mount --propagation slave nsenter --net=/run/netns/{self.netns}"
        )
        self._spawn(
            "containerd",
            [
                "sh",
                "-c",
                f'{join} exec {namespaces} "$@"',
                "containerd",
                str(self.binaries["containerd"]),
                "--config",
                str(config),
            ],
            env={"PATH": f"{shim_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"},
        )
        self._wait("containerd", lambda: self.ctr("version", check=False).returncode == 0)

    def _kubelet_pki(self) -> tuple[KeyPair, KeyPair]:
        pki = self.plane.pki
        folder = self.state_dir / "pki"
        folder.mkdir(exist_ok=True)
        client = issue_cert(
            KeyPair(folder / "kubelet-client.crt", folder / "kubelet-client.key"),
            f"system:node:{self.name}",
            issuer=pki.ca,
            organizations=["system:nodes"],
            client=True,
        )
        serving = issue_cert(
            KeyPair(folder / "kubelet.crt", folder / "kubelet.key"),
            self.name,
            issuer=pki.ca,
            server=True,
            dns_names=[self.name],
            ip_addresses=[self.address],
        )
        return client, serving

    def _start_kubelet(self) -> None:
        client, serving = self._kubelet_pki()
        kubeconfig = write_kubeconfig(
            self.state_dir / "kubelet.kubeconfig",
            self.plane.server,
            self.plane.pki.ca.cert,
            client,
            f"system:node:{self.name}",
        )
        healthz = free_port()
        config = self.state_dir / "kubelet-config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "failCgroupV1": False,
                    "cgroupDriver": "cgroupfs",
                    "cgroupRoot": self.cgroup,
                    "containerRuntimeEndpoint": f"unix://{self.socket}",
                    "address": self.address,
                    "port": 10250,
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": healthz,
                    "tlsCertFile": str(serving.cert),
                    "tlsPrivateKeyFile": str(serving.key),
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(self.plane.pki.ca.cert)},
                    },
                    "authorization": {"mode": "Webhook"},
                    "clusterDomain": CLUSTER_DOMAIN,
                    "clusterDNS": [self.address],
                    "resolvConf": "",
                    "failSwapOn": False,
                    "protectKernelDefaults": False,
                    "podLogsDir": str(self.state_dir / "pods-logs"),
                    "serializeImagePulls": False,
                    # A shared test machine's disk: evict only when it is really full.
                    "evictionHard": {
                        "memory.available": "100Mi",
                        "nodefs.available": "1%",
                        "imagefs.available": "1%",
                    },
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "containerLogMaxSize": "10Mi",
                    "staticPodPath": "",
                    "podCIDR": str(POD_RANGE),
                }
            )
        )
        self._spawn(
            "kubelet",
            [
                *self._beside_containerd(),
                str(self.binaries["kubelet"]),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.state_dir / 'kubelet'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.address}",
                "--v=2",
            ],
        )
        self._wait(
            "kubelet",
            lambda: (
                self.plane.kubectl(
                    "get",
                    "node",
                    self.name,
                    "-o",
                    'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
                    check=False,
                ).strip()
                == "True"
            ),
        )

    def _client_kubeconfig(self, name: str, user: str) -> Path:
        """A kubeconfig for ``user``, with a client certificate the cluster's CA signed."""
        folder = self.state_dir / "pki"
        client = issue_cert(
            KeyPair(folder / f"{name}.crt", folder / f"{name}.key"),
            user,
            issuer=self.plane.pki.ca,
            client=True,
        )
        return write_kubeconfig(
            self.state_dir / f"{name}.kubeconfig",
            self.plane.server,
            self.plane.pki.ca.cert,
            client,
            user,
        )

    def _start_coredns(self) -> None:
        """Cluster DNS: CoreDNS on the node's address, answering for the cluster's names only
        (no upstream: these machines may not query other resolvers)."""
        kubeconfig = self._client_kubeconfig("coredns", "system:coredns")
        self.plane.kubectl("apply", "-f", "-", input=COREDNS_RBAC)
        ready = free_port()
        corefile = self.state_dir / "Corefile"
        corefile.write_text(
            f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 {{
    bind {self.address}
    errors
    ready 127.0.0.1:{ready}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa {{
        kubeconfig {kubeconfig} celeriac
        pods insecure
    }}
    cache 5
}}
"""
        )
        self._spawn(
            "coredns",
            [
                "nsenter",
                f"--net=/run/netns/{self.netns}",
                "--",
                str(self.binaries["coredns"]),
                "-conf",
                str(corefile),
            ],
        )
        self._wait("coredns", lambda: _healthy(f"http://127.0.0.1:{ready}/ready", self))

    def _start_kube_proxy(self) -> None:
        """kube-proxy in iptables mode, its rules in the node's network namespace only."""
        # system:kube-proxy is bound to the system:node-proxier ClusterRole by default.
        kubeconfig = self._client_kubeconfig("kube-proxy", "system:kube-proxy")
        healthz = free_port()
        config = self.state_dir / "kube-proxy-config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(kubeconfig)},
                    "mode": "iptables",
                    "clusterCIDR": CLUSTER_POD_RANGE,
                    "hostnameOverride": self.name,
                    "bindAddress": self.address,
                    "healthzBindAddress": f"127.0.0.1:{healthz}",
                    "metricsBindAddress": f"127.0.0.1:{free_port()}",
                    # Service traffic leaves through the node, so a reply from a pod on the
                    # same bridge comes back through it too (no br_netfilter needed).
                    "iptables": {"masqueradeAll": True},
                    # nf_conntrack_max is the machine's, not the namespace's: leave it alone.
                    "conntrack": {"maxPerCore": 0, "min": 0},
                }
            )
        )
        self._spawn(
            "kube-proxy",
            [
                *self._beside_containerd(),
                str(self.binaries["kube-proxy"]),
                f"--config={config}",
                "--v=2",
            ],
        )
        self._wait("kube-proxy", lambda: _healthy(f"http://127.0.0.1:{healthz}/healthz", self))


@contextlib.contextmanager
def module_cluster(
    state_dir: Path, env_prefix: str, apiserver_port: int, adapter_port: int
) -> Iterator[tuple[ControlPlane, Node]]:
    """A test module's control plane with KEDA and one real node (``module_ports``); the
    project's images must exist (``make image``), else the test is skipped (failed in CI)."""
    from tests.support import missing

    ports = module_ports(env_prefix, apiserver_port, adapter_port)
    if not image_build.image_exists(image_build.image_tag()):
        missing("the celeriac image", "build it with `make image` (root, podman)")
    if not (CNI_PLUGINS / "bridge").is_file():
        missing("Debian's CNI plugins", "apt-get install containernetworking-plugins")
    with (
        ControlPlane(state_dir / "plane", **ports) as plane,
        Node(plane, state_dir / "node") as node,
    ):
        yield plane, node


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster.infra.node",
        description="The local cluster: the control plane and one real node, until interrupted.",
    )
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("--no-keda", action="store_true", help="without KEDA's components")
    args = parser.parse_args()
    with (
        ControlPlane(args.state_dir / "plane", keda=not args.no_keda) as plane,
        Node(plane, args.state_dir / "node"),
    ):
        print(f"export KUBECONFIG={plane.kubeconfig}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
