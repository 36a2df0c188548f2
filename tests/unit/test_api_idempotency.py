"""``Idempotency-Key`` parsing: which keys are accepted, what makes two requests the same, how
the stored submission is read back, and the words the script receives."""

from __future__ import annotations

import pytest

from celeriac.api import idempotency
from celeriac.api.idempotency import First, Once, fingerprint, parse_stored, stored, valid_key
from celeriac.api.models import TaskRequest


@pytest.mark.parametrize(
    "key",
    ["a", "8e0f3c52-0c2b-4d35-9f55-2a1e4c7d9b10", "order:42.attempt_1", "YWJj+/=", "x" * 255],
)
def test_valid_keys(key: str) -> None:
    assert valid_key(key)


@pytest.mark.parametrize(
    "key", ["", " ", "a b", "tab\there", "x" * 256, "café", "semi;colon", 'q"', "new\nline", "*"]
)
def test_invalid_keys(key: str) -> None:
    assert not valid_key(key)


def _request(**fields: object) -> TaskRequest:
    return TaskRequest.model_validate({"task": "t.add", **fields})


def test_the_fingerprint_ignores_kwargs_order_and_uses_the_resolved_queue() -> None:
    one = _request(kwargs={"a": 1, "b": 2})
    other = _request(kwargs={"b": 2, "a": 1}, queue="default")
    assert fingerprint(one, "default") == fingerprint(other, "default")


@pytest.mark.parametrize(
    "fields",
    [
        {"args": [1]},
        {"kwargs": {"a": 2}},
        {"priority": 1},
        {"countdown": 1.0},
        {"eta": "2030-01-01T00:00:00Z"},
        {"task": "t.other"},
    ],
)
def test_the_fingerprint_tells_other_requests_apart(fields: dict[str, object]) -> None:
    assert fingerprint(_request(**fields), "default") != fingerprint(_request(), "default")
    assert fingerprint(_request(), "cpu") != fingerprint(_request(), "default")


def test_a_stored_submission_reads_back() -> None:
    first = First("id-1", "t.add", "default", "f" * 64)
    assert parse_stored(stored(first).encode()) == first


@pytest.mark.parametrize(
    "raw",
    [None, b"", b"not json", b"[]", b'{"id": "x"}', b'{"id":"","task":"t","queue":"q","fp":"f"}'],
)
def test_anything_else_under_a_key_is_not_a_submission(raw: bytes | None) -> None:
    assert parse_stored(raw) is None


def test_the_script_gets_each_command_as_its_length_and_words() -> None:
    once = Once("k", "fp", 60)
    first = First("id-1", "t.add", "default", "fp")
    name, args = idempotency.script_command(
        once,
        first,
        [("execute_command", ("SET", "r", "v", "EX", 5)), ("lpush", ("q", "m"))],
    )
    assert name == "execute_command"
    assert args == (
        "EVAL",
        idempotency.SCRIPT,
        1,
        idempotency.KEY_PREFIX + "k",
        stored(first),
        60,
        5,
        "SET",
        "r",
        "v",
        "EX",
        5,
        3,
        "LPUSH",
        "q",
        "m",
    )
