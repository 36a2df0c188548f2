"""Scale-in and rollouts (issue 10, items 2 and 5), shared by the local control plane's test
(tests/cluster/test_rollouts.py) and any cluster that can reach the release's Redis.

What is measured comes from two exact records, not from sampling:

- ``Watch``: every change the API server reports for the release's pods (or Deployments), in
  order, each stamped when it arrived, through consecutive server-bounded watches streamed by
  ``kubectl get --raw ...?watch=1``, so a pod that lived between two polls, or two beat pods
  at once for a moment, cannot be missed;
- ``TaskEvents``: every task state the workers store, from the result backend's own
  notifications (celeriac's backend, like Celery's, PUBLISHes each state on the task's key):
  ``STARTED`` with the worker's node name (``celery@<pod name>``), then ``SUCCESS``. A task
  requeued at a shutdown deadline and run again shows a second ``STARTED`` (the backend keeps a
  ``SUCCESS`` but not an earlier state), so starts per task count requeues.

The four scenarios at the end (``scale_in_scenario``, ``upgrade_keeps_replicas_scenario``,
``worker_rollout_scenario``, ``beat_upgrade_scenario``), with their assertions, run in order on
one release (``install``): the local control plane's tests/cluster/test_rollouts.py and kind's
tests/e2e/test_rollouts.py call them with their cluster (``RolloutCluster``) and values layer.
The duplicate rule: a task may run twice only when it was requeued at a shutdown deadline;
every task here is shorter than that deadline, so each must start exactly once and succeed once.
"""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import redis

from celeriac.broker import PUBLISHED_AT_PROPERTY
from celeriac.testing import wait_until
from celeriac.worker.deletion_cost import ANNOTATION
from tests.scenarios import autoscaling, scenario
from tests.scenarios.autoscaling import TASK, ScenarioCluster, burst_values
from tests.scenarios.scenario import COMPONENT_LABEL, Kubectl, Obj, Release, submit

# Each watch request ends after this many seconds and the next one resumes from the last
# resourceVersion seen.
WATCH_SECONDS = 60
TERMINAL = ("Succeeded", "Failed")
# The beat test's queue: consumed by no worker group, so what beat published stays in Redis with
# its publish time (the transport's header) for the test to read.
BEAT_QUEUE = "beat-probe"

# The release's layer over the burst's: pool 1 (500m), at most 4 replicas, the scale-down
# shortened (20 s window, 100 % per 15 s); a grace period of 60 s (55 s for running tasks), longer
# than every task the rollout tests start, so a rollout drains them and requeues none; KEDA's
# cooldown must be at least the grace period (the chart checks).
MAX_REPLICAS = 4
GRACE_SECONDS = 60
MARGIN_SECONDS = 5
# Scale-in: one short task on the first pod, two long ones, another short one: four pods, each
# with one task. The shorts end, the backlog drops to 2, and the HPA removes two pods (20 s
# window) while the longs still run for longer than the shutdown deadline (55 s): a busy pod
# removed would show as a task requeued there.
SHORT_SECONDS = 25.0
LONG_SECONDS = 100.0
# Held replicas: 3 tasks of 45 s keep the HPA at 3 through a worker upgrade (and 20 s more:
# the scale-down window), and end before the shutdown deadline of a pod the rollout removes.
HELD = 3
HELD_SECONDS = 45.0
# Worker rollout: 16 tasks of 6 s, the upgrade once some have started.
ROLLOUT_TASKS = 16
ROLLOUT_SECONDS = 6.0


def rollout_values(schedule: Mapping[str, Any]) -> dict[str, Any]:
    values = burst_values(max_replicas=MAX_REPLICAS)
    defaults = values["workerDefaults"]
    defaults["terminationGracePeriodSeconds"] = GRACE_SECONDS
    defaults["shutdownMarginSeconds"] = MARGIN_SECONDS
    defaults["autoscaling"]["keda"]["cooldownPeriodSeconds"] = GRACE_SECONDS
    values["beat"] = {"schedule": dict(schedule), "maxLoopIntervalSeconds": 1}
    return values


