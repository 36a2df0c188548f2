"""`make soak` (issue 17, item 5; not in CI): the chart with Redis Sentinel on the local cluster's
real node for 30 minutes of steady submits and bursts through the API, while a seeded random
schedule deletes worker, API, exporter and beat pods and the Redis master's pod, restarts
containerd, and sends a task that the kernel OOM-kills in its worker.

What it reports (printed; with ``--record`` also bench/results/soak.csv, soak-faults.csv and
soak.png, the timeline):

- submits acknowledged (202) and **lost**: acknowledged and never SUCCESS (must be 0);
- **ran more than once**: ids with two distinct SUCCESS records (the result backend's PUBLISH of
  each stored state, read from every Redis pod: replicas relay their master's publishes);
- **API availability**: the share of submits answered 202, and the longest stretch without one;
- beat's 2 s entry **fired twice** (two firings less than 1 s apart: must be 0);
- the OOM tasks dead-lettered after their lost deliveries (the worker survives each kill).

The exit status is 1 when an acknowledged task is lost or beat fired an entry twice.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.chart.render import deep_merge
from tests.cluster.infra.controlplane import ControlPlane
from tests.cluster.infra.node import Node
from tests.cluster.infra.redis_pods import REDIS_PODS, REDIS_PORT, RedisPods
from tests.image import build as image_build
from tests.scenarios import rollouts, scenario
from tests.scenarios.scenario import COMPONENT_LABEL, NAMESPACE, Obj, Release
from tests.support import REPO_ROOT

RELEASE = "soak"
TICK_SECONDS = 2.0
TICK = rollouts.beat_entry(TICK_SECONDS, marker=1)
VALUES: dict[str, Any] = {
    "redis": {"sentinel": {"enabled": True}},
    "api": {"replicas": 2},
    "workerDefaults": {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}},
    "beat": {"schedule": {"soak-tick": TICK}, "maxLoopIntervalSeconds": 1},
}
# Redis pods, 2 API, beat, exporter, one worker at rest.
PODS_AT_REST = REDIS_PODS + 5
FAULTS = ("worker", "api", "exporter", "beat", "redis-master", "containerd", "oom")
BURST_TASKS = 30
BURST_SECONDS = 1.0
OOM_MEGABYTES = 768  # over the worker's 384Mi limit (values-dev)
DRAIN_SECONDS = 600.0
BUCKET_SECONDS = 10


@dataclass
class Fault:
    at: float  # seconds since the soak began
    kind: str
    detail: str


@dataclass
class Successes:
    """Every SUCCESS the result backend published, from every Redis pod, deduplicated by the
    record's ``date_done`` (one per run): id -> the set of its runs, and when each was seen."""

    runs: dict[str, set[str]] = field(default_factory=dict)
    seen: list[float] = field(default_factory=list)  # monotonic, one per distinct run
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, meta: Obj) -> None:
        if meta.get("status") != "SUCCESS":
            return
        with self.lock:
            runs = self.runs.setdefault(str(meta["task_id"]), set())
            done = str(meta.get("date_done"))
            if done not in runs:
                runs.add(done)
                self.seen.append(time.monotonic())

    def more_than_once(self) -> dict[str, int]:
        with self.lock:
            return {task_id: len(runs) for task_id, runs in self.runs.items() if len(runs) > 1}


