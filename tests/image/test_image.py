"""The images users deploy, built by `make image` and run as the chart runs them.

Every component starts in its image against a real redis-server on the host's loopback; the
container runs as UID 10001 with a read-only root filesystem and no capabilities; tini is PID 1
and forwards SIGTERM, so a worker drains within its deadline and its task is requeued; the
venv passes ``pip check``; the SBOM lists the locked versions.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from celeriac import demo
from celeriac.app import create_app
from celeriac.broker.keys import UNACKED_KEY, priority_list_keys
from celeriac.exporter.collector import QUEUE_WAITING
from celeriac.settings import DEFAULT_PRIORITY_STEPS, DEFAULT_QUEUE, Settings
from celeriac.testing import free_port, wait_until
from tests.image import build
from tests.image.conftest import Containers
from tests.support import REPO_ROOT, require_tool

pytestmark = pytest.mark.image

UID = "10001"
SHUTDOWN_TIMEOUT_SECONDS = 5
SLEEP_TASK = demo.sleep.name
# The chart's terminationGracePeriodSeconds: the shutdown timeout plus at least 5 s.
GRACE_SECONDS = SHUTDOWN_TIMEOUT_SECONDS + 10


def http_get(url: str) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def waiting(client: redis.Redis, queue: str = DEFAULT_QUEUE) -> int:
    return sum(int(client.llen(key)) for key in priority_list_keys(queue, DEFAULT_PRIORITY_STEPS))


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    app = create_app("test-image-producer", Settings(broker_url=redis_url))
    yield app
    app.close()


def worker_env(redis_url: str) -> dict[str, str]:
    # Task metrics on a free port: the container shares the host's network.
    return {
        "CELERIAC_BROKER_URL": redis_url,
        "CELERIAC_WORKER_CONCURRENCY": "1",
        "CELERIAC_WORKER_METRICS_PORT": str(free_port()),
        "CELERIAC_WORKER_SHUTDOWN_TIMEOUT_SECONDS": str(SHUTDOWN_TIMEOUT_SECONDS),
    }


def wait_ready(containers: Containers, name: str, component: str) -> None:
    def ready() -> bool:
        if containers.state(name, "Running") != "true":
            raise AssertionError(f"{component} exited: {containers.logs(name)}")
        return containers.exec(name, "celeriac", "probe", component, "--ready").returncode == 0

    wait_until(ready, timeout=60, message=f"{component} ready: {containers.logs(name)}")


# --- every component starts ----------------------------------------------------------------


def test_celeriac_help_is_the_default_command(built: build.Built, containers: Containers) -> None:
    result = containers.run(built.image, detach=False)
    assert result.returncode == 0, result.stderr
    for component in build.COMPONENTS:
        assert re.search(rf"^\s+{component}\s", result.stdout, re.MULTILINE), result.stdout


def test_worker_image_becomes_ready(
    built: build.Built, containers: Containers, redis_url: str
) -> None:
    name = containers.run(built.components["worker"], env=worker_env(redis_url)).stdout
    wait_ready(containers, name, "worker")


def test_beat_image_runs(built: build.Built, containers: Containers, redis_url: str) -> None:
    env = {"CELERIAC_BROKER_URL": redis_url, "CELERIAC_BEAT_MAX_LOOP_INTERVAL_SECONDS": "1"}
    name = containers.run(built.components["beat"], env=env).stdout

    def beating() -> bool:
        if containers.state(name, "Running") != "true":
            raise AssertionError(f"beat exited: {containers.logs(name)}")
        return containers.exec(name, "celeriac", "probe", "beat").returncode == 0

    wait_until(beating, timeout=60, message=f"beat's heartbeat: {containers.logs(name)}")
    # The beat holds its lock in Redis: it really talks to the host's redis-server.
    client = redis.Redis.from_url(redis_url)
    wait_until(lambda: bool(client.keys("celeriac:beat:*")), timeout=30, message="beat keys")


def test_api_image_answers_healthz_and_readyz(
    built: build.Built, containers: Containers, redis_url: str
) -> None:
    port = free_port()
    env = {
        "CELERIAC_BROKER_URL": redis_url,
        "CELERIAC_API_PORT": str(port),
        "CELERIAC_API_TOKENS": "image-test-token",
    }
    name = containers.run(built.components["api"], env=env).stdout

    def answers(path: str) -> tuple[int, str] | None:
        if containers.state(name, "Running") != "true":
            raise AssertionError(f"api exited: {containers.logs(name)}")
        return http_get(f"http://127.0.0.1:{port}{path}")

    healthz = wait_until(lambda: answers("/healthz"), timeout=60, message="api /healthz")
    assert healthz == (200, '{"status":"ok"}')
    # Ready after a PING of the host's redis-server.
    assert answers("/readyz") == (200, '{"status":"ready"}')


def test_exporter_image_serves_metrics(
    built: build.Built, containers: Containers, redis_url: str, producer: Celery
) -> None:
    producer.send_task(SLEEP_TASK, kwargs={"seconds": 0})
    port = free_port()
    env = {"CELERIAC_BROKER_URL": redis_url, "CELERIAC_EXPORTER_PORT": str(port)}
    name = containers.run(built.components["exporter"], env=env).stdout

    def scraped() -> tuple[int, str] | None:
        if containers.state(name, "Running") != "true":
            raise AssertionError(f"exporter exited: {containers.logs(name)}")
        return http_get(f"http://127.0.0.1:{port}/metrics")

    status, text = wait_until(scraped, timeout=60, message="exporter /metrics")
    assert status == 200
    # The one message sent above, counted from the host's redis-server.
    waiting_line = rf'^{QUEUE_WAITING}\{{[^}}]*queue="{DEFAULT_QUEUE}"[^}}]*\}} 1\.0$'
    assert re.search(waiting_line, text, re.MULTILINE), text


# --- runs as the chart runs it ---------------------------------------------------------------


def test_runs_as_uid_10001_read_only_without_capabilities(
    built: build.Built, containers: Containers
) -> None:
    script = (
        "id -u; id -g; "
        "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs):' /proc/self/status; "
        "touch /opt/celeriac/venv/x 2>&1 || echo venv-read-only; "
        "touch /etc/x 2>&1 || echo etc-read-only; "
        "touch /tmp/x && echo tmp-writable"
    )
    result = containers.run(built.image, "-c", script, entrypoint="/bin/sh", detach=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == [UID, UID]
    status = dict(line.split(":\t") for line in lines if ":\t" in line)
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == "0" * 16
    assert status["NoNewPrivs"] == "1"
    assert "Read-only file system" in result.stdout
    assert "venv-read-only" in lines
    assert "etc-read-only" in lines
    assert lines[-1] == "tmp-writable"


# --- tini forwards SIGTERM: the worker drains within its deadline ---------------------------


def test_tini_is_pid_1_and_a_stopped_worker_requeues_its_task_within_the_deadline(
    built: build.Built,
    containers: Containers,
    redis_url: str,
    producer: Celery,
) -> None:
    client = redis.Redis.from_url(redis_url)
    name = containers.run(built.components["worker"], env=worker_env(redis_url)).stdout
    wait_ready(containers, name, "worker")

    pid_1 = containers.exec(name, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert pid_1[:3] == ["/usr/bin/tini", "--", "/opt/celeriac/venv/bin/celeriac"], pid_1

    task_id = producer.send_task(SLEEP_TASK, kwargs={"seconds": 60}).id
    # Running: taken off its queue list, held in unacked until it ends or is requeued.
    wait_until(
        lambda: waiting(client) == 0 and client.hlen(UNACKED_KEY) == 1,
        timeout=30,
        message=f"the task to start: {containers.logs(name)}",
    )

    started = time.monotonic()
    stop = build.podman("stop", "--time", str(GRACE_SECONDS), name, capture=True, timeout=60)
    elapsed = time.monotonic() - started
    assert stop.returncode == 0, stop.stderr
    logs = containers.logs(name)
    # Exit 0: SIGTERM reached celeriac through tini and the drain ended the worker (143 would
    # be a SIGTERM nobody handled; 137 the SIGKILL at the grace period).
    assert containers.state(name, "ExitCode") == "0", logs
    # It waited for the task until its deadline, then requeued it, well within the grace.
    assert SHUTDOWN_TIMEOUT_SECONDS <= elapsed < GRACE_SECONDS - 2, (elapsed, logs)
    # Requeued at once: back on its list, not stranded in unacked; not lost.
    assert waiting(client) == 1, logs
    assert client.hlen(UNACKED_KEY) == 0
    (message,) = (
        json.loads(raw)
        for key in priority_list_keys(DEFAULT_QUEUE, DEFAULT_PRIORITY_STEPS)
        for raw in client.lrange(key, 0, -1)
    )
    assert message["headers"]["id"] == task_id
    print(f"podman stop of a worker running a 60 s task: {elapsed:.1f} s")


# --- the venv and the SBOM -----------------------------------------------------------------


def test_pip_check_passes_and_no_build_secret_is_left(
    built: build.Built, containers: Containers
) -> None:
    result = containers.run(built.image, "check", entrypoint="pip", detach=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "No broken requirements found."
    leftovers = containers.run(
        built.image,
        "-c",
        "ls /etc/pip.conf /run/secrets /root/.config/pip 2>/dev/null; pip config list",
        entrypoint="/bin/sh",
        detach=False,
    )
    # Only the image's own PIP_* variables: no config file, no CA, no index of the build machine.
    settings = leftovers.stdout.splitlines()
    assert settings, "pip config list printed nothing: the check would pass vacuously"
    assert [line for line in settings if not line.startswith(":env:.")] == [], settings
    assert not [line for line in settings if "cert" in line or "index" in line], settings


def normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions() -> dict[str, str]:
    text = (REPO_ROOT / "services" / "base" / "requirements.txt").read_text()
    pins = re.findall(r"^([\w.-]+)==(\S+)", text, re.MULTILINE)
    return {normalized(name): version for name, version in pins}


def test_sbom_lists_the_locked_versions(built: build.Built, tmp_path: Path) -> None:
    if not build.syft_path().exists():  # built once with Go
        require_tool("go", "Go >= 1.26.8 (syft's go.mod)", candidates=[build.GO_CANDIDATE])
    document = json.loads(build.sbom(built.image, tmp_path / "sbom.cdx.json").read_text())
    assert document["bomFormat"] == "CycloneDX"
    found: dict[str, set[str]] = {}
    for component in document["components"]:
        if component.get("purl", "").startswith("pkg:pypi/"):
            found.setdefault(normalized(component["name"]), set()).add(component["version"])
    locked = locked_versions()
    for name in ("celery", "kombu", "redis"):
        assert found[name] == {locked[name]}, name
    # Every locked package at its locked version, and celeriac itself, is in the SBOM.
    assert len(locked) > 30
    assert {name: found.get(name) for name in locked} == {n: {v} for n, v in locked.items()}
    assert found["celeriac"] == {build.project_version()}
    # The Debian packages too: the base's Python and tini.
    debian = {c["name"] for c in document["components"] if c.get("purl", "").startswith("pkg:deb/")}
    assert {"tini", "python3.11"} <= debian
