"""Redis Sentinel: a real failover under load, every component connected through Sentinel.

One master, one replica, three sentinels (the venv's redis-server, ``--sentinel`` mode) on
loopback. Two workers, beat, the API and the exporter run as processes against
``sentinel://...;...``, and a producer in this process publishes a steady stream of tasks. Mid
burst the master is SIGKILLed; once a sentinel promoted the replica, the killed node comes back
as a replica of the new master (what the chart's start-up script does). Then a second failover,
``SENTINEL FAILOVER``, demotes the current master while it is alive: its clients' connections
stay open, so a client that cached the master would now write to a replica and fail with
READONLY for good. The nodes refuse writes without a replica in sync (``min-replicas-to-write``,
as the chart configures them). Checked: every task whose publish was acknowledged runs (none
lost, those acknowledged during the live switch included; duplicates counted; everything
acknowledged before the switch runs before it starts), beat fires between and after the
failovers, the API answers only 202 or 503 and 202 again after each switch (the 503 window
is measured), the exporter reads Redis again, a result is stored and read through Sentinel,
and the demoted node holds no writes made after its demotion (it is a replica: writes went to
the new master).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from celeriac.app import create_app
from celeriac.broker.keys import ALL_DEAD_LETTERS_KEY, DELIVERIES_KEY
from celeriac.settings import Settings
from celeriac.testing import (
    Child,
    RedisServer,
    SentinelGroup,
    celeriac_command,
    free_port,
    ha_node_args,
    wait_until,
)
from tests.integration.support.workers import worker_env

pytestmark = pytest.mark.integration

Spawn = Callable[..., Child]
PASSWORD = "s3ntinel-pass"
TOKEN = "sentinel-test-token"
APP = "tests.integration.apps.sentinel_tasks:app"
SOCKET_TIMEOUT_SECONDS = "2"
# How long the API may answer 503 around one failover: the sentinels' 1 s down-after, the
# election, and the killed node's return as a replica (publishes WAIT for one replica).
MAX_503_WINDOW_SECONDS = 15.0
# The longest beat may stay silent (it fires every second): one outage plus a tick.
MAX_BEAT_GAP_SECONDS = 17.0
DRAIN_DEADLINE_SECONDS = 60


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    with SentinelGroup(
        PASSWORD,
        replicas=1,
        sentinels=3,
        down_after_ms=1000,
        node_args=ha_node_args(),
    ) as started:
        yield started


def common_env(group: SentinelGroup) -> dict[str, str]:
    return {
        "CELERIAC_BROKER_URL": group.url(),
        "CELERIAC_REDIS_SENTINEL_MASTER": group.master_name,
        "CELERIAC_REDIS_PASSWORD": PASSWORD,
        "CELERIAC_REDIS_WAIT_REPLICAS": "1",
        "CELERIAC_REDIS_WAIT_TIMEOUT_SECONDS": "1",
        "CELERIAC_REDIS_SOCKET_TIMEOUT_SECONDS": SOCKET_TIMEOUT_SECONDS,
        "CELERIAC_VISIBILITY_TIMEOUT_SECONDS": "10",
        "CELERIAC_APP": APP,
    }


def lines(path: Path) -> list[tuple[str, float]]:
    """``(task id, when it ran)`` of each run in ``path``, on ``time.monotonic``'s clock (the
    tasks write wall-clock times; the test measures its own moments with the monotonic one)."""
    if not path.exists():
        return []
    offset = time.time() - time.monotonic()
    found = []
    for line in path.read_text().splitlines():
        task_id, at = line.split()
        found.append((task_id, float(at) - offset))
    return found


class Stream:
    """Publishes ``ha.run`` tasks one after another from a thread, each retried until Redis
    acknowledges it (same task id: a retry can only duplicate, never add a task)."""

    def __init__(self, settings: Settings, runs: Path) -> None:
        self.app = create_app("test-sentinel-producer", settings)
        self.runs = runs
        self.acknowledged: list[tuple[str, float]] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Stream:
        self._thread.start()
        return self

    def _run(self) -> None:
        number = 0
        while not self._stop.is_set():
            number += 1
            task_id = f"stream-{number}"
            while not self._stop.is_set():
                try:
                    self.app.send_task(
                        "ha.run",
                        kwargs={"path": str(self.runs), "seconds": 0.005},
                        task_id=task_id,
                        queue="default",
                    )
                except Exception:
                    self.failures += 1
                    self._stop.wait(0.05)
                    continue
                self.acknowledged.append((task_id, time.monotonic()))
                break
            self._stop.wait(0.005)

    def count_since(self, moment: float) -> int:
        return sum(1 for _, at in self.acknowledged if at > moment)

    def acknowledged_ids(self) -> set[str]:
        return {task_id for task_id, _ in self.acknowledged}

    def stop(self) -> set[str]:
        self._stop.set()
        self._thread.join(timeout=30)
        self.app.close()
        return self.acknowledged_ids()


class Poller:
    """POSTs a task to the API every 50 ms from a thread; records each status and time."""

    def __init__(self, port: int, runs: Path) -> None:
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        self.runs = runs
        self.answers: list[tuple[float, int, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def _run(self) -> None:
        body = {"task": "ha.run", "kwargs": {"path": str(self.runs)}}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        while not self._stop.is_set():
            try:
                response = self.http.post("/v1/tasks", json=body, headers=headers)
            except httpx.HTTPError:
                self.answers.append((time.monotonic(), 0, None))
            else:
                task_id = response.json().get("id") if response.status_code == 202 else None
                self.answers.append((time.monotonic(), response.status_code, task_id))
            self._stop.wait(0.05)

    def accepted_since(self, moment: float) -> int:
        return sum(1 for at, status, _ in self.answers if status == 202 and at > moment)

    def accepted(self) -> set[str]:
        return {task_id for _, _, task_id in self.answers if task_id}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.http.close()


def start_components(
    spawn: Spawn, group: SentinelGroup, tmp_path: Path, beat_runs: Path
) -> tuple[list[Child], int, int]:
    env = common_env(group)
    workers = []
    for name in ("worker-a", "worker-b"):
        worker_settings = worker_env(group.url(), tmp_path, name, log_level="WARNING")
        workers.append(spawn(celeriac_command("worker"), env=env | worker_settings, name=name))
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text(
        f"tick: {{task: ha.run, every: 1, kwargs: {{path: '{beat_runs}'}}, expires: 60}}\n"
    )
    beat_env = env | {
        "CELERIAC_BEAT_SCHEDULE_FILE": str(schedule),
        "CELERIAC_BEAT_MAX_LOOP_INTERVAL_SECONDS": "1",
        "CELERIAC_BEAT_LOCK_TIMEOUT_SECONDS": "10",
        "CELERIAC_BEAT_HEARTBEAT_FILE": str(tmp_path / "beat.heartbeat"),
    }
    beat = spawn(celeriac_command("beat"), env=beat_env, name="beat")
    api_port, exporter_port = free_port(), free_port()
    api = spawn(
        celeriac_command("api", "--host", "127.0.0.1", "--port", str(api_port)),
        env=env | {"CELERIAC_API_TOKENS": TOKEN},
        name="api",
    )
    exporter_env = env | {
        "CELERIAC_EXPORTER_HOST": "127.0.0.1",
        "CELERIAC_EXPORTER_PORT": str(exporter_port),
    }
    exporter = spawn(celeriac_command("exporter"), env=exporter_env, name="exporter")
    children = [*workers, beat, api, exporter]

    def ready() -> bool:
        for child in children:
            child.check_alive()
        if not all(Path(tmp_path / f"{name}.ready").exists() for name in ("worker-a", "worker-b")):
            return False
        with httpx.Client(timeout=2) as http:
            if http.get(f"http://127.0.0.1:{api_port}/readyz").status_code != 200:
                return False
        return redis_up(exporter_port) == 1.0

    wait_until(ready, timeout=90, interval=0.2, message="workers, API and exporter ready")
    return children, api_port, exporter_port


def redis_up(port: int) -> float | None:
    with httpx.Client(timeout=5) as http:
        text = http.get(f"http://127.0.0.1:{port}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "celeriac_redis_up":
                return float(sample.value)
    return None


def check_alive(children: list[Child]) -> None:
    for child in children:
        child.check_alive()


def acknowledged_between(stream: Stream, poller: Poller, start: float, end: float) -> set[str]:
    """Tasks whose publish or API submit was acknowledged from ``start`` to ``end``."""
    published = {task_id for task_id, at in stream.acknowledged if start <= at <= end}
    submitted = {task_id for at, _, task_id in poller.answers if task_id and start <= at <= end}
    return published | submitted


def ran_ids(*paths: Path) -> set[str]:
    return {task_id for path in paths for task_id, _ in lines(path)}


def explain_missing(missing: set[str], stream: Stream, group: SentinelGroup, logs: Path) -> str:
    """Where tasks that never ran might be: when they were published, what each node holds,
    and the workers' warnings (their logs are in ``logs``)."""
    published_at = dict(stream.acknowledged)
    times = sorted(published_at[task_id] for task_id in missing if task_id in published_at)
    span = f"published {times[0]:.1f}-{times[-1]:.1f}" if times else "none published"
    nodes = {}
    for node in group.nodes:
        with node.client() as client:
            nodes[node.port] = {
                "role": client.info("replication")["role"],
                "queued": sum(client.llen(key) for key in client.keys("default*")),
                "unacked": client.hlen("unacked"),
                "dead letters": client.zcard(ALL_DEAD_LETTERS_KEY),
                "deliveries": client.hlen(DELIVERIES_KEY),
            }
    warnings = [
        f"{log.name}: {line[:300]}"
        for log in sorted(logs.glob("worker-*.log"))
        for line in log.read_text(errors="replace").splitlines()
        if "WARNING" in line or "ERROR" in line or "CRITICAL" in line
    ]
    return (
        f"{len(missing)} acknowledged tasks never ran, e.g. {sorted(missing)[:5]} ({span}, "
        f"last publish {max(published_at.values(), default=0):.1f}); nodes: {nodes}; "
        f"worker warnings:\n" + "\n".join(warnings[-40:])
    )


