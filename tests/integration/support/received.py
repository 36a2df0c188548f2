"""A kombu consumer callback that keeps what it got, for tests that settle messages by hand."""

from __future__ import annotations

from typing import Any

from kombu import Message


class Received:
    """Messages a consumer got, not acknowledged until the test says so."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def __call__(self, body: Any, message: Message) -> None:
        self.messages.append(message)