def beat_entry(every: float, marker: int) -> dict[str, Any]:
    """A schedule entry sending celeriac.demo.add(marker, 0) to BEAT_QUEUE every ``every`` s."""
    return {"task": "celeriac.demo.add", "every": every, "args": [marker, 0], "queue": BEAT_QUEUE}


# Beat: an entry every 2 s from the install on; the upgrade adds one every 3 s.
TICK_SECONDS, TOCK_SECONDS = 2.0, 3.0
TICK = beat_entry(TICK_SECONDS, marker=1)
TOCK = beat_entry(TOCK_SECONDS, marker=2)


# -- the API server's record ------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    received: float  # time.monotonic() when the test read it
    type: str  # LISTED (present when the watch began), ADDED, MODIFIED, DELETED
    object: Obj

    @property
    def name(self) -> str:
        return str(self.object["metadata"]["name"])


class StreamingKubectl(Kubectl, Protocol):
    def kubectl_command(self, *args: str) -> list[str]:
        """The kubectl command line (binary, kubeconfig, ``args``), for a streaming call."""
        ...


class Watch:
    """Every change to ``resource`` objects matching ``selector`` in ``namespace``, in the API
    server's order, each with the moment it arrived, from ``start()`` to ``stop()``."""

    def __init__(
        self, cluster: StreamingKubectl, namespace: str, resource: str, selector: str
    ) -> None:
        group = "/api/v1" if resource == "pods" else "/apis/apps/v1"
        self.path = f"{group}/namespaces/{namespace}/{resource}"
        self.cluster = cluster
        self.selector = selector
        self.events: list[Event] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{resource}", daemon=True)
        self._process: subprocess.Popen[str] | None = None
        self._version = ""

    def _url(self, **params: str) -> str:
        query = urllib.parse.urlencode({"labelSelector": self.selector, **params})
        return f"{self.path}?{query}"

    def start(self) -> Watch:
        listed = json.loads(self.cluster.kubectl("get", "--raw", self._url()))
        received = time.monotonic()
        self.events.extend(Event(received, "LISTED", item) for item in listed["items"])
        self._version = listed["metadata"]["resourceVersion"]
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                url = self._url(
                    watch="1",
                    resourceVersion=self._version,
                    timeoutSeconds=str(WATCH_SECONDS),
                    allowWatchBookmarks="true",
                )
                # kubectl copies the stream as it comes: each line is one event, read at once.
                with subprocess.Popen(
                    self.cluster.kubectl_command("get", "--raw", url),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ) as process:
                    self._process = process
                    if self._stop.is_set():  # stop() came between two requests
                        process.terminate()
                    assert process.stdout is not None
                    for line in process.stdout:
                        self._record(line, time.monotonic())
                    error = process.stderr.read() if process.stderr else ""
                    if process.wait() != 0 and not self._stop.is_set():
                        raise RuntimeError(f"kubectl watch of {self.path}: {error.strip()}")
        except BaseException as exc:
            self.error = exc

    def _record(self, line: str, received: float) -> None:
        if not line.strip():
            return
        change = json.loads(line)
        if change["type"] == "ERROR":
            raise RuntimeError(f"watch of {self.path}: {change['object']}")
        self._version = change["object"]["metadata"]["resourceVersion"]
        if change["type"] != "BOOKMARK":
            self.events.append(Event(received, change["type"], change["object"]))

    def stop(self) -> list[Event]:
        self._stop.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
        self._thread.join(timeout=30)
        if self.error is not None:
            raise AssertionError(f"the watch of {self.path} failed") from self.error
        return list(self.events)


def live(pod: Obj) -> bool:
    """Not in a terminal phase (Pending, Running, Unknown): its containers may run."""
    return (pod.get("status") or {}).get("phase") not in TERMINAL


def most_live_at_once(events: Iterable[Event]) -> tuple[int, list[str]]:
    """The most objects alive at once in an event stream, and their names at that moment."""
    current: dict[str, Obj] = {}
    peak: tuple[int, list[str]] = (0, [])
    for event in events:
        if event.type == "DELETED":
            current.pop(event.name, None)
        else:
            current[event.name] = event.object
        alive = sorted(name for name, pod in current.items() if live(pod))
        if len(alive) > peak[0]:
            peak = (len(alive), alive)
    return peak


