"""``GET /v1/tasks`` against a real Redis: newest first, pages by cursor that cover every task
once, the state filter read from the result backend, and the list capped in Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from celeriac.api import ApiSettings, create_app, listing
from celeriac.api.tracking import RECENT_KEY, RECORD_PREFIX, RESULT_PREFIX
from celeriac.settings import Settings
from celeriac.testing import RedisServer

pytestmark = pytest.mark.integration

TOKEN = "list-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADD = "celeriac.demo.add"


def _client(broker_url: str, recent_tasks: int = 100) -> TestClient:
    settings = Settings(broker_url=broker_url, queues=("default", "cpu"))
    return TestClient(
        create_app(ApiSettings(tokens=(TOKEN,), common=settings, recent_tasks=recent_tasks))
    )


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    with _client(redis_url) as test_client:
        yield test_client


def _submit(client: TestClient, n: int, queue: str = "default") -> str:
    response = client.post(
        "/v1/tasks", json={"task": ADD, "args": [n, n], "queue": queue}, headers=AUTH
    )
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


def _finish(redis_client: redis.Redis, task_id: str, state: str = "SUCCESS") -> None:
    meta = {"status": state, "result": 2, "task_id": task_id, "date_done": "2030-01-01T00:00:00"}
    redis_client.set(RESULT_PREFIX + task_id, json.dumps(meta))


def _list(client: TestClient, **params: Any) -> dict[str, Any]:
    response = client.get("/v1/tasks", params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def _all_pages(client: TestClient, **params: Any) -> tuple[list[str], int]:
    ids: list[str] = []
    pages = 0
    cursor = None
    while True:
        page = _list(client, **params, **({"cursor": cursor} if cursor else {}))
        pages += 1
        ids += [task["id"] for task in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids, pages
        assert pages < 100, "the cursor does not advance"


def test_newest_first_with_what_is_known(client: TestClient, redis_client: redis.Redis) -> None:
    first = _submit(client, 1, queue="cpu")
    second = _submit(client, 2)
    _finish(redis_client, first)
    page = _list(client)
    assert [task["id"] for task in page["tasks"]] == [second, first]
    assert page["next_cursor"] is None
    newest, oldest = page["tasks"]
    assert newest["state"] == "PENDING"
    assert (newest["task"], newest["queue"], newest["finished_at"]) == (ADD, "default", None)
    assert oldest["state"] == "SUCCESS"
    assert (oldest["queue"], oldest["finished_at"]) == ("cpu", "2030-01-01T00:00:00")
    submitted = [datetime.fromisoformat(task["submitted_at"]) for task in (newest, oldest)]
    assert submitted[0] >= submitted[1]
    assert submitted[0].tzinfo == UTC
    assert "result" not in newest


def test_pages_cover_every_task_once_while_new_ones_arrive(client: TestClient) -> None:
    submitted = [_submit(client, n) for n in range(7)]
    page = _list(client, limit=3)
    assert [task["id"] for task in page["tasks"]] == submitted[::-1][:3]
    # Submissions after the first page do not shift the next pages.
    _submit(client, 99)
    rest, _ = _all_pages_from(client, page["next_cursor"], limit=3)
    assert rest == submitted[::-1][3:]


def _all_pages_from(client: TestClient, cursor: str, **params: Any) -> tuple[list[str], int]:
    ids: list[str] = []
    pages = 0
    while cursor is not None:
        page = _list(client, cursor=cursor, **params)
        pages += 1
        ids += [task["id"] for task in page["tasks"]]
        cursor = page["next_cursor"]
    return ids, pages


def test_the_state_filter_reads_states_from_the_result_backend(
    client: TestClient, redis_client: redis.Redis
) -> None:
    ids = [_submit(client, n) for n in range(6)]
    for task_id in ids[::2]:
        _finish(redis_client, task_id)
    _finish(redis_client, ids[1], "FAILURE")
    done, _ = _all_pages(client, state="SUCCESS", limit=2)
    assert done == [ids[4], ids[2], ids[0]]
    assert _all_pages(client, state="FAILURE")[0] == [ids[1]]
    assert _all_pages(client, state="PENDING")[0] == [ids[5], ids[3]]
    assert _all_pages(client, state="REVOKED")[0] == []


def test_the_state_filter_takes_any_case(client: TestClient, redis_client: redis.Redis) -> None:
    """``?state=failure`` finds Celery's FAILURE; a custom state a task set matches alike."""
    failed, progressing, pending = (_submit(client, n) for n in range(3))
    _finish(redis_client, failed, "FAILURE")
    _finish(redis_client, progressing, "Progress")
    assert _all_pages(client, state="failure")[0] == [failed]
    assert _all_pages(client, state="Failure")[0] == [failed]
    assert _all_pages(client, state="PROGRESS")[0] == [progressing]
    assert _all_pages(client, state="pending")[0] == [pending]


def test_a_rare_state_is_found_over_pages_of_bounded_reads(
    client: TestClient, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listing, "MAX_SCANNED", 3)
    rare = _submit(client, 0)
    _finish(redis_client, rare, "FAILURE")
    for n in range(1, 6):
        _submit(client, n)
    first = _list(client, state="FAILURE")
    # Three ids looked at, none matched: an empty page that says where to go on.
    assert first["tasks"] == []
    assert first["next_cursor"] is not None
    found, _ = _all_pages_from(client, first["next_cursor"], state="FAILURE")
    assert found == [rare]


def test_expired_tasks_are_passed_over(client: TestClient, redis_client: redis.Redis) -> None:
    kept, gone = _submit(client, 1), _submit(client, 2)
    redis_client.delete(RECORD_PREFIX + gone)
    assert [task["id"] for task in _list(client)["tasks"]] == [kept]


def test_the_list_is_capped_in_redis(redis_url: str, redis_client: redis.Redis) -> None:
    with _client(redis_url, recent_tasks=3) as client:
        ids = [_submit(client, n) for n in range(5)]
        assert redis_client.zcard(RECENT_KEY) == 3
        assert _all_pages(client)[0] == ids[::-1][:3]


def test_no_list_when_switched_off(redis_url: str, redis_client: redis.Redis) -> None:
    with _client(redis_url, recent_tasks=0) as client:
        _submit(client, 1)
        assert _list(client) == {"tasks": [], "next_cursor": None}
    assert not redis_client.exists(RECENT_KEY)


def test_results_in_another_redis(redis_server: RedisServer) -> None:
    redis_server.client().flushall()
    settings = Settings(broker_url=redis_server.url(0), result_backend_url=redis_server.url(1))
    with TestClient(create_app(ApiSettings(tokens=(TOKEN,), common=settings))) as client:
        task_id = _submit(client, 1)
        assert [task["id"] for task in _list(client)["tasks"]] == [task_id]
    with redis_server.client(1) as results:
        assert results.zcard(RECENT_KEY) == 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"cursor": "nope"}, "cursor"),
        ({"cursor": "12:"}, "cursor"),
        ({"state": "a b"}, "state"),
        ({"state": ""}, "state"),
    ],
)
def test_bad_parameters_are_422_naming_them(
    client: TestClient, params: dict[str, Any], field: str
) -> None:
    response = client.get("/v1/tasks", params=params, headers=AUTH)
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["query", field]]
