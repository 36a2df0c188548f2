"""The Django example project (k8s/examples/django) run by celeriac against real PostgreSQL.

A request to Django's view enqueues a task, a prefork ``celeriac worker`` runs it through the
ORM; Django's connection handling in the worker is checked on the server (``pg_stat_activity``
and ``pg_backend_pid()``, which each task stores in its row); a worker SIGTERMed mid-task leaves
no transaction open; celeriac's settings combine with Django's ``CELERY_*`` as README says; and
with results in the database (django-celery-results) the API reads task states from there.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from celeriac import Settings, create_app
from celeriac.api.tracking import RESULT_PREFIX
from celeriac.testing import Child, celeriac_command, free_port, wait_until
from tests.integration.support.django_example import EXAMPLE, django_env, fetch
from tests.integration.support.postgres import PostgresServer
from tests.integration.support.workers import worker_env

pytestmark = pytest.mark.integration

Spawn = Callable[..., Child]
CONCURRENCY = 2

# Django settings for some tests: the example's, plus what the test needs. It makes the worker's
# main process hold a database connection of its own from worker_ready on (as a signal handler
# or a health check touching the ORM would), so pool processes forked later (after
# max-tasks-per-child) start with that socket inherited; Celery's Django fixup must drop it.
HOLDING_SETTINGS = """
from proj.settings import *  # noqa: F403

CELERY_WORKER_MAX_TASKS_PER_CHILD = 2

from celery.signals import worker_ready


@worker_ready.connect
def _hold_a_connection(**kwargs):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    with open({path!r}, "w") as file:
        file.write(str(pid))
