"""The autoscaling burst (issue 10, items 1 and 6), shared by the local control plane's test
(tests/cluster/test_autoscaling.py) and kind's (tests/e2e/test_autoscaling.py): ``burst_scenario``
installs, runs, checks and uninstalls; the helpers below also serve tests/scenarios/recovery.py and
rollouts.py.

A burst of ``tasks`` celeriac.demo.sleep tasks of ``seconds`` each goes in through the API; a
timeline is sampled about once a second (the exporter's backlog and tasks in flight, the HPA's
desired and current replicas, the Deployment's replicas and ready replicas, the worker pods, the
tasks finished according to the API, and the runs counted by the workers' own counters) until
every task has finished and the group is back at its minimum. The timeline is written as CSV
(always) and drawn as a PNG (when matplotlib is installed: the `bench` extra).

Only how a test reaches the API and a pod's port differs between clusters (``BurstCluster``,
``ScenarioCluster``: tests/cluster/test_autoscaling.py's LocalCluster at the pods' bridge
addresses, tests/e2e/kind.py's KindCluster through kubectl port-forward).
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from celeriac.exporter.collector import GROUP_BACKLOG, QUEUE_IN_FLIGHT
from celeriac.exporter.settings import DEFAULT_PORT as EXPORTER_PORT
from celeriac.testing import wait_until
from celeriac.worker.metrics import TASKS_SUCCEEDED
from celeriac.worker.settings import DEFAULT_METRICS_PORT as WORKER_METRICS_PORT
from tests.scenarios import scenario
from tests.scenarios.scenario import (
    COMPONENT_LABEL,
    FINISHED,
    Kubectl,
    Obj,
    Release,
    condition,
    kubectl_json,
    submit,
)
from tests.support import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"
# Set to 1 to (re)write the tracked timeline and figures in bench/results; otherwise a run writes
# them to its own temporary directory and the working tree stays clean.
RECORD_RESULTS_ENV = "CELERIAC_RECORD_RESULTS"
TASK = "celeriac.demo.sleep"

# The burst's layer over the scenario's values. Scale-up: the chart's defaults (behavior
# scaleUp as shipped). Shortened for the test, and said so in the README: KEDA's polling interval
# (5 s, as values-dev), the scale-down stabilization window (20 s instead of 300 s) and the
# scale-down policy (100 % per 15 s instead of 50 % per 60 s), so that the group is back at its
# minimum within a minute of the drain. A small CPU limit (500m: a pool of 1) so that several
# worker pods fit on two cores.
MAX_REPLICAS = 6


def burst_values(max_replicas: int = MAX_REPLICAS) -> dict[str, Any]:
    return {
        "workerDefaults": {
            "autoscaling": {
                "engine": "keda",
                "minReplicas": 1,
                "maxReplicas": max_replicas,
                "keda": {
                    "pollingIntervalSeconds": 5,
                    "behavior": {
                        "scaleDown": {
                            "stabilizationWindowSeconds": 20,
                            "selectPolicy": "Max",
                            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
                        }
                    },
                },
            }
        },
        "workers": {
            "default": {
                "resources": {
                    "requests": {"cpu": "50m", "memory": "128Mi"},
                    "limits": {"cpu": "500m", "memory": "384Mi"},
                }
            }
        },
    }


class BurstCluster(Kubectl, Protocol):
    def http_get(self, pod: Obj, port: int, path: str) -> str:
        """GET ``path`` on ``pod``'s ``port``; the body (raises when unreachable)."""
        ...


class ScenarioCluster(BurstCluster, Protocol):
    """What a whole scenario needs of a cluster (tests/cluster/test_autoscaling.py's
    LocalCluster, tests/e2e/kind.py's KindCluster)."""

    def api_url(self, release: Release) -> str:
        """A base URL, reachable from the test, of a Ready pod of ``release``'s API."""
        ...

    def diagnostics(self) -> str:
        """What to print when a scenario fails."""
        ...