def rejoin_as_replica(group: SentinelGroup, node: RedisServer, master: RedisServer) -> None:
    """Start the killed node again as a replica of the new master (the chart's start-up)."""
    args = list(node.extra_args)
    if "--replicaof" in args:
        at = args.index("--replicaof")
        del args[at : at + 3]
    node.extra_args = (*args, "--replicaof", "127.0.0.1", str(master.port))
    node.start()
    group.wait_until_replicating(node)


def windows_of_refusal(answers: list[tuple[float, int, str | None]]) -> list[float]:
    """Length of each run of non-202 answers, from its first to the next 202."""
    windows = []
    started: float | None = None
    for at, status, _ in answers:
        if status != 202 and started is None:
            started = at
        elif status == 202 and started is not None:
            windows.append(at - started)
            started = None
    if started is not None:
        windows.append(float("inf"))
    return windows


@pytest.mark.parametrize("live_switch", [False, True], ids=["sigkill", "sigkill-then-live-switch"])
def test_failover_mid_burst_loses_no_task_and_every_component_follows(
    live_switch: bool,
    # Redis before the children: torn down after them, so they stop against a live Redis.
    group: SentinelGroup,
    spawn: Spawn,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs, api_runs, beat_runs = tmp_path / "runs", tmp_path / "api-runs", tmp_path / "beat-runs"
    children, api_port, exporter_port = start_components(spawn, group, tmp_path, beat_runs)
    settings = Settings.from_env(common_env(group))
    stream = Stream(settings, runs).start()
    poller = Poller(api_port, api_runs).start()
    try:
        wait_until(
            lambda: len(lines(runs)) >= 150 and len(lines(beat_runs)) >= 2,
            timeout=60,
            message="the burst and beat under way",
        )
        check_alive(children)

        # 1. SIGKILL of the master mid-burst.
        old = group.master()
        killed_at = time.monotonic()
        old.kill()
        new = group.wait_for_failover(old)
        promoted_at = time.monotonic()
        rejoin_as_replica(group, old, new)
        rejoined_at = time.monotonic()
        wait_until(
            lambda: stream.count_since(rejoined_at) >= 100 and poller.accepted_since(rejoined_at),
            timeout=60,
            message="publishes and API submits acknowledged after the first failover",
        )
        check_alive(children)
        wait_until(
            lambda: any(at > promoted_at for _, at in lines(beat_runs)),
            timeout=30,
            message="beat firing after the first failover",
        )
        # Everything acknowledged so far runs before the second failover starts: a task lost
        # here was lost to the SIGKILL failover, and the two outages stay apart.
        before_switch = stream.acknowledged_ids() | poller.accepted()
        try:
            wait_until(
                lambda: before_switch <= ran_ids(runs, api_runs),
                timeout=DRAIN_DEADLINE_SECONDS,
                interval=0.5,
                message="",
            )
        except AssertionError:
            missing = before_switch - ran_ids(runs, api_runs)
            raise AssertionError(
                f"after the SIGKILL failover (killed at {killed_at:.1f}, promoted "
                f"{promoted_at:.1f}, replica back {rejoined_at:.1f}): "
                + explain_missing(missing, stream, group, tmp_path)
            ) from None

        # 2. A live switch: the master is demoted while alive, its clients' connections open.
        demoted = old
        switch_started = switched_at = time.monotonic()
        if live_switch:
            demoted = group.master()
            with group.sentinel_client(1) as sentinel:
                sentinel.execute_command("SENTINEL", "FAILOVER", group.master_name)
            group.wait_for_failover(demoted)
            switched_at = time.monotonic()
            group.wait_until_replicating(demoted)
        try:
            wait_until(
                lambda: (
                    stream.count_since(switched_at) >= 100 and poller.accepted_since(switched_at)
                ),
                timeout=60,
                message="publishes and API submits acknowledged after the second failover",
            )
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}: {stream.count_since(switched_at)} published, "
                f"{poller.accepted_since(switched_at)} accepted by the API, last answers "
                f"{[status for _, status, _ in poller.answers[-5:]]}"
            ) from None
        wait_until(
            lambda: any(at > switched_at for _, at in lines(beat_runs)),
            timeout=30,
            message="beat firing after the second failover",
        )
        wait_until(
            lambda: redis_up(exporter_port) == 1.0,
            timeout=30,
            message="the exporter reading Redis after the failovers",
        )
        check_alive(children)
    finally:
        acknowledged = stream.stop()
        poller.stop()

    # Writes go to the master the sentinels name; the other node is a replica that refuses a
    # write of its own (a client still writing to it would get READONLY). A restarted old
    # master comes back as a master until the sentinels reconfigure it: wait for that.
    current = group.master()
    other = next(node for node in group.nodes if node is not current)
    with current.client() as master_client, other.client() as replica_client:
        wait_until(
            lambda: replica_client.info("replication")["role"] == "slave",
            timeout=30,
            message="the sentinels to make the other node a replica",
        )
        with pytest.raises(redis.ReadOnlyError):
            replica_client.set("celeriac:test:write", "1")
        assert master_client.info("replication")["role"] == "master"

    # A result stored and read through Sentinel (celeriac's Sentinel result backend).
    results_app = create_app("test-sentinel-results", settings)
    try:
        assert results_app.send_task("ha.add", args=(2, 3), queue="default").get(timeout=30) == 5
    finally:
        results_app.close()

    accepted_by_api = poller.accepted()
    expected = acknowledged | accepted_by_api
    # Acknowledged while the sentinels switched a live master over (counted for the report;
    # these must run like every other acknowledged task).
    in_switch = (
        acknowledged_between(stream, poller, switch_started, switched_at) if live_switch else set()
    )

    def every_task_ran() -> bool:
        check_alive(children)
        return expected <= ran_ids(runs, api_runs)

    try:
        wait_until(every_task_ran, timeout=DRAIN_DEADLINE_SECONDS, interval=0.5, message="")
    except AssertionError:
        missing = expected - ran_ids(runs, api_runs)
        raise AssertionError(
            f"failover at {killed_at:.1f}, switch {switch_started:.1f}-{switched_at:.1f}: "
            + explain_missing(missing, stream, group, tmp_path)
        ) from None
    all_runs = [task_id for task_id, _ in lines(runs) + lines(api_runs)]
    ran = set(all_runs)
    lost = expected - ran
    duplicates = len(all_runs) - len(ran)

    statuses = {status for _, status, _ in poller.answers}
    assert statuses <= {202, 503}, f"the API answered {statuses}"
    windows = windows_of_refusal(poller.answers)
    assert poller.answers[-1][1] == 202
    assert all(window <= MAX_503_WINDOW_SECONDS for window in windows), windows

    beat_times = sorted(at for _, at in lines(beat_runs))
    gaps = [later - earlier for earlier, later in itertools.pairwise(beat_times)]
    assert max(gaps) <= MAX_BEAT_GAP_SECONDS, gaps

    with capsys.disabled():
        print(
            f"\nsentinel failover: {len(expected)} tasks acknowledged "
            f"({len(acknowledged)} published, {len(accepted_by_api)} via the API), "
            f"{len(lost)} lost ({len(in_switch)} acknowledged during the live switch); "
            f"{duplicates} ran twice; "
            f"publish retries {stream.failures}; "
            f"failover {promoted_at - killed_at:.1f} s, replica back after "
            f"{rejoined_at - killed_at:.1f} s; API 503 windows "
            f"{', '.join(f'{w:.1f} s' for w in windows) or 'none'}; "
            f"longest beat gap {max(gaps):.1f} s over {len(beat_times)} fires"
        )
    assert not lost, f"{len(lost)} acknowledged tasks never ran: {sorted(lost)[:10]}"