"""


def new_order(postgres: PostgresServer, db: str) -> int:
    rows = fetch(postgres, db, "INSERT INTO orders_order (amount_cents) VALUES (100) RETURNING id")
    return int(rows[0][0])


def connections(postgres: PostgresServer, db: str, state: str | None = None) -> int:
    """Client connections to ``db``, other than the one asking."""
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend'"
    )
    params: tuple[str, ...] = (db,)
    if state is not None:
        sql += " AND state = %s"
        params += (state,)
    return int(fetch(postgres, db, sql, *params)[0][0])


def start_worker(
    spawn: Spawn, tmp_path: Path, env: dict[str, str], name: str = "worker", **settings: str
) -> Child:
    env = env | worker_env(env["CELERIAC_BROKER_URL"], tmp_path, name, **settings)
    worker = spawn(celeriac_command("worker"), env=env, name=name)
    wait_until(
        lambda: (tmp_path / f"{name}.ready").exists() or worker.check_alive(),
        timeout=30,
        message=f"{name} ready",
    )
    return worker


def pool_pids(worker: Child) -> set[int]:
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    return {int(pid) for pid in children}


def test_a_request_to_the_view_enqueues_a_task_that_a_prefork_worker_runs(
    spawn: Spawn, tmp_path: Path, redis_url: str, postgres_server: PostgresServer, django_db: str
) -> None:
    env = django_env(postgres_server, django_db, redis_url)
    worker = start_worker(spawn, tmp_path, env)
    port = free_port()
    web = spawn(
        [
            sys.executable,
            str(EXAMPLE / "manage.py"),
            "runserver",
            "--noreload",
            f"127.0.0.1:{port}",
        ],
        env=env,
        name="web",
    )
    order = new_order(postgres_server, django_db)

    def pay() -> httpx.Response:
        web.check_alive()
        return httpx.post(f"http://127.0.0.1:{port}/orders/{order}/pay", timeout=5)

    response = wait_until(pay, timeout=30, message="the web server")
    assert response.status_code == 202, response.text
    assert response.json()["order"] == order
    paid = wait_until(
        lambda: fetch(
            postgres_server,
            django_db,
            "SELECT paid_by_pid FROM orders_order WHERE id = %s AND paid_at IS NOT NULL",
            order,
        ),
        timeout=20,
        message="the order paid by the worker",
    )
    # A pool process ran it, not the worker's main process.
    assert paid[0][0] in pool_pids(worker)
    assert httpx.post(f"http://127.0.0.1:{port}/orders/999999/pay", timeout=5).status_code == 404


@pytest.mark.parametrize("conn_max_age", [0, 300])
def test_connections_are_never_shared_across_the_fork_and_closed_or_reused_as_django_says(
    spawn: Spawn,
    tmp_path: Path,
    redis_url: str,
    postgres_server: PostgresServer,
    django_db: str,
    conn_max_age: int,
) -> None:
    main_connection_file = tmp_path / "main-connection"
    (tmp_path / "holding_settings.py").write_text(
        HOLDING_SETTINGS.format(path=str(main_connection_file))
    )
    env = django_env(
        postgres_server,
        django_db,
        redis_url,
        PYTHONPATH=f"{EXAMPLE}:{tmp_path}",
        DJANGO_SETTINGS_MODULE="holding_settings",
        DJANGO_CONN_MAX_AGE=str(conn_max_age),
    )
    worker = start_worker(spawn, tmp_path, env)
    main_connection = int(
        wait_until(main_connection_file.read_text, message="the main process's connection")
    )
    orders = [new_order(postgres_server, django_db) for _ in range(12)]
    app = create_app("sender", Settings.from_env(env))
    for order in orders:
        app.send_task("orders.pay", args=[order])
    rows = wait_until(
        lambda: (
            found
            if len(
                found := fetch(
                    postgres_server,
                    django_db,
                    "SELECT paid_by_pid, paid_on_connection FROM orders_order "
                    "WHERE paid_at IS NOT NULL",
                )
            )
            == len(orders)
            else None
        ),
        timeout=30,
        message="every order paid",
    )
    processes = {pid for pid, _ in rows}
    used = {conn for _, conn in rows}
    # max-tasks-per-child 2: pool processes were replaced, forked while the main process held
    # its connection; no task ever ran on it, and no two processes ever shared one.
    assert len(processes) >= len(orders) // 2
    assert worker.pid not in processes
    assert main_connection not in used
    for conn in used:
        assert len({pid for pid, c in rows if c == conn}) == 1, f"connection {conn} shared"
    # Celery's Django fixup closes every connection before and after each task (conn.close(),
    # not Django's close_if_unusable_or_obsolete), whatever CONN_MAX_AGE says: a connection
    # per task, none kept between tasks (README "Django"). Only the main process's one stays.
    assert len(used) == len(orders)
    wait_until(
        lambda: connections(postgres_server, django_db) == 1,
        message="the pool's connections closed after their tasks",
    )
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    wait_until(
        lambda: connections(postgres_server, django_db) == 0,
        message="every connection closed when the worker exits",
    )


def test_a_worker_sigtermed_mid_task_leaves_no_transaction_open(
    spawn: Spawn, tmp_path: Path, redis_url: str, postgres_server: PostgresServer, django_db: str
) -> None:
    env = django_env(postgres_server, django_db, redis_url)
    worker = start_worker(spawn, tmp_path, env, worker_shutdown_timeout_seconds="1")
    order = new_order(postgres_server, django_db)
    create_app("sender", Settings.from_env(env)).send_task("orders.pay_slowly", args=[order, 120])
    wait_until(
        lambda: connections(postgres_server, django_db, "idle in transaction") == 1,
        timeout=20,
        message="the task inside its transaction",
    )
    worker.signal(signal.SIGTERM)
    worker.wait(timeout=30)
    wait_until(
        lambda: connections(postgres_server, django_db) == 0,
        message="no connection (and so no transaction) left once the worker is gone",
    )
    # Rolled back: the update inside the transaction never committed.
    assert fetch(
        postgres_server, django_db, "SELECT paid_at FROM orders_order WHERE id = %s", order
    ) == [(None,)]


# What the worker, beat and API see: the app as celeriac loads it (no Redis needed).
SHOW_CONFIG = """
import json
from celeriac import Settings, load_app
app = load_app("proj.celery:app", Settings.from_env())
keys = ("broker_url", "result_backend", "result_expires", "task_time_limit")
print(json.dumps({k: app.conf[k] for k in keys}))
"""
OTHER_BROKER_SETTINGS = """
from proj.settings import *  # noqa: F403

