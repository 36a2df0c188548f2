"""The API's message templates (``celeriac.api.templates``) against ``send_task`` itself.

A filled template must be the message ``send_task`` builds for the same request, field for
field, except what is new for every message anyway: kombu's delivery tag (a fresh uuid4) and
the transport's publish time. Real Redis: the publisher's channel is set up as the API's is.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import signals

from celeriac.api.batching import Command
from celeriac.api.publish import Publisher
from celeriac.api.services import publisher
from celeriac.api.templates import PROBE_ID
from celeriac.broker import PUBLISHED_AT_PROPERTY
from celeriac.demo import ADD_TASK
from celeriac.settings import Settings

pytestmark = pytest.mark.integration

QUEUES = "default,reports"
RETRY = {"retry": True, "retry_policy": {"max_retries": 1}}
LONG = "x" * 5000
ARGUMENTS: list[tuple[list[Any], dict[str, Any]]] = [
    ([], {}),
    ([1, 2], {}),
    ([], {"a": 1}),
    (["é ☃ \u0000", -1.5, True, None], {"nested": {"list": [1, [2, [3, [4, [5, [6]]]]]]}}),
    ([LONG], {"long": LONG}),
    ([[[[[[[[[[1]]]]]]]]]], {}),
    ([{"k": list(range(100))}], {"n": list(range(300))}),
]


def make_publisher(url: str, **conf: Any) -> Publisher:
    settings = Settings.from_env({"CELERIAC_BROKER_URL": url, "CELERIAC_QUEUES": QUEUES})
    app = publisher(settings)
    app.conf.update(conf)
    sender = Publisher(app, settings.served_queues)
    sender.connect()
    return sender


@pytest.fixture
def sender(redis_url: str) -> Iterator[Publisher]:
    made = make_publisher(redis_url)
    yield made
    made.close()


def message(commands: list[Command]) -> dict[str, Any]:
    """The message of ``commands`` with its per-message fields checked and taken out."""
    name, (key, payload) = commands[0]
    assert name == "lpush"
    decoded = json.loads(payload)
    tag = decoded["properties"].pop("delivery_tag")
    assert uuid.UUID(tag).version == 4
    assert isinstance(decoded["properties"].pop(PUBLISHED_AT_PROPERTY), float)
    decoded["body"] = json.loads(base64.b64decode(decoded["body"]))
    decoded["list"] = key
    decoded["rest"] = commands[1:]
    return decoded


@pytest.mark.parametrize(("args", "kwargs"), ARGUMENTS)
@pytest.mark.parametrize(("queue", "priority"), [("default", None), ("reports", 0), ("default", 7)])
def test_a_filled_template_is_the_message_send_task_builds(
    sender: Publisher, args: list[Any], kwargs: dict[str, Any], queue: str, priority: int | None
) -> None:
    options = {"queue": queue, "priority": priority, "countdown": None, "eta": None, **RETRY}
    sender.commands(ADD_TASK, args=[], kwargs={}, task_id=str(uuid.uuid4()), **options)
    task_id = str(uuid.uuid4())
    from_template = sender.commands(ADD_TASK, args=args, kwargs=kwargs, task_id=task_id, **options)
    assert sender._templates, "the template was built"
    from_send_task = sender._send(ADD_TASK, args=args, kwargs=kwargs, task_id=task_id, **options)
    assert message(from_template) == message(from_send_task)
    assert PROBE_ID not in json.dumps(from_template[0][1][1])


def test_a_countdown_is_published_by_send_task(sender: Publisher) -> None:
    commands = sender.commands(
        ADD_TASK, args=[1], kwargs={}, task_id="t-1", queue="default", countdown=30, **RETRY
    )
    assert json.loads(commands[0][1][1])["headers"]["eta"] is not None
    assert not sender._templates


def test_publish_signal_receivers_see_every_message(sender: Publisher) -> None:
    seen: list[str] = []

    def receiver(headers: dict[str, Any], **_: Any) -> None:
        seen.append(headers["id"])

    signals.before_task_publish.connect(receiver, weak=False)
    try:
        for number in range(3):
            sender.commands(
                ADD_TASK, args=[number], kwargs={}, task_id=f"s-{number}", queue="default", **RETRY
            )
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert seen == ["s-0", "s-1", "s-2"]


def test_task_routes_see_every_message_arguments(redis_url: str) -> None:
    routed: list[Any] = []

    def route(name: str, args: Any, kwargs: Any, options: Any, **_: Any) -> dict[str, Any]:
        routed.append(args)
        return {"priority": 3}

    sender = make_publisher(redis_url, task_routes=(route,))
    try:
        for number in range(3):
            sender.commands(
                ADD_TASK, args=[number], kwargs={}, task_id=f"r-{number}", queue="default", **RETRY
            )
    finally:
        sender.close()
    assert routed == [[0], [1], [2]]