class Soak:
    def __init__(self, plane: ControlPlane, node: Node, release: Release, seed: int) -> None:
        self.plane = plane
        self.node = node
        self.release = release
        self.random = random.Random(seed)
        self.redis = RedisPods(plane, release)
        service = release.one(plane, "service", "api")
        port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http")
        # The Service's ClusterIP (routed to the node, translated by kube-proxy): a deleted API
        # pod must not take the client's address with it.
        self.api_url = f"http://{service['spec']['clusterIP']}:{port}"
        self.token = release.api_token(plane)
        self.successes = Successes()
        self.faults: list[Fault] = []
        self.bursts: list[str] = []
        self.oom: list[str] = []
        self.started = 0.0
        self._stop = threading.Event()

    # -- the load ---------------------------------------------------------------------------

    def _bursts(self, every: float) -> None:
        with scenario.api_client(self.api_url, self.token) as api:
            while not self._stop.wait(every):
                for _ in range(BURST_TASKS):
                    body = {"task": "celeriac.demo.sleep", "kwargs": {"seconds": BURST_SECONDS}}
                    try:
                        response = api.post("/v1/tasks", json=body)
                    except httpx.HTTPError:
                        continue
                    if response.status_code == 202:
                        self.bursts.append(response.json()["id"])

    def _listen(self) -> None:
        """SUBSCRIBE to the task results on every Redis pod, following pods that come back."""
        clients: dict[str, Any] = {}
        while not self._stop.is_set():
            for pod in self.redis.pods().values():
                name, address = pod["metadata"]["name"], pod["status"].get("podIP")
                if address and (name not in clients or clients[name][0] != address):
                    pubsub = redis.Redis(
                        address,
                        REDIS_PORT,
                        password=self.redis.password,
                        socket_timeout=5,
                        socket_connect_timeout=2,
                    ).pubsub()
                    try:
                        pubsub.psubscribe("celery-task-meta-*")
                    except redis.RedisError:
                        continue
                    clients[name] = (address, pubsub)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and not self._stop.is_set():
                for name, (_, pubsub) in list(clients.items()):
                    try:
                        message = pubsub.get_message(timeout=0.05)
                    except (redis.RedisError, OSError):
                        del clients[name]
                        continue
                    if message is not None and message["type"] == "pmessage":
                        self.successes.add(json.loads(message["data"]))

    # -- the faults -------------------------------------------------------------------------

    def delete_one(self, component: str) -> str:
        pods = [
            str(pod["metadata"]["name"])
            for pod in self.release.pods(self.plane, f"{COMPONENT_LABEL}={component}")
            if not pod["metadata"].get("deletionTimestamp")
        ]
        name = self.random.choice(sorted(pods))
        self.plane.kubectl("delete", "pod", "-n", NAMESPACE, name, "--wait=false")
        return name

    def inject(self, kind: str, api: httpx.Client) -> str:
        if kind in ("worker", "api", "exporter", "beat"):
            return self.delete_one(kind)
        if kind == "redis-master":
            name = str(self.redis.master()["metadata"]["name"])
            self.plane.kubectl("delete", "pod", "-n", NAMESPACE, name, "--wait=false")
            return name
        if kind == "containerd":
            self.node.restart_containerd()
            return "restarted"
        body = {"task": "celeriac.demo.memory", "kwargs": {"megabytes": OOM_MEGABYTES}}
        response = api.post("/v1/tasks", json=body)
        if response.status_code == 202:
            task_id = str(response.json()["id"])
            self.oom.append(task_id)
            return task_id
        return f"not accepted: {response.status_code}"

    # -- the run ----------------------------------------------------------------------------

    def run(self, minutes: float, fault_every: tuple[float, float], burst_every: float) -> Report:
        duration = minutes * 60
        listener = threading.Thread(target=self._listen, name="results", daemon=True)
        listener.start()
        with scenario.api_client(self.api_url, self.token) as api:
            submitter = scenario.Submitter(api).start()
            self.started = submitter.started
            burster = threading.Thread(target=self._bursts, args=(burst_every,), daemon=True)
            burster.start()
            next_fault = self.random.uniform(*fault_every)
            deck: list[str] = []
            while (now := time.monotonic() - self.started) < duration:
                if now >= next_fault:
                    if not deck:  # every kind once per round, in a seeded random order
                        deck = self.random.sample(FAULTS, len(FAULTS))
                    kind = deck.pop()
                    try:
                        detail = self.inject(kind, api)
                    except Exception as exc:  # a fault that could not be made is reported
                        detail = f"failed: {exc!r}"
                    self.faults.append(Fault(round(now, 1), kind, detail))
                    print(f"[soak] {now:7.1f} s {kind}: {detail}", flush=True)
                    next_fault = now + self.random.uniform(*fault_every)
                time.sleep(0.5)  # the schedule's tick; nothing waits on it
            self._stop.set()
            submitter.stop()
            burster.join(timeout=60)
            ended = time.monotonic() - self.started
            accepted = submitter.accepted() + self.bursts
            missing = self.drain(api, accepted)
            dead = {entry["id"] for entry in api.get("/v1/dead-letters").json()["dead_letters"]}
        self._stop.set()
        listener.join(timeout=10)
        return Report(
            seconds=ended,
            answers=list(submitter.answers),
            accepted=len(accepted),
            lost=sorted(missing),
            twice=self.successes.more_than_once(),
            successes=[t - self.started for t in self.successes.seen],
            faults=self.faults,
            oom=len(self.oom),
            oom_dead_lettered=len(set(self.oom) & dead),
            beat_gaps=self.beat_gaps(),
        )

    def drain(self, api: httpx.Client, accepted: list[str]) -> set[str]:
        """The accepted ids still without SUCCESS after DRAIN_SECONDS (a result not seen
        published is asked of the API before it counts as lost)."""
        deadline = time.monotonic() + DRAIN_SECONDS
        pending = set(accepted)
        while pending and time.monotonic() < deadline:
            with self.successes.lock:
                pending -= self.successes.runs.keys()
            for task_id in sorted(pending)[:200]:
                try:
                    state = api.get(f"/v1/tasks/{task_id}").json().get("state")
                except (httpx.HTTPError, ValueError):
                    continue
                if state == "SUCCESS":
                    pending.discard(task_id)
            if pending:
                time.sleep(2)
        return pending

    def beat_gaps(self) -> list[float]:
        master = self.redis.master()
        with redis.Redis(
            master["status"]["podIP"], REDIS_PORT, password=self.redis.password, socket_timeout=10
        ) as client:
            messages = rollouts.beat_messages(client)
        return rollouts.gaps(rollouts.firings(messages, marker=1))