CELERY_BROKER_URL = "redis://somewhere-else:6379/5"
CELERY_TASK_DEFAULT_QUEUE = "celery"
"""


@pytest.mark.parametrize(
    ("settings_module", "extra", "expected"),
    [
        # The project's own CELERY_RESULT_EXPIRES (3600) and CELERY_TASK_TIME_LIMIT stay.
        ("proj.settings", {}, {"result_expires": 3600, "task_time_limit": 300}),
        # A CELERIAC_* variable wins over the Django setting.
        (
            "proj.settings",
            {"CELERIAC_RESULT_EXPIRES_SECONDS": "77"},
            {"result_expires": 77, "task_time_limit": 300},
        ),
        # The broker is enforced: CELERY_BROKER_URL in Django's settings is overridden.
        ("other_broker", {}, {"result_expires": 3600}),
        # Results in the database, the project's choice: kept...
        ("proj.settings", {"DJANGO_RESULTS_IN_DATABASE": "1"}, {"result_backend": "django-db"}),
        # ... unless CELERIAC_RESULT_BACKEND_URL says otherwise.
        (
            "proj.settings",
            {
                "DJANGO_RESULTS_IN_DATABASE": "1",
                "CELERIAC_RESULT_BACKEND_URL": "redis://127.0.0.1:6390/4",
            },
            {"result_backend": "celeriac.broker.backend:ResultBackend+redis://127.0.0.1:6390/4"},
        ),
    ],
)
def test_celeriac_settings_and_djangos_celery_settings_combine_as_documented(
    tmp_path: Path, settings_module: str, extra: dict[str, str], expected: dict[str, object]
) -> None:
    (tmp_path / "other_broker.py").write_text(OTHER_BROKER_SETTINGS)
    broker = "redis://127.0.0.1:6390/3"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{EXAMPLE}:{tmp_path}",
        "DJANGO_SETTINGS_MODULE": settings_module,
        "CELERIAC_BROKER_URL": broker,
        **extra,
    }
    done = subprocess.run(
        [sys.executable, "-c", SHOW_CONFIG],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert config["broker_url"] == broker
    for key, value in expected.items():
        assert config[key] == value, key


TOKEN = "django-results-token-0123456789"


def start_api(spawn: Spawn, env: dict[str, str]) -> httpx.Client:
    """``celeriac api`` with ``env``, answering: a client for it, to close."""
    port = free_port()
    api = spawn(
        celeriac_command("api", "--host", "127.0.0.1", "--port", str(port)),
        env=env | {"CELERIAC_API_TOKENS": TOKEN},
        name="api",
    )
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )

    def healthy() -> bool:
        api.check_alive()
        try:
            return client.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, timeout=60, message="celeriac api to answer /healthz")
    except BaseException:
        client.close()
        raise
    return client


def finished(client: httpx.Client, task_id: str) -> dict[str, object]:
    def state() -> dict[str, object] | None:
        response = client.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        return body if body["state"] in ("SUCCESS", "FAILURE") else None

    return wait_until(state, timeout=30, message=f"task {task_id} finished")


def test_results_in_the_database_are_stored_by_a_prefork_worker_and_read_by_the_api(
    spawn: Spawn,
    tmp_path: Path,
    redis_url: str,
    redis_client: redis.Redis,
    postgres_server: PostgresServer,
    django_db: str,
) -> None:
    env = django_env(postgres_server, django_db, redis_url, DJANGO_RESULTS_IN_DATABASE="1")
    worker = start_worker(spawn, tmp_path, env)
    with contextlib.closing(start_api(spawn, env)) as client:
        check_results_in_the_database(client, env, worker, postgres_server, redis_client)


def check_results_in_the_database(
    client: httpx.Client,
    env: dict[str, str],
    worker: Child,
    postgres_server: PostgresServer,
    redis_client: redis.Redis,
) -> None:
    django_db = env["PGDATABASE"]
    order = new_order(postgres_server, django_db)

    response = client.post("/v1/tasks", json={"task": "orders.pay", "args": [order]})
    assert response.status_code == 202, response.text
    task_id = response.json()["id"]
    status = finished(client, task_id)
    assert (status["state"], status["result"], status["task"]) == ("SUCCESS", 1, "orders.pay")
    assert status["queue"] == "default"  # the API's own record, in Redis
    assert status["finished_at"]
    # The row django-celery-results wrote from a pool process; no result in Redis.
    row = fetch(
        postgres_server,
        django_db,
        "SELECT status, result, task_name FROM django_celery_results_taskresult WHERE task_id = %s",
        task_id,
    )
    assert row == [("SUCCESS", "1", "orders.pay")]
    # Its two states cost two writes (README): the STARTED row inserted, then updated.
    wait_until(
        lambda: (
            fetch(
                postgres_server,
                django_db,
                "SELECT n_tup_ins, n_tup_upd FROM pg_stat_user_tables WHERE relname = %s",
                "django_celery_results_taskresult",
            )
            == [(1, 1)]
        ),
        timeout=10,
        message="one insert and one update of the result row counted",
    )
    paid_by = fetch(
        postgres_server, django_db, "SELECT paid_by_pid FROM orders_order WHERE id = %s", order
    )
    assert paid_by[0][0] in pool_pids(worker)
    assert redis_client.exists(RESULT_PREFIX + task_id) == 0

    # A task sent elsewhere (the web process, beat) has no record in the API: found in the
    # database all the same. A failure reads as with Redis results.
    sender = create_app("sender", Settings.from_env(env))
    report = sender.send_task("orders.report").id
    assert finished(client, report)["result"] == {"paid": 1, "unpaid": 0}
    failed = client.post("/v1/tasks", json={"task": "orders.pay", "args": ["not-an-id"]})
    status = finished(client, failed.json()["id"])
    assert status["state"] == "FAILURE"
    error = status["error"]
    assert isinstance(error, dict)
    assert error["type"] == "ValueError"
    assert "not-an-id" in error["message"]  # Django's words for the bad id

    # Revoked before it ran: the API's record says so, the database has no state yet.
    delayed = client.post(
        "/v1/tasks", json={"task": "orders.pay", "args": [order], "countdown": 600}
    ).json()["id"]
    revoked = client.delete(f"/v1/tasks/{delayed}")
    assert (revoked.status_code, revoked.json()["state"]) == (202, "REVOKED")
    assert client.get(f"/v1/tasks/{delayed}").json()["state"] == "REVOKED"

    assert client.get("/v1/tasks/never-sent").status_code == 404
    # Listing needs results in Redis: refused, naming the setting.
    listing = client.get("/v1/tasks")
    assert listing.status_code == 501
    assert "django-db" in listing.json()["detail"]
    assert "CELERY_RESULT_BACKEND" in listing.json()["detail"]


def test_a_result_database_out_of_reach_is_a_503_not_a_traceback(
    spawn: Spawn,
    redis_url: str,
    postgres_server: PostgresServer,
    django_db: str,
) -> None:
    # The API's database is a port nothing listens on; Redis is up.
    env = django_env(postgres_server, django_db, redis_url, DJANGO_RESULTS_IN_DATABASE="1")
    with contextlib.closing(start_api(spawn, env | {"PGPORT": str(free_port())})) as client:
        accepted = client.post("/v1/tasks", json={"task": "orders.report"})
        assert accepted.status_code == 202, accepted.text
        response = client.get(f"/v1/tasks/{accepted.json()['id']}")
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.json() == {"detail": "the app's result backend cannot be read; retry later"}
