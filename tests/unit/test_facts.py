"""Facts written twice in Python because one import would cost too much: the copies agree."""

from __future__ import annotations

from celeriac.api.settings import DEFAULT_PORT as API_PORT
from celeriac.local.settings import DEFAULT_API_PORT


def test_the_local_stack_starts_the_api_on_the_api_default_port() -> None:
    # local.settings repeats it so that `celeriac up` need not import FastAPI.
    assert DEFAULT_API_PORT == API_PORT