def deletions(events: Iterable[Event]) -> list[Event]:
    """Per pod, the first event that shows it being deleted (deletionTimestamp set)."""
    seen: set[str] = set()
    found = []
    for event in events:
        if event.name in seen:
            continue
        if event.object["metadata"].get("deletionTimestamp") or event.type == "DELETED":
            seen.add(event.name)
            found.append(event)
    return found


def deletion_cost(pod: Obj) -> int | None:
    value = (pod["metadata"].get("annotations") or {}).get(ANNOTATION)
    return None if value is None else int(value)


# -- the result backend's record --------------------------------------------------------------


@dataclass(frozen=True)
class TaskEvent:
    received: float
    task_id: str
    status: str
    worker: str  # the pod's name (Celery's node name without "celery@"); "" when unknown


class TaskEvents:
    """Every task state stored while it runs, from the backend's PUBLISH on the task's key."""

    PATTERN = "celery-task-meta-*"

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.events: list[TaskEvent] = []
        self.error: BaseException | None = None
        self._pubsub = client.pubsub()  # type: ignore[no-untyped-call]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="task-events", daemon=True)

    def start(self) -> TaskEvents:
        self._pubsub.psubscribe(self.PATTERN)
        # The subscription is active once Redis confirmed it (before any task is submitted).
        reply = self._pubsub.get_message(timeout=10)
        assert reply is not None, "no reply to PSUBSCRIBE"
        assert reply["type"] == "psubscribe", reply
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                message = self._pubsub.get_message(timeout=0.5)
                if message is None or message["type"] != "pmessage":
                    continue
                meta = json.loads(message["data"])
                result = meta.get("result") if isinstance(meta.get("result"), dict) else {}
                node = str(meta.get("worker") or result.get("hostname") or "")
                self.events.append(
                    TaskEvent(
                        time.monotonic(),
                        str(meta["task_id"]),
                        str(meta["status"]),
                        node.split("@", 1)[-1],
                    )
                )
        except BaseException as exc:
            self.error = exc

    def stop(self) -> list[TaskEvent]:
        self._stop.set()
        self._thread.join(timeout=10)
        self._pubsub.close()
        if self.error is not None:
            raise AssertionError("reading the task events failed") from self.error
        return list(self.events)

    def starts(self, ids: Iterable[str]) -> dict[str, list[str]]:
        """Per task id: the pods that started it, in order (two or more: it was requeued)."""
        wanted = set(ids)
        found: dict[str, list[str]] = {task_id: [] for task_id in wanted}
        for event in list(self.events):
            if event.status == "STARTED" and event.task_id in wanted:
                found[event.task_id].append(event.worker)
        return found

    def busy(self, at: float) -> dict[str, str]:
        """Pods running a task at ``at`` (monotonic): pod -> the task it had started."""
        running: dict[str, str] = {}
        for event in list(self.events):
            if event.received > at:
                break
            if event.status == "STARTED":
                running[event.task_id] = event.worker
            else:
                running.pop(event.task_id, None)
        return {pod: task_id for task_id, pod in running.items()}

    def succeeded(self, ids: Iterable[str]) -> Counter[str]:
        wanted = set(ids)
        return Counter(
            e.task_id for e in list(self.events) if e.status == "SUCCESS" and e.task_id in wanted
        )


def check_each_ran_once(events: TaskEvents, ids: Sequence[str]) -> dict[str, list[str]]:
    """Every task started exactly once (none requeued at a shutdown deadline) and succeeded
    once; returns who started each."""
    starts = events.starts(ids)
    requeued = {task_id: pods for task_id, pods in starts.items() if len(pods) != 1}
    assert not requeued, f"tasks started other than once (requeued or never run): {requeued}"
    succeeded = events.succeeded(ids)
    assert succeeded == Counter(ids), f"SUCCESS events per task: {dict(succeeded)}"
    return starts


# -- scale-in: idle pods first ----------------------------------------------------------------