@dataclass
class Sample:
    t: float
    backlog: float | None
    in_flight: float | None
    hpa_desired: int | None
    hpa_current: int | None
    replicas: int | None
    ready_replicas: int | None
    worker_pods: int
    completed: int
    runs: int


@dataclass
class Burst:
    tasks: int
    seconds: float
    pool: int
    min_replicas: int
    max_replicas: int
    samples: list[Sample] = field(default_factory=list)
    results: dict[str, Obj] = field(default_factory=dict)
    # Per worker pod uid: the highest count of successful runs its metrics showed.
    runs_by_pod: dict[str, int] = field(default_factory=dict)
    finished_at: float | None = None

    @property
    def needed(self) -> int:
        return min(self.max_replicas, math.ceil(self.tasks / self.pool))

    @property
    def runs(self) -> int:
        return sum(self.runs_by_pod.values())

    def figures(self) -> dict[str, Any]:
        """Times from the submission of the first task (t=0)."""

        def first(predicate: Any) -> float | None:
            return next((s.t for s in self.samples if predicate(s)), None)

        work = self.tasks * self.seconds
        ideal_drain = work / (self.max_replicas * self.pool)
        drain = self.finished_at
        seen = first(lambda s: (s.backlog or 0) > 0)
        first_up = first(lambda s: (s.replicas or 0) > self.min_replicas)
        needed_at = first(lambda s: (s.replicas or 0) >= self.needed)
        ready_at = first(lambda s: (s.ready_replicas or 0) >= self.needed)
        replica_seconds = 0.0
        for before, after in zip(self.samples, self.samples[1:], strict=False):
            if drain is not None and before.t >= drain:
                break
            replica_seconds += (before.worker_pods) * (after.t - before.t)
        ideal_replica_seconds = work / self.pool

        def ratio(value: float | None, ideal: float) -> float | None:
            return None if value is None else round(value / ideal, 2)

        return {
            "tasks": self.tasks,
            "task_seconds": self.seconds,
            "pool_per_pod": self.pool,
            "max_replicas": self.max_replicas,
            "needed_replicas": self.needed,
            "backlog_seen_by_exporter_s": seen,
            "first_scale_up_s": first_up,
            "needed_replicas_set_s": needed_at,
            "needed_replicas_ready_s": ready_at,
            "needed_after_backlog_seen_s": (
                None if needed_at is None or seen is None else round(needed_at - seen, 1)
            ),
            "drain_s": None if drain is None else round(drain, 1),
            "ideal_drain_s": round(ideal_drain, 1),
            "drain_vs_ideal": ratio(drain, ideal_drain),
            "replica_seconds": round(replica_seconds, 1),
            "ideal_replica_seconds": round(ideal_replica_seconds, 1),
            "replica_seconds_vs_ideal": ratio(replica_seconds, ideal_replica_seconds),
            "back_to_min_s": self.samples[-1].t if self.samples else None,
            "runs_counted": self.runs,
        }


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def run_burst(
    cluster: BurstCluster,
    release: Release,
    api: httpx.Client,
    *,
    tasks: int,
    seconds: float,
    group: str = "default",
    timeout: float = 600,
) -> Burst:
    """Submit the burst and sample until every task finished and the group is back at its
    minimum with no worker pod terminating."""
    scaled = release.one(cluster, "scaledobject", "worker")
    hpa_name = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["name"]
    deployment = release.worker_deployment(cluster)["metadata"]["name"]
    # The chart's trigger target is pool x targetTasksPerProcess (1 in these values).
    (trigger,) = scaled["spec"]["triggers"]
    pool = int(float(trigger["metadata"]["targetValue"]))
    burst = Burst(
        tasks=tasks,
        seconds=seconds,
        pool=pool,
        min_replicas=int(scaled["spec"]["minReplicaCount"]),
        max_replicas=int(scaled["spec"]["maxReplicaCount"]),
    )
    worker_selector = f"{COMPONENT_LABEL}=worker"

    start = time.monotonic()
    ids = [submit(api, TASK, seconds=seconds) for _ in range(tasks)]
    pending = set(ids)

    def sample() -> bool:
        now = time.monotonic() - start
        for task_id in sorted(pending):
            status = api.get(f"/v1/tasks/{task_id}").json()
            if status["state"] in FINISHED:
                burst.results[task_id] = status
                pending.discard(task_id)
        if not pending and burst.finished_at is None:
            burst.finished_at = now
        objects = kubectl_json(
            cluster, "get", f"hpa/{hpa_name}", f"deployment/{deployment}", "-n", release.namespace
        )["items"]
        hpa, deploy = objects[0]["status"], objects[1]
        pods = release.pods(cluster, worker_selector)
        for pod in pods:
            if not pod["status"].get("podIP"):
                continue
            try:
                text = cluster.http_get(pod, WORKER_METRICS_PORT, "/metrics")
            except (httpx.HTTPError, OSError):
                continue  # starting or gone
            uid = pod["metadata"]["uid"]
            count = int(metric(text, TASKS_SUCCEEDED, task=TASK))
            burst.runs_by_pod[uid] = max(burst.runs_by_pod.get(uid, 0), count)
        backlog = in_flight = None
        for exporter in release.pods(cluster, f"{COMPONENT_LABEL}=exporter"):
            try:
                text = cluster.http_get(exporter, EXPORTER_PORT, "/metrics")
            except (httpx.HTTPError, OSError):
                continue
            backlog = metric(text, GROUP_BACKLOG, group=group)
            in_flight = metric(text, QUEUE_IN_FLIGHT)
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        burst.samples.append(
            Sample(
                t=round(now, 2),
                backlog=backlog,
                in_flight=in_flight,
                hpa_desired=hpa.get("desiredReplicas"),
                hpa_current=hpa.get("currentReplicas"),
                replicas=deploy["spec"].get("replicas"),
                ready_replicas=deploy["status"].get("readyReplicas", 0),
                worker_pods=len(live),
                completed=len(burst.results),
                runs=burst.runs,
            )
        )
        return (
            not pending
            and max(s.replicas or 0 for s in burst.samples) >= burst.needed
            and deploy["spec"].get("replicas") == burst.min_replicas
            and len(pods) == burst.min_replicas
        )

    # A measurement taken about once a second; the deadline is wait_until's.
    wait_until(
        sample,
        timeout=timeout,
        interval=1,
        message=f"{tasks} tasks finished and the workers back to their minimum",
    )
    return burst


