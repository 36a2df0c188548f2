"""``celeriac api`` as a real server: end to end with a real worker, chunked bodies over the
limit, Redis stopping and restarting under it, SIGTERM."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from celeriac.api.tracking import RESULT_PREFIX
from celeriac.testing import Child, RedisServer, celeriac_command, free_port, wait_until
from tests.integration.support.workers import worker_env

pytestmark = pytest.mark.integration

TOKEN = "server-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 1024
DEADLINE = 30.0


def _start_api(
    spawn: Callable[..., Child], broker_url: str, workers: int = 1
) -> tuple[Child, httpx.Client]:
    port = free_port()
    env = {
        "CELERIAC_API_WORKERS": str(workers),
        "CELERIAC_BROKER_URL": broker_url,
        "CELERIAC_API_TOKENS": TOKEN,
        "CELERIAC_API_MAX_BODY_BYTES": str(MAX_BODY),
        "CELERIAC_REDIS_SOCKET_TIMEOUT_SECONDS": "2",
        # Off by default (it costs throughput); on here to check it never shows a token.
        "CELERIAC_API_ACCESS_LOG": "true",
    }
    command = celeriac_command("api", "--host", "127.0.0.1", "--port", str(port))
    child = spawn(command, env=env, name="api")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def healthy() -> bool:
        if child.process.poll() is not None:
            raise AssertionError(f"celeriac api exited:\n{child.output()}")
        return client.get("/healthz").status_code == 200

    wait_until(healthy, timeout=DEADLINE, message="celeriac api to answer /healthz")
    return child, client


def _start_worker(spawn: Callable[..., Child], broker_url: str, tmp_path: Path) -> Child:
    env = worker_env(broker_url, tmp_path)
    return spawn(celeriac_command("worker"), env=env, name="worker")


@pytest.fixture
def closing() -> Iterator[list[httpx.Client]]:
    clients: list[httpx.Client] = []
    yield clients
    for client in clients:
        client.close()


def _submit(client: httpx.Client, task: str, **body: Any) -> str:
    response = client.post("/v1/tasks", json={"task": task, **body}, headers=AUTH)
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/v1/tasks/{response.json()['id']}"
    task_id: str = response.json()["id"]
    return task_id


def _wait_for_state(
    client: httpx.Client, task_id: str, state: str, seen: set[str] | None = None
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/v1/tasks/{task_id}", headers=AUTH).json()
        if seen is not None:
            seen.add(body["state"])
        return body if body["state"] == state else None

    return wait_until(reached, timeout=DEADLINE, interval=0.02, message=f"{task_id} -> {state}")


def test_tasks_run_by_a_real_worker(
    spawn: Callable[..., Child],
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
    closing: list[httpx.Client],
) -> None:
    _api, client = _start_api(spawn, redis_url)
    closing.append(client)
    worker = _start_worker(spawn, redis_url, tmp_path)

    # Submitted before the worker is up: it waits in the queue.
    flaky = _submit(client, "celeriac.demo.flaky", kwargs={"fail_times": 9})
    added = _submit(client, "celeriac.demo.add", args=[1, 2], priority=0)

    done = _wait_for_state(client, added, "SUCCESS")
    assert (done["result"], done["task"], done["queue"]) == (3, "celeriac.demo.add", "default")
    assert done["error"] is None

    # The worker is consuming, so it hears the revoke broadcast before the ETA comes.
    delayed = _submit(client, "celeriac.demo.add", args=[5, 5], countdown=2)
    response = client.delete(f"/v1/tasks/{delayed}", headers=AUTH)
    assert response.status_code == 202
    # REVOKED at once, though no worker has met it yet: the API noted the revoke.
    assert response.json()["state"] == "REVOKED"
    revoked = client.get(f"/v1/tasks/{delayed}", headers=AUTH).json()
    assert (revoked["state"], revoked["result"]) == ("REVOKED", None)
    assert revoked["error"] == {"type": "TaskRevokedError", "message": "revoked"}

    # The worker drops it when its ETA comes and stores Celery's REVOKED: the same answer.
    def stored_state() -> str | None:
        raw = redis_client.get(f"{RESULT_PREFIX}{delayed}")
        return str(json.loads(raw)["status"]) if raw else None

    wait_until(stored_state, timeout=DEADLINE, interval=0.02, message=f"{delayed} stored")
    assert stored_state() == "REVOKED"
    by_worker = client.get(f"/v1/tasks/{delayed}", headers=AUTH).json()
    assert (by_worker["state"], by_worker["error"]) == ("REVOKED", revoked["error"])

    seen: set[str] = set()
    failed = _wait_for_state(client, flaky, "FAILURE", seen)
    assert failed["error"] == {"type": "RuntimeError", "message": "attempt 4 failed on purpose"}
    assert failed["result"] is None
    assert "RETRY" in seen, seen  # three retries, a second apart each
    assert "Traceback" not in client.get(f"/v1/tasks/{flaky}", headers=AUTH).text

    idle = [
        {
            "name": "default",
            "waiting": 0,
            "in_flight": 0,
            "scheduled": 0,
            "backlog": 0,
            "dead_letters": 0,
        }
    ]
    # A task's result is stored before its message is acknowledged: wait for the last ack.
    wait_until(
        lambda: client.get("/v1/queues", headers=AUTH).json()["queues"] == idle,
        timeout=10,
        message=f"idle queues\n{worker.output()[-2000:]}",
    )


def _assert_unavailable(response: httpx.Response, elapsed: float) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "5"
    assert response.json() == {"detail": "Redis is unavailable; retry later"}
    assert elapsed < 3.0


def test_server_limits_outage_recovery_and_sigterm(
    spawn: Callable[..., Child], own_redis: RedisServer, closing: list[httpx.Client]
) -> None:
    api, client = _start_api(spawn, own_redis.url())
    closing.append(client)
    assert client.get("/readyz").status_code == 200
    assert client.get("/openapi.json").status_code == 200

    # Bodies over the limit, with a Content-Length and chunked without one.
    too_big = b'{"task": "' + b"x" * MAX_BODY + b'"}'
    sized = client.post("/v1/tasks", content=too_big, headers=AUTH)
    assert sized.status_code == 413
    chunks = [too_big[start : start + 256] for start in range(0, len(too_big), 256)]
    chunked = client.post("/v1/tasks", content=iter(chunks), headers=AUTH)
    assert chunked.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in chunked.request.headers
    assert chunked.status_code == 413
    assert chunked.json()["detail"] == f"request body is larger than {MAX_BODY} bytes"
    small = [b'{"task": "celeriac.demo.add", ', b'"args": [1, 2]}']
    json_type = {**AUTH, "Content-Type": "application/json"}
    assert client.post("/v1/tasks", content=iter(small), headers=json_type).status_code == 202

    # Handlers run in uvicorn's thread pool: concurrent submissions share the pools safely.
    with ThreadPoolExecutor(max_workers=16) as pool:
        ids = list(pool.map(lambda n: _submit(client, "celeriac.demo.add", args=[n, n]), range(48)))
    assert len(set(ids)) == 48
    assert own_redis.client().llen("default") == 48 + 1  # and the chunked one above

    before = _submit(client, "celeriac.demo.add", args=[1, 1])
    own_redis.stop()
    for method, path, body in [
        ("POST", "/v1/tasks", {"task": "celeriac.demo.add"}),
        ("GET", f"/v1/tasks/{before}", None),
        ("GET", "/readyz", None),
    ]:
        started = time.monotonic()
        response = client.request(method, path, json=body, headers=AUTH)
        _assert_unavailable(response, time.monotonic() - started)
    assert client.get("/healthz").status_code == 200

    own_redis.start()
    wait_until(
        lambda: client.get("/readyz").status_code == 200,
        timeout=DEADLINE,
        message="readyz after Redis restarts",
    )
    after = _submit(client, "celeriac.demo.add", args=[2, 2])
    assert client.get(f"/v1/tasks/{after}", headers=AUTH).json()["state"] == "PENDING"

    api.signal(signal.SIGTERM)
    assert api.wait(timeout=DEADLINE) == 0
    log = api.output()
    assert "Finished server process" in log
    assert '"POST /v1/tasks HTTP/1.1" 202' in log  # the access log is on ...
    assert TOKEN not in log  # ... and never shows a token
    assert "Traceback" not in log


def test_several_processes_serve_one_port_and_stop_on_sigterm(
    spawn: Callable[..., Child], redis_url: str, closing: list[httpx.Client]
) -> None:
    api, client = _start_api(spawn, redis_url, workers=2)
    closing.append(client)
    # /healthz answers once the first process serves; on a busy machine the second may still
    # be importing, and a SIGTERM then would stop it before it ever started.
    wait_until(
        lambda: api.output().count("Started server process") == 2,
        timeout=DEADLINE,
        message="both API processes started",
    )
    ids = {_submit(client, "celeriac.demo.add", args=[n, n]) for n in range(10)}
    assert len(ids) == 10
    for task_id in ids:
        assert client.get(f"/v1/tasks/{task_id}", headers=AUTH).json()["state"] == "PENDING"
    api.signal(signal.SIGTERM)
    assert api.wait(timeout=DEADLINE) == 0
    log = api.output()
    assert log.count("Started server process") == 2
    assert "Traceback" not in log
