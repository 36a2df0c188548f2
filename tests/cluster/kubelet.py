"""The process kubelet: a Node whose pods run as local processes (issue 9, item 2).

    python -m tests.cluster.kubelet --kubeconfig K --node-name N --state-dir D

or `Kubelet(kubeconfig, node, state_dir).start()` ... `.stop()` in tests. It registers the Node
and renews its Lease, runs each pod bound to it (podspec.py: what is supported; sandbox.py: the
namespaces; runtime.py: containers and probes), writes pod status and events, keeps
`<state>/hosts` and every pod's /etc/hosts (hosts.py), and binds PersistentVolumeClaims to
folders under `<state>/volumes`. What it cannot do is refused visibly: tests/cluster/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.cluster import hosts, netns, podspec, volumes
from tests.cluster.api import MERGE, STRATEGIC, Api, ApiError, now, now_micro
from tests.cluster.podspec import Obj, SpecError
from tests.cluster.runtime import Container, Start

log = logging.getLogger("process-kubelet")
LEASE_SECONDS, HEARTBEAT_SECONDS = 40, 10
WATCH_SECONDS = 20


def memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class Kubelet:
    def __init__(
        self, kubeconfig: str, node_name: str, state_dir: str | Path, cpu: str = "2"
    ) -> None:
        self.api = Api(kubeconfig)
        self.node = node_name
        self.state = Path(state_dir)
        self.allocatable = {"cpu": cpu, "memory": str(memory_bytes()), "pods": "110"}
        self.addresses = netns.Addresses()
        self.stopping = threading.Event()
        self.workers: dict[str, PodWorker] = {}
        self.finished: set[str] = set()
        self.lock = threading.RLock()
        self.services: dict[tuple[str, str], Obj] = {}
        self.slices: dict[tuple[str, str], Obj] = {}
        self.entries = hosts.Entries()
        self.refused: set[tuple[str, str]] = set()
        self.threads: list[threading.Thread] = []

    # --- start / stop -------------------------------------------------------------------------

    def start(self) -> Kubelet:
        netns.reap()
        netns.ensure_bridge()
        for folder in ("pods", "volumes"):
            (self.state / folder).mkdir(parents=True, exist_ok=True)
        for leftover in (self.state / "pods").iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        self.write_hosts()
        self.register()
        loops: list[tuple[str, Callable[[], None]]] = [
            ("heartbeat", self.heartbeat),
            (
                "pods",
                lambda: self.inform(
                    "/api/v1/pods", self.on_pods, fieldSelector=f"spec.nodeName={self.node}"
                ),
            ),
            ("services", lambda: self.inform("/api/v1/services", self.on_services)),
            (
                "slices",
                lambda: self.inform("/apis/discovery.k8s.io/v1/endpointslices", self.on_slices),
            ),
            ("claims", lambda: self.inform("/api/v1/persistentvolumeclaims", self.on_claims)),
        ]
        for name, target in loops:
            thread = threading.Thread(target=target, name=f"kubelet-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop every pod's processes at once (SIGKILL) and remove netns, veths and cgroups."""
        self.stopping.set()
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.gone.set()
            worker.wake.set()
        for worker in workers:
            worker.join(timeout=30)
        netns.reap()

    # --- node and lease -----------------------------------------------------------------------

    def node_status(self) -> Obj:
        stamp = now()
        conditions = [
            {"type": kind, "status": "False", "reason": f"KubeletHas{reason}", "message": message}
            for kind, reason, message in (
                ("MemoryPressure", "SufficientMemory", "no memory pressure"),
                ("DiskPressure", "NoDiskPressure", "no disk pressure"),
                ("PIDPressure", "SufficientPID", "no PID pressure"),
            )
        ]
        conditions.append(
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "process kubelet is posting ready status",
            }
        )
        for condition in conditions:
            condition.update(lastHeartbeatTime=stamp)
        return {
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": netns.HOST_ADDRESS},
                {"type": "Hostname", "address": self.node},
            ],
            "capacity": self.allocatable,
            "allocatable": self.allocatable,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "celeriac process kubelet",
                "containerRuntimeVersion": "process://",
                "kubeletVersion": "v1.35.5",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.node,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node, "labels": labels},
        }
        try:
            self.api.request("POST", "/api/v1/nodes", body)
        except ApiError as exc:
            if exc.status != 409:
                raise
        self.api.request(
            "PATCH",
            f"/api/v1/nodes/{self.node}/status",
            {"status": self.node_status()},
            content_type=STRATEGIC,
        )
        self.renew_lease()

    def renew_lease(self) -> None:
        path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        spec = {
            "holderIdentity": self.node,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": now_micro(),
        }
        try:
            self.api.request("PATCH", f"{path}/{self.node}", {"spec": spec}, content_type=MERGE)
        except ApiError as exc:
            if exc.status != 404:
                raise
            node = self.api.request("GET", f"/api/v1/nodes/{self.node}")
            owner = {
                "apiVersion": "v1",
                "kind": "Node",
                "name": self.node,
                "uid": node["metadata"]["uid"],
            }
            meta = {"name": self.node, "namespace": "kube-node-lease", "ownerReferences": [owner]}
            self.api.request(
                "POST",
                path,
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": meta,
                    "spec": spec,
                },
            )

    def heartbeat(self) -> None:
        while not self.stopping.wait(HEARTBEAT_SECONDS):
            try:
                self.renew_lease()
                self.api.request(
                    "PATCH",
                    f"/api/v1/nodes/{self.node}/status",
                    {"status": self.node_status()},
                    content_type=STRATEGIC,
                )
            except Exception:
                log.exception("heartbeat")

    # --- list + watch -------------------------------------------------------------------------

    def inform(self, path: str, handle: Callable[[str, list[Obj]], None], **query: Any) -> None:
        """List, then watch from the list's resourceVersion; relist after an error."""
        while not self.stopping.is_set():
            try:
                listed = self.api.request("GET", path, query=query)
                handle("SYNC", listed["items"])
                version = listed["metadata"]["resourceVersion"]
                while not self.stopping.is_set():
                    for event in self.api.watch(
                        path, {**query, "resourceVersion": version}, WATCH_SECONDS
                    ):
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            raise ApiError(obj.get("code", 0), str(obj.get("message")))
                        version = obj["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            handle(event["type"], [obj])
            except Exception as exc:
                if not self.stopping.is_set():
                    log.warning("watch %s: %s; relisting", path, exc)
                    self.stopping.wait(1)

    def on_pods(self, kind: str, pods: list[Obj]) -> None:
        with self.lock:
            if kind == "SYNC":
                listed = {p["metadata"]["uid"] for p in pods}
                for uid, worker in self.workers.items():
                    if uid not in listed:
                        worker.gone.set()
            for pod in pods:
                uid = pod["metadata"]["uid"]
                worker = self.workers.get(uid)
                if kind == "DELETED":
                    if worker:
                        worker.gone.set()
                        worker.wake.set()
                elif worker is not None:
                    worker.update(pod)
                elif uid not in self.finished and (pod.get("status") or {}).get("phase") not in (
                    "Succeeded",
                    "Failed",
                ):
                    self.workers[uid] = PodWorker(self, pod)
                    self.workers[uid].start()

    def worker_done(self, uid: str) -> None:
        with self.lock:
            self.workers.pop(uid, None)
            self.finished.add(uid)

    # --- Service names ------------------------------------------------------------------------

    def on_services(self, kind: str, items: list[Obj]) -> None:
        self._track(self.services, kind, items)

    def on_slices(self, kind: str, items: list[Obj]) -> None:
        self._track(self.slices, kind, items)

    def _track(self, store: dict[tuple[str, str], Obj], kind: str, items: list[Obj]) -> None:
        with self.lock:
            if kind == "SYNC":
                store.clear()
            for item in items:
                key = (item["metadata"]["namespace"], item["metadata"]["name"])
                if kind == "DELETED":
                    store.pop(key, None)
                else:
                    store[key] = item
            self.entries = hosts.entries(list(self.services.values()), list(self.slices.values()))
            self.write_hosts()
            for key, why in self.entries.refused.items():
                if key not in self.refused:
                    self.refuse_service(key, why)
            self.refused = set(self.entries.refused)

    def write_hosts(self) -> None:
        """<state>/hosts and each pod's hosts file, rewritten in place (a bind mount keeps the
        inode it was given)."""
        write_in_place(self.state / "hosts", self.entries.text())
        for worker in list(self.workers.values()):
            worker.write_hosts()

    def refuse_service(self, key: tuple[str, str], why: str) -> None:
        namespace, name = key
        message = f"no hosts entry: {why}; a hosts entry cannot remap ports (set targetPort = port)"
        service = self.services[key]
        self.event(service, "Service", "Warning", "PortRemapUnsupported", message)
        condition = {
            "type": "HostsEntry",
            "status": "False",
            "reason": "PortRemapUnsupported",
            "message": message,
            "lastTransitionTime": now(),
        }
        with contextlib.suppress(ApiError):
            self.api.request(
                "PATCH",
                f"/api/v1/namespaces/{namespace}/services/{name}/status",
                {"status": {"conditions": [condition]}},
                content_type=MERGE,
            )

    # --- PersistentVolumeClaims -------------------------------------------------------------

    def on_claims(self, kind: str, claims: list[Obj]) -> None:
        """A Pending claim gets a PersistentVolume of its own, a folder under <state>/volumes,
        pre-bound to it (claimRef); kube-controller-manager's PV controller binds them."""
        for claim in claims:
            if kind == "DELETED" or (claim.get("spec") or {}).get("volumeName"):
                continue
            meta, spec = claim["metadata"], claim["spec"]
            name = f"pvc-{meta['uid']}"
            folder = self.state / "volumes" / name
            folder.mkdir(parents=True, exist_ok=True)
            volume = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name, "labels": {"celeriac.io/process-kubelet": self.node}},
                "spec": {
                    "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                    "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": spec.get("storageClassName") or "",
                    "volumeMode": "Filesystem",
                    "hostPath": {"path": str(folder), "type": "DirectoryOrCreate"},
                    "claimRef": {
                        "namespace": meta["namespace"],
                        "name": meta["name"],
                        "uid": meta["uid"],
                    },
                },
            }
            try:
                self.api.request("POST", "/api/v1/persistentvolumes", volume)
            except ApiError as exc:
                if exc.status != 409:
                    log.warning(
                        "PersistentVolume for %s/%s: %s", meta["namespace"], meta["name"], exc
                    )

    def claim_path(self, namespace: str, claim: str) -> str | None:
        found = self.api.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
        if not found or (found.get("status") or {}).get("phase") != "Bound":
            return None
        volume = self.api.get(f"/api/v1/persistentvolumes/{found['spec']['volumeName']}")
        path = ((volume or {}).get("spec") or {}).get("hostPath", {}).get("path")
        return str(path) if path else None

    # --- lookups and events -------------------------------------------------------------------

    def lookup(self, kind: str, namespace: str, name: str) -> Obj | None:
        plural = "secrets" if kind == "Secret" else "configmaps"
        return self.api.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")

    def service_account_token(self, pod: Obj, audience: str | None, seconds: int | None) -> str:
        """A token of the pod's ServiceAccount bound to the pod, from the TokenRequest API, as
        the kubelet gets it for the admission plugin's projected volume (no audience: the API
        server's own). Not refreshed: the API server extends the admission plugin's 3607 s to a
        year (--service-account-extend-token-expiration, on by default)."""
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        spec: Obj = {
            "audiences": [audience] if audience else [],
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "uid": meta["uid"],
            },
        }
        if seconds:
            spec["expirationSeconds"] = int(seconds)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token"
        try:
            result = self.api.request("POST", path, body)
        except ApiError as exc:
            raise SpecError(
                "FailedMount", f"token of ServiceAccount {account!r}: HTTP {exc.status}"
            ) from None
        return str(result["status"]["token"])

    def lookup_data(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        obj = self.lookup(kind, namespace, name)
        if obj is None:
            return None
        return {k: v.decode(errors="replace") for k, v in volumes.decoded(kind, obj).items()}

    def event(
        self, obj: Obj, kind: str, type_: str, reason: str, message: str, field_path: str = ""
    ) -> None:
        meta = obj["metadata"]
        involved = {
            "apiVersion": "v1",
            "kind": kind,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        }
        if field_path:
            involved["fieldPath"] = field_path
        stamp = now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": involved,
            "reason": reason,
            "message": message[:1000],
            "type": type_,
            "source": {"component": "kubelet", "host": self.node},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
        }
        try:
            self.api.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body)
        except Exception as exc:
            log.warning("event %s %s: %s", reason, meta["name"], exc)