@dataclass(frozen=True)
class Removal:
    """One worker pod chosen for deletion, and the group at that moment."""

    at: float  # monotonic
    pod: str
    cost: int | None  # its pod-deletion-cost when it was chosen
    task: str | None  # the task it was running; None: idle
    busy: frozenset[str]  # the pods running a task
    idle_left: tuple[str, ...]  # the other pods that were idle and not being deleted


@dataclass
class ScaleIn:
    """What the API server and the workers recorded while a mixed group scaled in."""

    short_ids: list[str]
    long_ids: list[str]
    deleted: list[Removal] = field(default_factory=list)
    starts: dict[str, list[str]] = field(default_factory=dict)
    submitted_at: float = 0.0
    longs_finished_at: float | None = None
    # The most worker pods alive at once.
    peak_pods: int = 0
    # Every worker pod seen, oldest first: (name, creationTimestamp).
    pods: list[tuple[str, str]] = field(default_factory=list)

    def report(self) -> list[str]:
        """One line per pod, oldest first: the task it ran and whether (when) it was removed
        during the scale-in, times from the first submit."""
        ran = {pods[0]: task for task, pods in self.starts.items() if pods}
        removed = {r.pod: (r.at, r.cost) for r in self.deleted}
        lines = []
        for name, created in self.pods:
            task = ran.get(name)
            role = "long" if task in self.long_ids else "short" if task else "no task"
            line = f"{name} created {created}: {role}"
            if name in removed:
                at, cost = removed[name]
                line += f"; removed at {at - self.submitted_at:.1f} s (cost {cost})"
            lines.append(line)
        if self.longs_finished_at is not None:
            lines.append(f"longs done at {self.longs_finished_at - self.submitted_at:.1f} s")
        return lines

    def busy_chosen_over_idle(self) -> list[str]:
        return [
            f"{r.pod} (running {r.task}) while idle {list(r.idle_left)}"
            for r in self.deleted
            if r.task is not None and r.idle_left
        ]

    def busy_deleted(self) -> list[str]:
        return [r.pod for r in self.deleted if r.task is not None]


def run_scale_in(
    cluster: StreamingKubectl,
    release: Release,
    api: httpx.Client,
    events: TaskEvents,
    *,
    short_seconds: float,
    long_seconds: float,
    shorts: int = 2,
    longs: int = 2,
    timeout: float,
) -> ScaleIn:
    """From one worker pod, submit one short task, the long ones, then the other shorts: the
    group scales out to shorts + longs pods (pool 1) and each pod takes one task. When the
    shorts end, the backlog drops to the longs and the HPA scales in while they still run. The
    pod watch, started before the submits, records every deletion; the task events say whether
    that pod was running a task at that moment. Returns when the long tasks have succeeded."""
    watch = Watch(
        cluster, release.namespace, "pods", f"{release.selector},{COMPONENT_LABEL}=worker"
    ).start()
    try:
        submitted_at = time.monotonic()
        first = [submit(api, TASK, seconds=short_seconds)]
        long_ids = [submit(api, TASK, seconds=long_seconds) for _ in range(longs)]
        short_ids = first + [submit(api, TASK, seconds=short_seconds) for _ in range(shorts - 1)]
        wait_until(
            lambda: len(events.succeeded(long_ids)) == longs,
            timeout=timeout,
            interval=1,
            message="the long tasks to succeed",
        )
        longs_finished_at = time.monotonic()
    finally:
        recorded = watch.stop()
    scale_in = ScaleIn(
        short_ids, long_ids, submitted_at=submitted_at, longs_finished_at=longs_finished_at
    )
    removed = deletions(recorded)
    for event in removed:
        at = event.received
        if at > longs_finished_at:
            continue  # a later scale-in, every pod idle
        busy = events.busy(at)
        going = {e.name for e in removed if e.received <= at}
        idle = sorted(
            name
            for name, pod in _alive_at(recorded, at).items()
            if name not in busy
            and name not in going
            and not pod["metadata"].get("deletionTimestamp")
        )
        scale_in.deleted.append(
            Removal(
                at,
                event.name,
                deletion_cost(event.object),
                busy.get(event.name),
                frozenset(busy),
                tuple(idle),
            )
        )
    scale_in.starts = events.starts(short_ids + long_ids)
    scale_in.peak_pods = most_live_at_once(recorded)[0]
    created = {e.name: str(e.object["metadata"]["creationTimestamp"]) for e in recorded}
    scale_in.pods = sorted(created.items(), key=lambda item: (item[1], item[0]))
    return scale_in