@dataclass
class Report:
    seconds: float
    answers: list[tuple[float, int | str, str | None]]
    accepted: int
    lost: list[str]
    twice: dict[str, int]
    successes: list[float]
    faults: list[Fault]
    oom: int
    oom_dead_lettered: int
    beat_gaps: list[float]

    def fired_twice(self) -> int:
        return len(rollouts.fired_twice(self.beat_gaps, TICK_SECONDS))

    def longest_unavailable(self) -> float:
        """The longest stretch between two submits answered 202 (seconds)."""
        times = [sent for sent, code, _ in self.answers if code == 202]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def ok(self) -> bool:
        # At least once: a run may repeat (an ack lost with its connection), so runs twice
        # are reported, not failed.
        return not self.lost and not self.fired_twice()

    def summary(self) -> str:
        codes = Counter(str(code) for _, code, _ in self.answers)
        available = codes["202"] / max(len(self.answers), 1)
        kinds = Counter(f.kind for f in self.faults)
        return "\n".join(
            [
                f"soak: {self.seconds / 60:.1f} min, {len(self.faults)} faults "
                + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())),
                f"submits: {len(self.answers)} answered {dict(codes)}; API availability "
                f"{available:.2%}, longest without a 202 {self.longest_unavailable():.1f} s",
                f"acknowledged (steady + bursts): {self.accepted}; lost: {len(self.lost)}"
                + (f" {self.lost[:10]}" if self.lost else ""),
                f"ran more than once: {len(self.twice)}" + (f" {self.twice}" if self.twice else ""),
                f"beat: {len(self.beat_gaps) + 1} firings of the {TICK_SECONDS:g} s entry, fired "
                f"twice {self.fired_twice()}, longest gap {max(self.beat_gaps, default=0):.1f} s",
                f"OOM tasks: {self.oom}, dead-lettered {self.oom_dead_lettered}",
            ]
        )

    def save(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        timeline = directory / "soak.csv"
        buckets = int(self.seconds // BUCKET_SECONDS) + 1
        rows = [Counter[str]() for _ in range(buckets)]
        for sent, code, _ in self.answers:
            rows[min(int(sent // BUCKET_SECONDS), buckets - 1)][
                "accepted" if code == 202 else "refused"
            ] += 1
        for moment in self.successes:
            if 0 <= moment < self.seconds:
                rows[int(moment // BUCKET_SECONDS)]["succeeded"] += 1
        with timeline.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["t_s", "accepted", "refused", "succeeded"])
            for index, row in enumerate(rows):
                t = index * BUCKET_SECONDS
                writer.writerow([t, row["accepted"], row["refused"], row["succeeded"]])
        faults = directory / "soak-faults.csv"
        with faults.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["t_s", "fault", "detail"])
            writer.writerows((f.at, f.kind, f.detail) for f in self.faults)
        written = [timeline, faults]
        if (image := self.plot(rows, directory / "soak.png")) is not None:
            written.append(image)
        (directory / "soak-summary.txt").write_text(self.summary() + "\n")
        return [*written, directory / "soak-summary.txt"]

    def plot(self, rows: list[Counter[str]], path: Path) -> Path | None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print(f"matplotlib missing (make bench installs it): {path.name} not drawn")
            return None
        minutes = [index * BUCKET_SECONDS / 60 for index in range(len(rows))]
        per_second = [1 / BUCKET_SECONDS] * len(rows)
        figure, axes = plt.subplots(figsize=(11, 4.5))
        for key, colour in (
            ("accepted", "tab:blue"),
            ("succeeded", "tab:green"),
            ("refused", "tab:red"),
        ):
            values = [row[key] * scale for row, scale in zip(rows, per_second, strict=True)]
            axes.plot(minutes, values, label=f"{key} per second", color=colour, linewidth=1)
        colours = dict(zip(FAULTS, plt.get_cmap("tab10").colors, strict=False))
        for fault in self.faults:
            axes.axvline(fault.at / 60, color=colours[fault.kind], linestyle=":", linewidth=1)
        for kind, colour in colours.items():
            axes.plot([], [], color=colour, linestyle=":", label=f"fault: {kind}")
        axes.set_xlabel("minutes")
        axes.set_ylabel("tasks per second")
        axes.set_title(
            f"Soak: lost {len(self.lost)}, ran twice {len(self.twice)}, "
            f"beat fired twice {self.fired_twice()}"
        )
        axes.legend(loc="upper left", fontsize=7, ncol=2)
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fault-every", type=float, nargs=2, default=(60.0, 120.0))
    parser.add_argument("--burst-every", type=float, default=240.0)
    parser.add_argument("--state-dir", type=Path, help="default: a new temporary directory")
    parser.add_argument(
        "--record", action="store_true", help="write the results to bench/results (README)"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("make soak needs root (the node's namespaces and cgroups)", file=sys.stderr)
        return 2
    if not image_build.image_exists(image_build.image_tag()):
        print("the celeriac image is missing: run `make image` first", file=sys.stderr)
        return 2
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="celeriac-soak-"))
    with (
        ControlPlane(state / "plane") as plane,
        Node(plane, state / "node") as node,
    ):
        release = Release(plane.kubeconfig, RELEASE, NAMESPACE)
        claims = [f"{RELEASE}-{index}" for index in range(REDIS_PODS)]
        values = scenario.values(deep_merge(node.chart_values(*claims), VALUES))
        release.install(values, timeout=600)
        scenario.wait_all_ready(plane, release, expected=PODS_AT_REST, timeout=300)
        print(f"[soak] installed; {args.minutes:g} min, seed {args.seed}", flush=True)
        soak = Soak(plane, node, release, args.seed)
        report = soak.run(args.minutes, tuple(args.fault_every), args.burst_every)
        directory = REPO_ROOT / "bench" / "results" if args.record else state / "results"
        print(report.summary())
        print("written:", *report.save(directory))
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
