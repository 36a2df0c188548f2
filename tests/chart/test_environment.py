"""The environment the chart renders is accepted by each component's own settings code: every
celeriac container's env (Downward API values and mounted files filled in as Kubernetes would)
goes through the component's `from_env`, the worker's real pool sizing, the beat schedule parser
and the exporter's worker-groups loader."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import pytest

from celeriac.api.settings import DEFAULT_PORT as API_PORT
from celeriac.api.settings import ApiSettings
from celeriac.beat.schedule import load_schedule
from celeriac.beat.settings import BeatSettings
from celeriac.exporter.settings import ExporterSettings
from celeriac.settings import Settings
from celeriac.worker.cgroup import CgroupReader
from celeriac.worker.settings import WorkerSettings
from celeriac.worker.sizing import size_worker
from tests.chart.matrix import MATRIX
from tests.chart.quantities import cpu_cores, pool_size
from tests.chart.render import Obj, Rendered, pod_spec

pytestmark = pytest.mark.chart

MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def memory_bytes(quantity: str) -> int:
    for suffix, factor in MEMORY_UNITS.items():
        if quantity.endswith(suffix):
            return int(quantity.removesuffix(suffix)) * factor
    return int(quantity)


def mounted_files(rendered: Rendered, spec: Obj, container: Obj, root: Path) -> None:
    """Write what Kubernetes would mount from this chart's ConfigMaps and Secrets under root."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        target = root / mount["mountPath"].lstrip("/")
        if "configMap" in volume:
            data = rendered.get("ConfigMap", volume["configMap"]["name"])["data"]
            files = dict(data)
        elif "secret" in volume:
            name = volume["secret"]["secretName"]
            if rendered.has("Secret", name):
                raw = rendered.get("Secret", name)["data"]
                files = {k: base64.b64decode(v).decode() for k, v in raw.items()}
            else:  # an existing Secret the user provides
                files = {item["key"]: "s3cret" for item in volume["secret"]["items"]}
            files = {item["path"]: files[item["key"]] for item in volume["secret"]["items"]}
        else:
            continue
        target.mkdir(parents=True, exist_ok=True)
        for filename, content in files.items():
            (target / filename).write_text(content, encoding="utf-8")


def environment(container: Obj, root: Path) -> dict[str, str]:
    environ = {}
    limits = container["resources"]["limits"]
    for entry in container["env"]:
        if "value" in entry:
            value = entry["value"]
            environ[entry["name"]] = (
                str(root / value.lstrip("/")) if value.startswith("/etc/") else value
            )
            continue
        if "fieldRef" in entry["valueFrom"]:  # a pod name as a Deployment makes them
            path = entry["valueFrom"]["fieldRef"]["fieldPath"]
            pod = {"metadata.name": "celeriac-worker-default-6f9c8d7b5-x2x7q"}
            environ[entry["name"]] = {**pod, "metadata.namespace": "tasks"}[path]
            continue
        field = entry["valueFrom"]["resourceFieldRef"]
        assert field["divisor"] == "1"
        if field["resource"] == "limits.cpu":
            environ[entry["name"]] = str(math.ceil(cpu_cores(limits["cpu"])))
        else:
            environ[entry["name"]] = str(memory_bytes(limits["memory"]))
    return environ


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_components_accept_the_rendered_environment(
    renders: dict[str, Rendered], case: str, tmp_path: Path
) -> None:
    rendered = renders[case]
    for workload in rendered.workloads():
        component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
        if component in ("redis", "test"):
            continue
        spec = pod_spec(workload)
        (container,) = spec["containers"]
        root = tmp_path / workload["metadata"]["name"]
        mounted_files(rendered, spec, container, root)
        environ = environment(container, root)
        common = Settings.from_env(environ)
        assert common.app == "celeriac.demo:app"
        if "CELERIAC_REDIS_PASSWORD_FILE" in environ:
            assert common.redis_password
        if component == "worker":
            worker = WorkerSettings.from_env(environ)
            no_cgroup = CgroupReader(root=tmp_path / "none", proc_self_cgroup=tmp_path / "none")
            sizing = size_worker(worker, no_cgroup, cpus_available=lambda: 64)
            limit = container["resources"]["limits"]["cpu"]
            per_cpu = float(environ["CELERIAC_WORKER_CONCURRENCY_PER_CPU"])
            # The worker's own sizing agrees with the chart (and so with the KEDA target).
            assert sizing.pool == pool_size(limit, per_cpu), sizing.describe()
            assert worker.shutdown_timeout_seconds < spec["terminationGracePeriodSeconds"]
            # The deletion cost is on exactly where the pod mounts the token it needs.
            assert worker.deletion_cost is spec["automountServiceAccountToken"]
        elif component == "api":
            api = ApiSettings.from_env(environ)
            assert api.port == API_PORT
        elif component == "beat":
            beat = BeatSettings.from_env(environ)
            assert beat.schedule_file is not None
            load_schedule(beat.schedule_file)
        elif component == "exporter":
            exporter = ExporterSettings.from_env(environ)
            groups = {group.name for group in exporter.groups}
            deployments = {
                d["metadata"]["labels"].get("celeriac.io/worker-group")
                for d in rendered.of_kind("Deployment")
            }
            assert groups == deployments - {None}