def _alive_at(events: Sequence[Event], at: float) -> dict[str, Obj]:
    current: dict[str, Obj] = {}
    for event in events:
        if event.received > at:
            break
        if event.type == "DELETED":
            current.pop(event.name, None)
        else:
            current[event.name] = event.object
    return current


# -- beat: one scheduler at a time, each entry once --------------------------------------------


def beat_messages(client: redis.Redis) -> list[Obj]:
    """What beat published to BEAT_QUEUE (every priority list), oldest first."""
    raw: list[Any] = []
    for key in client.scan_iter(match=f"{BEAT_QUEUE}*"):
        raw.extend(client.lrange(key, 0, -1))
    messages = [json.loads(item) for item in raw]
    return sorted(messages, key=published_at)


def published_at(message: Obj) -> float:
    return float(message["properties"][PUBLISHED_AT_PROPERTY])


def firings(messages: Iterable[Obj], marker: int) -> list[float]:
    """Publish times of the entry whose first argument is ``marker`` (beat_entry)."""
    return [published_at(m) for m in messages if task_args(m)[:1] == [marker]]


def task_args(message: Obj) -> list[Any]:
    """The positional arguments of a Celery (protocol 2) message as kombu stores it."""
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args: list[Any] = list(json.loads(body)[0])
    return args


def gaps(times: Sequence[float]) -> list[float]:
    return [round(later - earlier, 2) for earlier, later in itertools.pairwise(times)]


def fired_twice(gaps: Sequence[float], interval: float) -> list[float]:
    """The gaps that show an entry fired twice for one due time: under half its interval. A
    firing published late on a busy node (a gap of 1.5 intervals, then one of 0.5) is not."""
    return [gap for gap in gaps if gap < interval / 2]


