"""One container of a pod: start it through sandbox.py, probe it, stop it as the kubelet does.

The pod worker (kubelet.py) owns the pod; a Container owns its process, its cgroup, its probe
threads and the fields of its containerStatus.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cluster import netns, podspec
from tests.cluster.api import now
from tests.cluster.podspec import Obj, SpecError

SANDBOX = str(Path(__file__).with_name("sandbox.py"))
BACKOFF_START, BACKOFF_MAX, BACKOFF_RESET = 10.0, 300.0, 600.0
SANDBOX_SECONDS = 30.0  # deadline for the sandbox's setup (namespaces, mounts) before exec

Event = Callable[[str, str, str, str], None]  # (type, reason, message, fieldPath)


@dataclass
class Start:
    """What a container start needs from its pod."""

    pod: Obj
    pod_dir: Path
    netns: str
    folders: dict[str, str]  # volume name -> host folder
    hosts: str
    resolv: str
    env: dict[str, str]
    argv: list[str]


class Container:
    def __init__(self, spec: Obj, pod: Obj, event: Event) -> None:
        self.spec, self.name = spec, spec["name"]
        self.uid = pod["metadata"]["uid"]
        self.field_path = f"spec.containers{{{self.name}}}"
        self.event = lambda kind, reason, message: event(kind, reason, message, self.field_path)
        self.cgroup = f"{self.uid}-{self.name}"
        self.process: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.restart_count = 0
        self.state: Obj = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: Obj = {}
        self.started = False
        self.ready = False
        self.started_at = 0.0
        self.next_start = 0.0  # monotonic time of the next (re)start
        self.backoff = 0.0
        self.killing = False
        self.config_path = ""
        self.pod_ip = ""
        self._oom_before = 0
        self._lock = threading.Lock()

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, start: Start) -> None:
        """Spawn the container's process (raises SpecError when its config is invalid)."""
        pod, spec = start.pod, self.spec
        pod_security = pod["spec"].get("securityContext") or {}
        security = {**pod_security, **(spec.get("securityContext") or {})}
        uid = int(security.get("runAsUser", 0))
        gid = int(security.get("runAsGroup", 0))
        if security.get("runAsNonRoot") and uid == 0:
            raise SpecError(
                "CreateContainerConfigError",
                "container has runAsNonRoot and would run as root (uid 0)",
            )
        groups = [int(g) for g in pod_security.get("supplementalGroups") or []]
        if pod_security.get("fsGroup") is not None:
            groups.insert(0, int(pod_security["fsGroup"]))
        resources = spec.get("resources") or {}
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        cpu_request = requests.get("cpu", limits.get("cpu"))
        cgroups = netns.create_cgroup(
            self.cgroup,
            float(podspec.quantity(limits["cpu"])) if "cpu" in limits else None,
            float(podspec.quantity(cpu_request)) if cpu_request else None,
            int(podspec.quantity(limits["memory"])) if "memory" in limits else None,
        )
        self._oom_before = netns.oom_kills(self.cgroup)
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        mounts = []
        for mount in spec.get("volumeMounts") or []:
            volume = volumes.get(mount["name"])
            if volume is None:
                raise SpecError("CreateContainerConfigError", f"no volume {mount['name']!r}")
            source = start.folders[mount["name"]]
            if mount.get("subPath"):
                source = os.path.join(source, mount["subPath"])
                if not os.path.exists(source):
                    os.makedirs(source)
            projected = any(kind in volume for kind in ("secret", "configMap", "projected"))
            claim_ro = (volume.get("persistentVolumeClaim") or {}).get("readOnly", False)
            readonly = bool(mount.get("readOnly") or projected or claim_ro)
            mounts.append({"source": source, "target": mount["mountPath"], "readonly": readonly})
        base = start.pod_dir / "rootfs" / self.name
        base.mkdir(parents=True, exist_ok=True)
        termination_log = start.pod_dir / f"{self.name}.termination-log"
        termination_log.write_text("")
        os.chmod(termination_log, 0o666)
        error_file = start.pod_dir / f"{self.name}.error"
        error_file.unlink(missing_ok=True)
        caps = (security.get("capabilities") or {}).get("drop") or []
        config = {
            "netns": start.netns,
            "hostname": pod["spec"].get("hostname") or pod["metadata"]["name"],
            "base": str(base),
            "hosts": start.hosts,
            "resolv": start.resolv,
            "termination_log": str(termination_log),
            "error_file": str(error_file),
            "mounts": mounts,
            "provided": podspec.provided_folders(),
            "read_only_root": bool(security.get("readOnlyRootFilesystem")),
            "cgroups": cgroups,
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "drop_caps": "ALL" in caps,
            "no_new_privs": security.get("allowPrivilegeEscalation") is False,
            "cwd": spec.get("workingDir") or "/",
            "argv": start.argv,
            "env": start.env,
        }
        self.config_path = str(start.pod_dir / f"{self.name}.json")
        log_path = start.pod_dir / "logs" / f"{self.name}-{self.restart_count}.log"
        started_read, started_write = os.pipe()
        config["started_fd"] = started_write
        with open(
            os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w"
        ) as f:
            json.dump(config, f)
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, SANDBOX, "run", self.config_path],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(started_write,),
            )
        os.close(started_write)
        with os.fdopen(started_read, "rb") as started:  # EOF: exec'd (or the sandbox failed)
            ready, _, _ = select.select([started], [], [], SANDBOX_SECONDS)
            if ready:
                started.read()
        with self._lock:
            self.generation += 1
            self.killing = False
            self.started = "startupProbe" not in spec
            self.ready = False
            self.started_at = time.monotonic()
            self.state = {"running": {"startedAt": now()}}
        self.event("Normal", "Started", f"Started container {self.name}")

    def exited(self, restart_policy: str) -> bool:
        """If the process ended: record it, plan the restart; True when it ended just now."""
        if self.process is None or self.process.poll() is None:
            return False
        code = self.process.returncode
        self.process = None
        netns.kill_cgroup(self.cgroup)
        error = Path(self.config_path).with_suffix(".error")
        terminated: Obj = {
            "exitCode": code if code >= 0 else 128 - code,
            "startedAt": self.state.get("running", {}).get("startedAt", now()),
            "finishedAt": now(),
            "reason": "Completed" if code == 0 else "Error",
        }
        if code < 0:
            terminated["signal"] = -code
        if netns.oom_kills(self.cgroup) > self._oom_before:
            terminated["reason"] = "OOMKilled"
        if error.exists():
            terminated["reason"], terminated["message"] = "StartError", error.read_text()
        with self._lock:
            self.generation += 1
            self.started = self.ready = False
            self.state = {"terminated": terminated}
        restart = restart_policy == "Always" or (restart_policy == "OnFailure" and code != 0)
        if restart:
            ran = time.monotonic() - self.started_at
            self.backoff = (
                0.0
                if ran > BACKOFF_RESET
                else min(BACKOFF_MAX, max(BACKOFF_START, self.backoff * 2))
            )
            self.next_start = time.monotonic() + (0.0 if self.restart_count == 0 else self.backoff)
            self.last_state = {"terminated": terminated}
            self.restart_count += 1
            if self.next_start > time.monotonic():
                self.state = {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off {self.backoff:.0f}s restarting failed "
                        f"container={self.name}",
                    }
                }
                self.event(
                    "Warning", "BackOff", "Back-off restarting failed container " + self.name
                )
        else:
            self.next_start = float("inf")
        return True

    def kill(self, grace: float, message: str) -> None:
        """preStop, SIGTERM, SIGKILL at the grace period: the kubelet's container stop."""
        with self._lock:
            process = self.process
            if process is None or self.killing:
                return
            self.killing = True
        deadline = time.monotonic() + grace
        self.event("Normal", "Killing", message)
        pre_stop = (self.spec.get("lifecycle") or {}).get("preStop")
        if pre_stop and "exec" in pre_stop:
            ok, output = self.exec(
                pre_stop["exec"]["command"], max(1.0, deadline - time.monotonic())
            )
            if not ok:
                self.event("Warning", "FailedPreStopHook", f"PreStopHook failed: {output}")
        elif pre_stop and "sleep" in pre_stop:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=min(float(pre_stop["sleep"]["seconds"]), grace))
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 2.0 if pre_stop else 0.0))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()

    # --- probes -------------------------------------------------------------------------------

    def exec(self, command: list[str], timeout: float) -> tuple[bool, str]:
        """Run ``command`` inside the running container (its namespaces, root, user, cgroups)."""
        process = self.process
        if process is None:
            return False, "container not running"
        try:
            argv = [podspec.resolve_executable(command[0], podspec.executables()), *command[1:]]
        except SpecError as exc:
            return False, exc.message
        try:
            result = subprocess.run(
                [sys.executable, SANDBOX, "enter", self.config_path, str(process.pid), *argv],
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False, f"command timed out after {timeout:g}s"
        output = (result.stdout + result.stderr).decode(errors="replace").strip()[-300:]
        return result.returncode == 0, output or f"exit code {result.returncode}"

    def probe_once(self, probe: Obj) -> tuple[bool, str]:
        timeout = float(probe.get("timeoutSeconds", 1))
        if "exec" in probe:
            return self.exec(probe["exec"]["command"], timeout)
        handler = probe.get("httpGet") or probe.get("tcpSocket") or {}
        port = self.port(handler.get("port"))
        try:
            if "tcpSocket" in probe:
                socket.create_connection((self.pod_ip, port), timeout=timeout).close()
                return True, ""
            connection = http.client.HTTPConnection(self.pod_ip, port, timeout=timeout)
            headers = {h["name"]: h["value"] for h in handler.get("httpHeaders") or []}
            connection.request(
                "GET",
                handler.get("path", "/"),
                headers={"User-Agent": "kube-probe/1.35", **headers},
            )
            status = connection.getresponse().status
            connection.close()
        except OSError as exc:
            return False, f'Get "http://{self.pod_ip}:{port}{handler.get("path", "/")}": {exc}'
        return 200 <= status < 400, f"HTTP probe failed with statuscode: {status}"

    def port(self, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for declared in self.spec.get("ports") or []:
            if declared.get("name") == port:
                return int(declared["containerPort"])
        raise ValueError(f"no port named {port!r}")

    def run_probes(self, stop: threading.Event, grace: Callable[[], float]) -> None:
        """Start this generation's probe threads."""
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            if kind in self.spec:
                threading.Thread(
                    target=self._probe_loop,
                    args=(kind, self.spec[kind], self.generation, stop, grace),
                    daemon=True,
                    name=f"{self.cgroup}-{kind}",
                ).start()

    def _probe_loop(
        self,
        kind: str,
        probe: Obj,
        generation: int,
        stop: threading.Event,
        grace: Callable[[], float],
    ) -> None:
        period = float(probe.get("periodSeconds", 10))
        success_needed = int(probe.get("successThreshold", 1))
        failure_limit = int(probe.get("failureThreshold", 3))
        successes = failures = 0
        label = kind.removesuffix("Probe").capitalize()
        if stop.wait(float(probe.get("initialDelaySeconds", 0))):
            return
        while not stop.is_set() and self.generation == generation and not self.killing:
            if kind != "startupProbe" and not self.started:
                stop.wait(0.5)
                continue
            ok, message = self.probe_once(probe)
            if self.generation != generation or self.killing:
                return
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if not ok:
                self.event("Warning", "Unhealthy", f"{label} probe failed: {message}")
            if kind == "startupProbe" and successes >= success_needed:
                self.started = True
                return
            if kind == "readinessProbe":
                if successes >= success_needed:
                    self.ready = True
                elif failures >= failure_limit:
                    self.ready = False
            elif failures >= failure_limit:
                why = "startup" if kind == "startupProbe" else "liveness"
                self.kill(grace(), f"Container {self.name} failed {why} probe, will be restarted")
                return
            stop.wait(period)

    def status(self, image: str) -> Obj:
        with self._lock:
            ready = self.ready and self.started and self.process is not None
            if "readinessProbe" not in self.spec:
                ready = self.started and self.process is not None
            status: Obj = {
                "name": self.name,
                "image": image,
                "imageID": "",
                "ready": ready,
                "started": self.started and self.process is not None,
                "restartCount": self.restart_count,
                "state": self.state,
                "lastState": self.last_state,
            }
            if self.process is not None:
                status["containerID"] = f"process://{self.process.pid}"
            return status
