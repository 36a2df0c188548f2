"""``CELERIAC_REDIS_WAIT_REPLICAS``: a publish is acknowledged only once a replica holds it.

Replication is asynchronous: a master can acknowledge a write and then lose it in a failover
(the replica promoted in its place never had it, and the old master drops it when it rejoins as
a replica). With the setting, celeriac's producers (Celery's ``send_task``) and the API's
``POST /v1/tasks`` end their writes with ``WAIT``. Real redis-server processes: a master and a
replica. Checked: what was acknowledged is on the replica when the call returns; with no replica
attached, a publish fails with an error naming the setting (the API answers 503) instead of
being acknowledged; once the replica is back, publishes are acknowledged again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from kombu.exceptions import OperationalError

from celeriac.app import create_app
from celeriac.demo import ADD_TASK
from celeriac.settings import Settings
from celeriac.testing import Child, RedisServer, celeriac_command, free_port, wait_until

pytestmark = pytest.mark.integration

Spawn = Callable[..., Child]
TOKEN = "replication-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUEUE = "default"
WAIT_TIMEOUT_SECONDS = 0.5


class Pair:
    """A master and a replica replicating from it."""

    def __init__(self) -> None:
        self.master = RedisServer().start()
        self.replica = RedisServer(
            extra_args=("--replicaof", "127.0.0.1", str(self.master.port))
        ).start()
        self.reattach()

    def detach(self) -> None:
        """The replica leaves: the master has none to wait for."""
        with self.replica.client() as replica:
            replica.replicaof("NO", "ONE")
        with self.master.client() as master:
            wait_until(
                lambda: master.info("replication")["connected_slaves"] == 0,
                message="the master to see its replica gone",
            )

    def reattach(self) -> None:
        with self.replica.client() as replica:
            replica.replicaof("127.0.0.1", self.master.port)
            wait_until(
                lambda: replica.info("replication")["master_link_status"] == "up",
                timeout=30,
                message="the replica to sync with the master",
            )

    def close(self) -> None:
        self.replica.close()
        self.master.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    made = Pair()
    yield made
    made.close()


def env(pair: Pair) -> dict[str, str]:
    return {
        "CELERIAC_BROKER_URL": pair.master.url(),
        "CELERIAC_REDIS_WAIT_REPLICAS": "1",
        "CELERIAC_REDIS_WAIT_TIMEOUT_SECONDS": str(WAIT_TIMEOUT_SECONDS),
    }


def waiting_on_replica(pair: Pair) -> int:
    """Messages in the queue's list, read from the replica."""
    with pair.replica.client() as replica:
        return int(replica.llen(QUEUE))


def test_send_task_returns_once_a_replica_holds_the_message(pair: Pair) -> None:
    app = create_app("test-replication", Settings.from_env(env(pair)))
    try:
        for number in range(1, 21):
            app.send_task(ADD_TASK, args=(number, 1), queue=QUEUE)
            # No wait: WAIT returned only once the replica acknowledged (applied) the write.
            assert waiting_on_replica(pair) == number

        pair.detach()
        # What Celery raises for a broker it cannot publish to, naming the setting.
        with pytest.raises(OperationalError, match="CELERIAC_REDIS_WAIT_REPLICAS"):
            app.send_task(ADD_TASK, args=(0, 1), queue=QUEUE, retry=False)

        pair.reattach()
        app.send_task(ADD_TASK, args=(21, 1), queue=QUEUE)
        # The refused publish had reached the master (at least once), so it is there too.
        assert waiting_on_replica(pair) == 22
    finally:
        app.close()


def test_the_api_answers_202_only_for_replicated_submits(pair: Pair, spawn: Spawn) -> None:
    port = free_port()
    api = spawn(
        celeriac_command("api", "--host", "127.0.0.1", "--port", str(port)),
        env=env(pair) | {"CELERIAC_API_TOKENS": TOKEN},
        name="api",
    )
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15, headers=AUTH) as http:

        def ready() -> bool:
            api.check_alive()
            return http.get("/readyz").status_code == 200

        wait_until(ready, timeout=30, message="celeriac api ready")
        body = {"task": ADD_TASK, "args": [1, 2]}
        for number in range(1, 11):
            assert http.post("/v1/tasks", json=body).status_code == 202
            assert waiting_on_replica(pair) == number

        pair.detach()
        refused = http.post("/v1/tasks", json=body)
        assert refused.status_code == 503, refused.text
        assert "Retry-After" in refused.headers
        assert "Traceback" not in api.output()

        pair.reattach()
        accepted = http.post("/v1/tasks", json=body)
        assert accepted.status_code == 202, accepted.text
        task = http.get(f"/v1/tasks/{accepted.json()['id']}")
        assert task.status_code == 200
        assert task.json()["state"] == "PENDING"
        assert waiting_on_replica(pair) == 12
