"""Port selection for `celeriac up`: defaults, nearby free ports, explicit ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from celeriac.env import ConfigError
from celeriac.local.ports import NEARBY_PORTS, choose_port, port_is_free


@pytest.fixture
def listening() -> Iterator[int]:
    """A port some other process holds (a listening socket)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def taken(*ports: int) -> object:
    return lambda port: port not in ports


def test_a_listening_port_is_not_free(listening: int) -> None:
    assert not port_is_free(listening)


def test_a_closed_port_is_free(listening: int) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert port_is_free(port)


def test_default_port_when_free() -> None:
    choice = choose_port("api", None, 8000, is_free=taken())
    assert (choice.port, choice.note) == (8000, None)


def test_taken_default_moves_to_the_next_free_port_and_says_so() -> None:
    choice = choose_port("api", None, 8000, is_free=taken(8000, 8001))
    assert choice.port == 8002
    assert choice.note == "port 8000 is taken"


def test_ports_reserved_by_other_components_are_skipped() -> None:
    choice = choose_port("worker metrics", None, 9541, reserved=[9541], is_free=taken())
    assert choice.port == 9542
    assert choice.note == "port 9541 is taken"


def test_falls_back_to_any_free_port_when_the_neighbourhood_is_full() -> None:
    everything = taken(*range(8000, 8000 + NEARBY_PORTS + 1))
    choice = choose_port("api", None, 8000, is_free=everything, any_free=lambda: 45678)
    assert choice.port == 45678
    assert choice.note == "port 8000 is taken"


def test_zero_asks_for_any_free_port_without_a_note() -> None:
    choice = choose_port("api", 0, 8000, is_free=taken(), any_free=lambda: 45678)
    assert (choice.port, choice.note) == (45678, None)


def test_an_explicit_port_is_used_as_given() -> None:
    assert choose_port("api", 8123, 8000, is_free=taken()).port == 8123


def test_an_explicit_taken_port_is_an_error_not_a_silent_swap() -> None:
    with pytest.raises(ConfigError, match="api port 8123 is taken"):
        choose_port("api", 8123, 8000, is_free=taken(8123))


def test_an_explicit_port_given_twice_is_an_error() -> None:
    with pytest.raises(ConfigError, match="already used by another component"):
        choose_port("exporter", 8000, 9540, reserved=[8000], is_free=taken())


def test_real_taken_default_is_avoided(listening: int) -> None:
    choice = choose_port("redis", None, listening)
    assert choice.port != listening
    assert port_is_free(choice.port)
    assert choice.note == f"port {listening} is taken"