def replacement_seconds(events: Sequence[Event]) -> float | None:
    """From the first pod's deletion to the next pod's Ready (as the watch received them)."""
    removed = deletions(events)
    if not removed:
        return None
    start = removed[0].received
    for event in events:
        if event.received < start or event.name == removed[0].name:
            continue
        conditions = (event.object.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            return round(event.received - start, 1)
    return None


# -- the scenarios, in order on one release ---------------------------------------------------


class RolloutCluster(ScenarioCluster, StreamingKubectl, Protocol):
    def redis_client(self, release: Release) -> redis.Redis:
        """The release's Redis, reachable from the test, with its password."""
        ...


def release_values(
    layer: Mapping[str, Any], schedule: Mapping[str, Any], mark: str | None = None
) -> dict[str, Any]:
    """The release's values over the cluster's ``layer``; ``mark``: a worker environment
    variable, to change the workers' pod template (a worker setting changed by an upgrade)."""
    values = scenario.values(layer, rollout_values(schedule))
    if mark is not None:
        values["workerDefaults"]["extraEnv"] = [{"name": "ROLLOUT_MARK", "value": mark}]
    return values


def install(
    cluster: RolloutCluster, release: Release, layer: Mapping[str, Any], *, timeout: float
) -> None:
    """The release, beat firing TICK: every pod Ready and the worker group at 1."""
    try:
        release.install(release_values(layer, {"tick": TICK}), timeout=int(timeout))
        scenario.wait_all_ready(cluster, release, expected=5, timeout=timeout)
        autoscaling.wait_group_at(cluster, release, 1, timeout=timeout)
    except BaseException:
        print(cluster.diagnostics())
        raise


def wait_finished(
    cluster: RolloutCluster, release: Release, ids: list[str], *, timeout: float
) -> dict[str, Any]:
    """The tasks' final states, read through the API's current pod: an upgrade may have
    replaced the one the tasks were submitted to (when the chart's API settings changed)."""
    with scenario.api_client(cluster.api_url(release), release.api_token(cluster)) as api:
        return scenario.wait_finished(api, ids, timeout=timeout)


def scale_in_scenario(cluster: RolloutCluster, release: Release, *, timeout: float) -> None:
    """Scale-in removes idle workers before busy ones (``run_scale_in``)."""
    client = cluster.redis_client(release)
    events = TaskEvents(client).start()
    try:
        with scenario.api_client(cluster.api_url(release), release.api_token(cluster)) as api:
            result = run_scale_in(
                cluster,
                release,
                api,
                events,
                short_seconds=SHORT_SECONDS,
                long_seconds=LONG_SECONDS,
                timeout=timeout + LONG_SECONDS,
            )
            results = scenario.wait_finished(api, result.short_ids + result.long_ids, timeout=60)
        events.stop()
        print("worker pods, oldest first:", *result.report(), sep="\n  ")
        assert {r["state"] for r in results.values()} == {"SUCCESS"}, results
        # Four pods, and the HPA scaled in while the long tasks still ran, with busy and idle
        # pods in the group (normally each pod ran one task: two busy, two idle).
        assert result.peak_pods == 4, result.peak_pods
        assert result.deleted, "no scale-in while the long tasks ran"
        assert result.deleted[0].busy, result.deleted
        # Idle pods only were chosen, each with a pod-deletion-cost of 0 at that moment.
        assert not result.busy_chosen_over_idle(), result.busy_chosen_over_idle()
        assert not result.busy_deleted(), result.deleted
        assert {r.cost for r in result.deleted} == {0}, result.deleted
        # Nothing requeued at a shutdown deadline: every task started once, succeeded once.
        check_each_ran_once(events, result.short_ids + result.long_ids)
    except BaseException:
        print(cluster.diagnostics())
        raise
    finally:
        client.close()


def upgrade_keeps_replicas_scenario(
    cluster: RolloutCluster, release: Release, layer: Mapping[str, Any], *, timeout: float
) -> None:
    """With the HPA at HELD replicas, `helm upgrade` of a worker setting rolls the pods and
    keeps the count the HPA chose (the chart renders no replicas field with autoscaling on)."""
    client = cluster.redis_client(release)
    events = TaskEvents(client).start()
    try:
        with scenario.api_client(cluster.api_url(release), release.api_token(cluster)) as api:
            ids = [submit(api, TASK, seconds=HELD_SECONDS) for _ in range(HELD)]
            wait_until(
                lambda: autoscaling.spec_replicas(cluster, release) == HELD,
                timeout=timeout,
                interval=1,
                message=f"the HPA at {HELD} replicas",
            )
            deployment = release.worker_deployment(cluster)
            before = deployment["spec"]["template"]
            watch = Watch(
                cluster,
                release.namespace,
                "deployments",
                f"{release.selector},{COMPONENT_LABEL}=worker",
            ).start()
            # A worker setting changes (an environment variable): the pods roll, the count
            # stays the HPA's.
            started = time.monotonic()
            release.upgrade(release_values(layer, {"tick": TICK}, mark="1"), timeout=int(timeout))
            upgraded = time.monotonic()
            recorded = watch.stop()
            after = release.worker_deployment(cluster)
            assert after["spec"]["template"] != before, "the upgrade did not change the pods"
            replicas = [
                (round(e.received - started, 1), e.object["spec"].get("replicas")) for e in recorded
            ]
            print(f"upgrade took {upgraded - started:.1f} s; Deployment replicas seen:", replicas)
            assert after["spec"]["replicas"] == HELD, after["spec"]
            assert all(count == HELD for _, count in replicas), replicas
        results = wait_finished(cluster, release, ids, timeout=timeout)
        events.stop()
        assert {r["state"] for r in results.values()} == {"SUCCESS"}, results
        check_each_ran_once(events, ids)
    except BaseException:
        print(cluster.diagnostics())
        raise
    finally:
        client.close()


def worker_rollout_scenario(
    cluster: RolloutCluster, release: Release, layer: Mapping[str, Any], *, timeout: float
) -> None:
    """A worker rollout while tasks run: each task starts once and succeeds once, some on pods
    of the old template and some on the new one's."""
    client = cluster.redis_client(release)
    events = TaskEvents(client).start()
    pods = Watch(
        cluster, release.namespace, "pods", f"{release.selector},{COMPONENT_LABEL}=worker"
    ).start()
    try:
        with scenario.api_client(cluster.api_url(release), release.api_token(cluster)) as api:
            ids = [submit(api, TASK, seconds=ROLLOUT_SECONDS) for _ in range(ROLLOUT_TASKS)]
            wait_until(
                lambda: sum(1 for v in events.starts(ids).values() if v) >= 3,
                timeout=timeout,
                interval=0.5,
                message="tasks running",
            )
            release.upgrade(release_values(layer, {"tick": TICK}, mark="2"), timeout=int(timeout))
        results = wait_finished(cluster, release, ids, timeout=timeout)
        recorded = pods.stop()
        events.stop()
        assert {r["state"] for r in results.values()} == {"SUCCESS"}, results
        starts = check_each_ran_once(events, ids)
        # The rollout happened while tasks ran: some ran on pods of the old template, some on
        # the new one's.
        template = {e.name: e.object["metadata"]["labels"]["pod-template-hash"] for e in recorded}
        hashes = {template[started_by[0]] for started_by in starts.values()}
        print("templates that ran tasks:", hashes, "started by:", starts)
        assert len(hashes) == 2, (hashes, starts)
        drained = [
            (e.name, task)
            for e in deletions(recorded)
            if (task := events.busy(e.received).get(e.name))
        ]
        print("pods removed while running a task (drained):", drained)
    except BaseException:
        print(cluster.diagnostics())
        raise
    finally:
        client.close()


def beat_upgrade_scenario(
    cluster: RolloutCluster, release: Release, layer: Mapping[str, Any], *, timeout: float
) -> None:
    """`helm upgrade` of beat's schedule recreates beat (never two at once) and no entry fires
    twice for one due time."""
    client = cluster.redis_client(release)
    try:
        beat = release.one(cluster, "deployment", "beat")
        assert beat["spec"]["strategy"]["type"] == "Recreate", beat["spec"]["strategy"]
        # Beat has fired the first entry a few times already.
        wait_until(
            lambda: len(firings(beat_messages(client), 1)) >= 3,
            timeout=timeout,
            interval=0.5,
            message="beat firing",
        )
        watch = Watch(
            cluster, release.namespace, "pods", f"{release.selector},{COMPONENT_LABEL}=beat"
        ).start()
        upgraded_at = time.time()
        # The schedule changes (an entry added), the workers' settings do not (the last mark).
        release.upgrade(
            release_values(layer, {"tick": TICK, "tock": TOCK}, mark="2"), timeout=int(timeout)
        )

        # The new beat runs the new schedule: both entries fire after the upgrade.
        def fired_after() -> bool:
            messages = beat_messages(client)
            return all(
                len([t for t in firings(messages, marker) if t > upgraded_at]) >= 3
                for marker in (1, 2)
            )

        wait_until(fired_after, timeout=timeout, interval=0.5, message="both entries firing")
        recorded = watch.stop()
        messages = beat_messages(client)
        names = sorted({e.name for e in recorded})
        peak = most_live_at_once(recorded)
        tick = gaps(firings(messages, 1))
        tock = gaps(firings(messages, 2))
        print("beat pods:", names, "most at once:", peak)
        print("new beat pod Ready", replacement_seconds(recorded), "s after the old one's deletion")
        print("tick: longest gap", max(tick), "shortest", min(tick), "over", len(tick))
        print("tock gaps:", tock)
        # Recreate: the old pod replaced by a new one, never both alive at once.
        assert len(names) == 2, names
        assert peak[0] == 1, peak
        # No entry fired twice for one due time (the new beat kept each entry's last run in
        # Redis).
        assert not fired_twice(tick, TICK_SECONDS), tick
        assert not fired_twice(tock, TOCK_SECONDS), tock
    except BaseException:
        print(cluster.diagnostics())
        raise
    finally:
        client.close()