def results_directory(scratch: Path) -> Path:
    """bench/results when CELERIAC_RECORD_RESULTS=1 asks to record, else ``scratch`` (a test's
    temporary directory)."""
    value = os.environ.get(RECORD_RESULTS_ENV, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"{RECORD_RESULTS_ENV}={value!r}: set it to 1 to record, or unset it")
    return RESULTS if value == "1" else scratch


def save(burst: Burst, directory: Path, name: str = "autoscaling-burst") -> list[Path]:
    """The timeline and the figures as CSV (always), and a PNG when matplotlib is
    installed (the `bench` extra), in ``directory`` (``results_directory``); returns the files
    written."""
    directory.mkdir(parents=True, exist_ok=True)
    csv_path = directory / f"{name}.csv"
    columns = list(Sample.__dataclass_fields__)
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for item in burst.samples:
            writer.writerow(asdict(item))
    # Not JSON: bench/report.py reads every bench/results/*.json as a benchmark document.
    figures_path = directory / f"{name}-figures.csv"
    with figures_path.open("w", newline="") as handle:
        rows = csv.writer(handle)
        rows.writerow(["figure", "value"])
        rows.writerows(burst.figures().items())
    written = [csv_path, figures_path]
    png = plot(burst, directory / f"{name}.png")
    if png is not None:
        written.append(png)
    return written