# Log lines a worker may write around one failover (README "Redis high availability"): the
# broker lost (Celery's warning, or celeriac's when it never connected) and found again.
MAX_CONSUMER_WARNINGS = 2
# Writes the idle worker's consumer tries in the ~4 s a master refuses them (a spin: hundreds).
MAX_REFUSED_ATTEMPTS = 12
SLOW_TASKS = 4


def test_results_of_tasks_finishing_in_a_failover_are_stored_and_the_worker_says_so_once(
    group: SentinelGroup, spawn: Spawn, tmp_path: Path
) -> None:
    """Tasks that finish while there is no master, then while the new master refuses writes
    (``NOREPLICAS``: its replica is not back yet), have their results stored once it accepts
    writes; the worker waits with its backoff, logs the loss and the return once each, never
    spins into ``RestartFreqExceeded``, and consumes afterwards."""
    env = common_env(group)
    worker_settings = worker_env(
        group.url(), tmp_path, "worker", log_level="INFO", worker_concurrency=str(SLOW_TASKS)
    )
    worker = spawn(celeriac_command("worker"), env=env | worker_settings, name="worker")
    wait_until(
        lambda: worker.check_alive() or (tmp_path / "worker.ready").exists(),
        timeout=60,
        message="the worker ready",
    )
    app = create_app("test-sentinel-results", Settings.from_env(env))
    marks = tmp_path / "slow"
    started, finished = Path(f"{marks}.started"), Path(f"{marks}.finished")
    try:
        results = [
            app.send_task(
                "ha.slow_add",
                args=(number, 1),
                kwargs={"seconds": 1 + 1.5 * number, "path": str(marks)},
                queue="default",
            )
            for number in range(SLOW_TASKS)
        ]
        wait_until(lambda: len(lines(started)) == SLOW_TASKS, message="the tasks running")
        old = group.master()
        killed_at = time.monotonic()
        old.kill()
        new = group.wait_for_failover(old)
        promoted_at = time.monotonic()
        # The old master stays away until a task has finished after the promotion, while the
        # new master refuses writes without a replica. (Celery terminates some running tasks
        # when the connection is lost, worker_cancel_long_running_tasks_on_connection_loss:
        # those run again later.)
        wait_until(
            lambda: any(at > promoted_at for _, at in lines(finished)),
            timeout=30,
            message="a task finished after the promotion",
        )
        with new.client() as client, pytest.raises(redis.ResponseError, match="NOREPLICAS"):
            client.set("celeriac:test:write", "1")
        assert all(at > killed_at for _, at in lines(finished))
        rejoin_as_replica(group, old, new)

        def stored() -> bool:
            return all(result.state == "SUCCESS" for result in results)

        try:
            wait_until(stored, timeout=30, message="the results stored")
        except AssertionError:
            states = [result.state for result in results]
            raise AssertionError(f"states {states}; worker log:\n{worker.output()}") from None
        assert [result.get(timeout=5) for result in results] == [
            number + 1 for number in range(SLOW_TASKS)
        ]
        after = app.send_task(
            "ha.slow_add", args=(40, 2), kwargs={"seconds": 0, "path": str(marks)}
        )
        assert after.get(timeout=30) == 42
    finally:
        app.close()
    worker.check_alive()

    check_quiet_failover_log(worker.output())


