"""Where celeriac's prefixed client and its fetch put kombu's ``global_keyprefix``."""

from __future__ import annotations

import pytest

from celeriac.broker.fetch import fetch_command, wait_command
from celeriac.broker.keys import DEAD_LETTERS_PREFIX, IN_FLIGHT_PREFIX, UNDELIVERABLE_KEY
from celeriac.broker.prefix import PrefixedRedis, client_class, prefix_command, script_keys


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["LPUSH", "q", "m"], ["LPUSH", "p:q", "m"]),
        (["DEL", "a", "b"], ["DEL", "p:a", "p:b"]),
        (["BLPOP", "a", "b", 1], ["BLPOP", "p:a", "p:b", 1]),
        # kombu's rule for scripts: the first key only (``script_keys`` does the others).
        (["EVALSHA", "sha", 2, "a", "b", "arg"], ["EVALSHA", "sha", 2, "p:a", "b", "arg"]),
        (["PING"], ["PING"]),
    ],
)
def test_every_key_of_a_known_command_gets_the_prefix(
    command: list[object], expected: list[object]
) -> None:
    assert prefix_command("p:", command) == expected


def test_a_command_whose_keys_are_unknown_is_refused_not_sent_unprefixed() -> None:
    with pytest.raises(ValueError, match="KEYS with global_keyprefix 'p:'"):
        prefix_command("p:", ["KEYS", "*"])
    assert prefix_command("", ["KEYS", "*"]) == ["KEYS", "*"]


def test_the_fetch_prefixes_its_keys_and_the_key_names_it_gets_as_arguments() -> None:
    command = fetch_command(
        lists=["q"],
        unacked="unacked",
        unacked_index="unacked_index",
        fetch_key="f",
        doorbells=["w"],
        records="1",
        nonce="1",
        max_lost_deliveries=3,
        cached=True,
        key_prefix="p:",
    )
    assert command[2:8] == (5, "p:q", "p:unacked", "p:unacked_index", "p:f", "p:w")
    for name in (IN_FLIGHT_PREFIX, UNDELIVERABLE_KEY, DEAD_LETTERS_PREFIX):
        assert f"p:{name}" in command
        assert name not in command
    assert wait_command(["w"], 2, key_prefix="p:") == ("BLPOP", "p:w", 2)


def test_a_script_gets_its_other_keys_prefixed_by_script_keys() -> None:
    client = client_class("p:")(host="localhost")
    try:
        assert isinstance(client, PrefixedRedis)
        assert script_keys(client, ["a", "b", "c"]) == ["a", "p:b", "p:c"]
        command = prefix_command("p:", ["EVAL", "s", 3, *script_keys(client, ["a", "b", "c"])])
        assert command == ["EVAL", "s", 3, "p:a", "p:b", "p:c"]
    finally:
        client.close()
    assert script_keys(object(), ["a", "b"]) == ["a", "b"]