def plot(burst: Burst, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib missing (make bench installs it): {path.name} not drawn")
        return None
    samples = burst.samples
    t = [s.t for s in samples]

    def column(name: str) -> Sequence[float]:
        return [float("nan") if getattr(s, name) is None else getattr(s, name) for s in samples]

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6.5))
    top.plot(t, column("backlog"), label="backlog (exporter)")
    top.plot(t, column("in_flight"), label="in flight (busy processes)")
    top.plot(t, column("completed"), label="completed (API)")
    top.set_ylabel("tasks")
    top.legend(loc="center right")
    top.set_title(
        f"Burst: {burst.tasks} x {burst.seconds:g} s tasks, pool {burst.pool}/pod, "
        f"max {burst.max_replicas} replicas"
    )
    # Desired, spec and pods mostly coincide: drawn widest first, so each stays visible.
    bottom.step(
        t, column("hpa_desired"), where="post", linewidth=6, alpha=0.35, label="HPA desired"
    )
    bottom.step(t, column("replicas"), where="post", linewidth=3.5, label="Deployment replicas")
    bottom.step(t, column("worker_pods"), where="post", linestyle="--", label="worker pods")
    bottom.step(t, column("ready_replicas"), where="post", linewidth=1.5, label="ready replicas")
    if burst.finished_at is not None:
        for axis in (top, bottom):
            axis.axvline(burst.finished_at, color="grey", linestyle=":", linewidth=1)
    bottom.set_ylabel("replicas")
    bottom.set_xlabel("seconds since the first submit")
    bottom.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def check(burst: Burst, results: Mapping[str, Obj]) -> None:
    """The behaviour (no timing): scaled up to the needed count, every task once, back to min."""
    assert len(results) == burst.tasks
    states = {task_id: status["state"] for task_id, status in results.items()}
    assert set(states.values()) == {"SUCCESS"}, states
    assert all(status["result"] == burst.seconds for status in results.values())
    assert max(s.replicas or 0 for s in burst.samples) == burst.needed
    assert burst.samples[-1].replicas == burst.min_replicas


def wait_scaling_active(cluster: Kubectl, release: Release, *, timeout: float) -> None:
    """Until KEDA's HPA of the worker group reads the external metric."""
    name = hpa_name(cluster, release)
    wait_until(
        lambda: (
            condition(
                kubectl_json(cluster, "get", "hpa", name, "-n", release.namespace),
                "ScalingActive",
            )
            == "True"
        ),
        timeout=timeout,
        message="KEDA's HPA reading the external metric",
    )


def burst_scenario(
    cluster: ScenarioCluster,
    release: Release,
    layer: Mapping[str, Any],
    scratch: Path,
    *,
    tasks: int,
    seconds: float,
    timeout: float,
    burst_timeout: float = 600,
) -> Burst:
    """The burst, installed over the cluster's values ``layer``: every pod Ready, KEDA's HPA
    reading the backlog, the burst run and saved (``results_directory(scratch)``), checked
    (``check``, and each task run once by the workers' own counters), then uninstalled."""
    values = scenario.values(layer, burst_values())
    try:
        release.install(values, timeout=int(timeout))
        scenario.wait_all_ready(cluster, release, expected=5, timeout=timeout)
        wait_scaling_active(cluster, release, timeout=timeout)
        token = release.api_token(cluster)
        with scenario.api_client(cluster.api_url(release), token) as api:
            burst = run_burst(
                cluster, release, api, tasks=tasks, seconds=seconds, timeout=burst_timeout
            )
        written = save(burst, results_directory(scratch))
        print("written:", *written)
        print("figures:", burst.figures())
        check(burst, burst.results)
        # Exactly once: the workers' own success counters (read each second from every pod,
        # including those later removed at scale-in) add up to the task count.
        assert burst.runs == tasks, burst.runs_by_pod
        assert len(burst.runs_by_pod) >= burst.needed
    except BaseException:
        print(cluster.diagnostics())
        raise
    release.uninstall(timeout=int(timeout))
    return burst


# -- scale to zero, exporter down, Redis restarted (issue 10, items 3 and 4) -------------------