def check_quiet_failover_log(output: str) -> None:
    """The worker logged the broker's loss and return once each, and nothing of a spin."""
    # kombu logs a task acknowledged on the lost connection as CRITICAL ("Couldn't ack"): it is
    # delivered again (acks late), not an error of the worker.
    log = "\n".join(line for line in output.splitlines() if "Couldn't ack" not in line)
    for sign in (
        "CRITICAL",
        "RestartFreqExceeded",
        "Timed out waiting for UP",
        "Pool callback raised exception",
        "Cannot connect to",
    ):
        assert sign not in log, f"{sign!r} in the worker's log:\n{log}"
    consumer_warnings = [
        line for line in log.splitlines() if "WARNING" in line and "consumer:" in line
    ]
    assert 1 <= len(consumer_warnings) <= MAX_CONSUMER_WARNINGS, log
    assert log.count("broker accepts writes again") == 1, log


def refused_writes(node: RedisServer) -> int:
    """Writes ``node`` refused with NOREPLICAS since it started (INFO errorstats)."""
    with node.client() as client:
        stats = client.info("errorstats").get("errorstat_NOREPLICAS", {})
    return int(stats.get("count", 0)) if isinstance(stats, dict) else 0


def test_an_idle_worker_waits_out_a_refusing_master_with_a_backoff(
    group: SentinelGroup, spawn: Spawn, tmp_path: Path
) -> None:
    """While the new master refuses writes (its replica is away), an idle worker's consumer
    retries with its bounded backoff: a few refused attempts, no restart spin, one warning
    and one info line; it consumes once the master accepts writes."""
    env = common_env(group)
    worker_settings = worker_env(group.url(), tmp_path, "worker", log_level="INFO")
    worker = spawn(celeriac_command("worker"), env=env | worker_settings, name="worker")
    wait_until(
        lambda: worker.check_alive() or (tmp_path / "worker.ready").exists(),
        timeout=60,
        message="the worker ready",
    )
    old = group.master()
    old.kill()
    new = group.wait_for_failover(old)
    # The backoff's 6th attempt comes ~3 s after the first (waits double from 0.1 s): long
    # enough for a spinning consumer to make hundreds.
    wait_until(lambda: refused_writes(new) >= 6, timeout=30, message="the worker refused")
    refused = refused_writes(new)
    rejoin_as_replica(group, old, new)
    app = create_app("test-sentinel-idle", Settings.from_env(env))
    try:
        result = app.send_task(
            "ha.slow_add", args=(40, 2), kwargs={"seconds": 0, "path": str(tmp_path / "idle")}
        )
        assert result.get(timeout=30) == 42
    finally:
        app.close()
    worker.check_alive()
    assert refused <= MAX_REFUSED_ATTEMPTS, refused
    check_quiet_failover_log(worker.output())