def write_in_place(path: Path, text: str) -> None:
    with open(path, "a+") as f:
        f.seek(0)
        if f.read() == text:
            return
        f.seek(0)
        f.truncate()
        f.write(text)
    os.chmod(path, 0o644)


class PodWorker(threading.Thread):
    """One pod, from sandbox to the final DELETE."""

    def __init__(self, kubelet: Kubelet, pod: Obj) -> None:
        super().__init__(name=f"pod-{pod['metadata']['name']}", daemon=True)
        self.kubelet, self.pod = kubelet, pod
        self.uid = pod["metadata"]["uid"]
        self.dir = kubelet.state / "pods" / self.uid
        self.wake, self.gone, self.stop_probes = (
            threading.Event(),
            threading.Event(),
            threading.Event(),
        )
        self.ip = ""
        self.start_time = ""
        self.folders: dict[str, str] = {}
        self.containers = [
            Container(c, pod, self.container_event) for c in pod["spec"]["containers"]
        ]
        self.transitions: dict[str, tuple[str, str]] = {}
        self.sent: Obj = {}
        self.warned: set[tuple[str, str]] = set()

    def update(self, pod: Obj) -> None:
        self.pod = pod
        self.wake.set()

    def event(self, type_: str, reason: str, message: str, field_path: str = "") -> None:
        self.kubelet.event(self.pod, "Pod", type_, reason, message, field_path)

    def container_event(self, type_: str, reason: str, message: str, field_path: str) -> None:
        self.event(type_, reason, message, field_path)

    def deleting(self) -> bool:
        return bool(self.pod["metadata"].get("deletionTimestamp"))

    def grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        value = meta.get(
            "deletionGracePeriodSeconds", spec.get("terminationGracePeriodSeconds", 30)
        )
        return float(value)

    # --- the pod's life -----------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.live()
        except Exception as exc:
            log.exception("pod %s", self.pod["metadata"]["name"])
            self.event("Warning", "FailedSync", f"process kubelet: {exc!r}")
        finally:
            self.teardown()
            self.kubelet.worker_done(self.uid)

    def live(self) -> None:
        unsupported = podspec.unsupported_fields(self.pod)
        if unsupported:
            message = "the process kubelet does not support: " + ", ".join(unsupported)
            self.event("Warning", "UnsupportedPodSpec", message)
            self.push(
                {
                    "phase": "Failed",
                    "reason": "UnsupportedPodSpec",
                    "message": message,
                    "conditions": [self.condition("Ready", False, "UnsupportedPodSpec", message)],
                }
            )
            return
        self.warn_seccomp()
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        self.ip = self.kubelet.addresses.take()
        self.start_time = now()
        namespace = netns.create_netns(self.uid, self.ip)
        (self.dir / "resolv.conf").write_text(
            "# process kubelet: no cluster DNS; Service names are in /etc/hosts\n"
        )
        self.write_hosts()
        self.push_status()
        prepared = False
        while not prepared:
            if self.gone.is_set() or self.deleting():
                return self.terminate()
            try:
                self.folders = volumes.prepare(
                    self.pod,
                    self.dir,
                    self.kubelet.lookup,
                    self.kubelet.claim_path,
                    self.kubelet.service_account_token,
                )
                prepared = True
            except SpecError as exc:
                self.warn_once("FailedMount", f"MountVolume.SetUp failed: {exc.message}")
                self.wake.wait(2)
                self.wake.clear()
        checked = 0.0
        while not self.gone.is_set():
            if self.deleting():
                return self.terminate()
            policy = self.pod["spec"].get("restartPolicy", "Always")
            for container in self.containers:
                container.exited(policy)
                if container.process is None and time.monotonic() >= container.next_start:
                    self.start_container(container, namespace)
            if time.monotonic() - checked > 10:
                checked = time.monotonic()
                if self.over_size_limit():
                    return self.terminate()
            self.push_status()
            if self.phase() in ("Succeeded", "Failed"):
                return None
            self.wake.wait(0.5)
            self.wake.clear()
        return None

    def start_container(self, container: Container, namespace: str) -> None:
        spec = container.spec
        pod = {
            **self.pod,
            "status": {
                **(self.pod.get("status") or {}),
                "podIP": self.ip,
                "podIPs": [{"ip": self.ip}],
                "hostIP": netns.HOST_ADDRESS,
                "hostIPs": [{"ip": netns.HOST_ADDRESS}],
            },
        }
        try:
            table = podspec.executables()
            env = podspec.container_env(
                pod, spec, self.kubelet.lookup_data, self.kubelet.allocatable
            )
            argv = podspec.container_argv(spec, env, table)
            env = {
                "PATH": podspec.container_path(table),
                "HOSTNAME": pod["spec"].get("hostname") or pod["metadata"]["name"],
                "HOME": "/",
                **podspec.kubernetes_service_env(self.kubelet.api.server),
                **env,
            }
            if container.restart_count == 0 and container.generation == 0:
                self.event(
                    "Normal",
                    "Pulled",
                    f'Container image "{spec.get("image")}" not pulled: '
                    f"the process kubelet runs {argv[0]}",
                    container.field_path,
                )
            self.event(
                "Normal", "Created", f"Created container: {container.name}", container.field_path
            )
            container.pod_ip = self.ip
            container.start(
                Start(
                    pod,
                    self.dir,
                    namespace,
                    self.folders,
                    str(self.dir / "hosts"),
                    str(self.dir / "resolv.conf"),
                    env,
                    argv,
                )
            )
        except SpecError as exc:
            container.state = {"waiting": {"reason": exc.reason, "message": exc.message}}
            container.next_start = time.monotonic() + 10
            self.event("Warning", "Failed", f"Error: {exc.message}", container.field_path)
            return
        container.run_probes(self.stop_probes, self.grace)

    def terminate(self) -> None:
        """preStop, SIGTERM, SIGKILL at the grace period (all containers at once), then the
        final DELETE with grace 0 and a UID precondition."""
        grace = self.grace()
        stoppers = [
            threading.Thread(
                target=c.kill, args=(grace, f"Stopping container {c.name}"), daemon=True
            )
            for c in self.containers
            if c.process is not None
        ]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        for container in self.containers:
            container.exited("Never")
        self.stop_probes.set()
        if self.gone.is_set():
            return
        self.push_status()
        self.teardown()
        meta = self.pod["metadata"]
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        with contextlib.suppress(ApiError):
            self.kubelet.api.request(
                "DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", body
            )

    def teardown(self) -> None:
        self.stop_probes.set()
        for container in self.containers:
            if container.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    container.process.kill()
                container.process.wait()
                container.process = None
            netns.delete_cgroup(container.cgroup)
        if self.ip:
            netns.delete_netns(self.uid)
            self.kubelet.addresses.give_back(self.ip)
            self.ip = ""
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- checks -------------------------------------------------------------------------------

    def warn_once(self, reason: str, message: str) -> None:
        if (reason, message) not in self.warned:
            self.warned.add((reason, message))
            self.event("Warning", reason, message)

    def warn_seccomp(self) -> None:
        profiles = [(self.pod["spec"].get("securityContext") or {}).get("seccompProfile")]
        profiles += [
            (c.get("securityContext") or {}).get("seccompProfile")
            for c in self.pod["spec"]["containers"]
        ]
        if any(p and p.get("type") == "RuntimeDefault" for p in profiles):
            self.event(
                "Warning",
                "SeccompNotEnforced",
                "seccompProfile RuntimeDefault: the process kubelet applies no seccomp filter",
            )

    def over_size_limit(self) -> bool:
        for volume in self.pod["spec"].get("volumes") or []:
            limit = (volume.get("emptyDir") or {}).get("sizeLimit")
            if limit and volume["name"] in self.folders:
                used = volumes.folder_bytes(self.folders[volume["name"]])
                if used > podspec.quantity(limit):
                    message = (
                        f"Usage of EmptyDir volume {volume['name']!r} exceeds the limit {limit!r}."
                    )
                    self.event("Warning", "Evicted", message)
                    self.push({"phase": "Failed", "reason": "Evicted", "message": message})
                    return True
        return False

    # --- status -------------------------------------------------------------------------------

    def write_hosts(self) -> None:
        if not self.ip or not self.dir.exists():
            return
        spec, meta = self.pod["spec"], self.pod["metadata"]
        hostname = spec.get("hostname") or meta["name"]
        own = f"{self.ip}\t{hostname}"
        if spec.get("subdomain"):
            own += f" {hostname}.{spec['subdomain']}.{meta['namespace']}.svc.cluster.local"
        write_in_place(self.dir / "hosts", self.kubelet.entries.text(own + "\n"))

    def phase(self) -> str:
        states = [c.state for c in self.containers]
        waiting_restart = any(c.next_start != float("inf") for c in self.containers)
        if any("running" in s for s in states) or (
            waiting_restart and any(c.restart_count for c in self.containers)
        ):
            return "Running"
        if all("terminated" in s for s in states) and not waiting_restart:
            codes = [s["terminated"]["exitCode"] for s in states]
            return "Succeeded" if all(code == 0 for code in codes) else "Failed"
        return "Pending"

    def condition(self, kind: str, ok: bool, reason: str = "", message: str = "") -> Obj:
        status = "True" if ok else "False"
        if self.transitions.get(kind, ("", ""))[0] != status:
            self.transitions[kind] = (status, now())
        condition = {
            "type": kind,
            "status": status,
            "lastTransitionTime": self.transitions[kind][1],
            "lastProbeTime": None,
        }
        if reason:
            condition.update(reason=reason, message=message)
        return condition

    def push_status(self) -> None:
        statuses = [c.status(c.spec.get("image", "")) for c in self.containers]
        ready = all(s["ready"] for s in statuses)
        not_ready = [s["name"] for s in statuses if not s["ready"]]
        why = (
            ("ContainersNotReady", f"containers with unready status: [{' '.join(not_ready)}]")
            if not_ready
            else ("", "")
        )
        status: Obj = {
            "phase": self.phase(),
            "hostIP": netns.HOST_ADDRESS,
            "hostIPs": [{"ip": netns.HOST_ADDRESS}],
            "startTime": self.start_time,
            "conditions": [
                self.condition("PodReadyToStartContainers", bool(self.ip)),
                self.condition("Initialized", True),
                self.condition("ContainersReady", ready, *why),
                self.condition("Ready", ready, *why),
                self.condition("PodScheduled", True),
            ],
            "containerStatuses": statuses,
        }
        if self.ip:
            status.update(podIP=self.ip, podIPs=[{"ip": self.ip}])
        self.push(status)

    def push(self, status: Obj) -> None:
        if status == self.sent:
            return
        meta = self.pod["metadata"]
        try:
            self.kubelet.api.request(
                "PATCH",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                {"status": status},
                content_type=STRATEGIC,
            )
            self.sent = status
        except ApiError as exc:
            log.warning("status of %s: %s", meta["name"], exc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster.kubelet", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--cpu", default="2")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    kubelet = Kubelet(args.kubeconfig, args.node_name, args.state_dir, cpu=args.cpu).start()
    done = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: done.set())
    done.wait()
    kubelet.stop()


if __name__ == "__main__":
    main()