# Scale to zero: minReplicas 0 and a cooldown shortened for the test (20 s instead of 300 s,
# said so in the README); the chart requires cooldown >= terminationGracePeriodSeconds, so the
# grace period is 20 s too (10 s for running tasks: shutdownMarginSeconds 10).
ZERO_COOLDOWN_SECONDS = 20


def zero_values(cooldown: int = ZERO_COOLDOWN_SECONDS) -> dict[str, Any]:
    values = burst_values(max_replicas=2)
    values["workerDefaults"]["autoscaling"]["minReplicas"] = 0
    values["workerDefaults"]["autoscaling"]["keda"]["cooldownPeriodSeconds"] = cooldown
    values["workerDefaults"]["terminationGracePeriodSeconds"] = cooldown
    return values


def hpa_name(cluster: Kubectl, release: Release) -> str:
    scaled = release.one(cluster, "scaledobject", "worker")
    name: str = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["name"]
    return name


def spec_replicas(cluster: Kubectl, release: Release) -> int:
    return int(release.worker_deployment(cluster)["spec"].get("replicas") or 0)


def worker_pods(cluster: Kubectl, release: Release) -> list[Obj]:
    return release.pods(cluster, f"{COMPONENT_LABEL}=worker")


def wait_group_at(cluster: Kubectl, release: Release, replicas: int, *, timeout: float) -> None:
    """Until the group's Deployment asks for ``replicas`` and has exactly that many worker pods,
    none terminating, all Ready."""

    def settled() -> bool:
        pods = worker_pods(cluster, release)
        return (
            spec_replicas(cluster, release) == replicas
            and len(pods) == replicas
            and not any(p["metadata"].get("deletionTimestamp") for p in pods)
            and all(condition(p, "Ready") == "True" for p in pods)
        )

    wait_until(settled, timeout=timeout, interval=1, message=f"worker group at {replicas}")


@dataclass
class Watched:
    """One task followed to its end, with the worker pods seen while it ran."""

    task_id: str
    status: Obj
    seconds_to_result: float
    # Per sample while the task had not finished: (spec replicas, worker pod uids, pods
    # terminating, the exporter's backlog of the group or None when unreachable).
    while_running: list[tuple[int, frozenset[str], int, float | None]]


def watch_task(
    cluster: BurstCluster,
    release: Release,
    api: httpx.Client,
    *,
    seconds: float,
    timeout: float,
) -> Watched:
    """Submit one celeriac.demo.sleep through the API and sample the worker group each second
    until its result is read back; the time from the submit to the result read."""
    start = time.monotonic()
    task_id = submit(api, TASK, seconds=seconds)
    seen: list[tuple[int, frozenset[str], int, float | None]] = []
    final: dict[str, Obj] = {}

    def finished() -> bool:
        status = api.get(f"/v1/tasks/{task_id}").json()
        if status["state"] in FINISHED:
            final["status"] = status
            return True
        pods = worker_pods(cluster, release)
        live = frozenset(p["metadata"]["uid"] for p in pods)
        terminating = sum(1 for p in pods if p["metadata"].get("deletionTimestamp"))
        try:
            backlog: float | None = exporter_backlog(cluster, release)
        except (httpx.HTTPError, OSError, ValueError):
            backlog = None
        seen.append((spec_replicas(cluster, release), live, terminating, backlog))
        return False

    wait_until(finished, timeout=timeout, interval=1, message=f"task {task_id} finished")
    return Watched(task_id, final["status"], round(time.monotonic() - start, 1), seen)


def exporter_backlog(cluster: BurstCluster, release: Release, group: str = "default") -> float:
    """The exporter's backlog gauge of ``group`` (waiting + running); raises when unreachable."""
    exporters = release.pods(cluster, f"{COMPONENT_LABEL}=exporter")
    if len(exporters) != 1:
        raise ValueError(f"{len(exporters)} exporter pods")
    (exporter,) = exporters
    return metric(cluster.http_get(exporter, EXPORTER_PORT, "/metrics"), GROUP_BACKLOG, group=group)
