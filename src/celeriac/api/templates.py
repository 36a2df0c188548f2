"""Task messages from a template: ``send_task`` runs once per task, queue and priority.

Building a message with ``send_task`` (routing, options, Celery's protocol 2 headers, kombu's
producer and channel) costs about 100 µs of Python, most of a submit's own work. Of that message
only a few fields depend on the request: the task id (``id``, ``root_id``, ``correlation_id``),
the arguments (the body, ``argsrepr``, ``kwargsrepr``), kombu's ``delivery_tag`` and the
transport's publish time. So the first submit of a (task, queue, priority) runs ``send_task``
with a probe id and keeps the Redis commands it produced; later ones copy that message and set
those fields exactly as Celery and kombu set them (``saferepr`` with Celery's bounds, the body
as the JSON of ``[args, kwargs, embed]`` in base64, a fresh uuid4 tag, ``time()``): about 30 µs.
``tests/integration/test_api_templates.py`` checks a filled template against ``send_task``'s
message for many arguments.

A template is used only where nothing else can vary: no countdown or ETA and no expiry (they
depend on the clock), no ``task_routes`` (a router may look at the arguments), no receivers of
the publish signals (they must see every message), and no task-sent events. Anything else is
published by ``send_task`` itself.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from time import time
from typing import Any

from celery import Celery, signals
from celery.utils.saferepr import saferepr
from kombu.utils.json import dumps, loads

from celeriac.api.batching import Command
from celeriac.broker import PUBLISHED_AT_PROPERTY

# The id a template is built with; a filled template never contains it.
PROBE_ID = "celeriac-template-probe"
# Templates kept at most (tasks x queues x priorities in use); all are dropped past it.
MAX_TEMPLATES = 1024
PUBLISH_SIGNALS = (signals.before_task_publish, signals.after_task_publish)


@dataclass(frozen=True)
class Template:
    """The commands ``send_task`` produced for the probe; ``message`` is the first's payload."""

    commands: list[Command]
    message: dict[str, Any]
    embed: Any
    argsrepr_maxsize: int
    kwargsrepr_maxsize: int
    repr_maxlevels: int

    def fill(self, task_id: str, args: list[Any], kwargs: dict[str, Any]) -> list[Command]:
        """The commands publishing this task with ``task_id``, ``args`` and ``kwargs``."""
        # As Celery's ``as_task_v2``: no arguments are an empty tuple, no keywords a dict.
        args_or_empty: list[Any] | tuple[()] = args or ()
        kwargs = kwargs or {}
        message = self.message
        headers = {
            **message["headers"],
            "id": task_id,
            "root_id": task_id,
            "argsrepr": saferepr(
                args_or_empty, self.argsrepr_maxsize, maxlevels=self.repr_maxlevels
            ),
            "kwargsrepr": saferepr(kwargs, self.kwargsrepr_maxsize, maxlevels=self.repr_maxlevels),
        }
        properties = {
            **message["properties"],
            "correlation_id": task_id,
            "delivery_tag": str(uuid.uuid4()),
            PUBLISHED_AT_PROPERTY: time(),
        }
        body = dumps([args_or_empty, kwargs, self.embed]).encode("utf-8")
        filled = {
            **message,
            "body": base64.b64encode(body).decode("ascii"),
            "headers": headers,
            "properties": properties,
        }
        (name, (key, _)), *rest = self.commands
        return [(name, (key, dumps(filled))), *rest]


def usable(app: Celery, options: dict[str, Any]) -> bool:
    """Whether a submit with these ``send_task`` options may be published from a template."""
    return (
        options.get("countdown") is None
        and options.get("eta") is None
        and not app.conf.task_routes
        and not app.conf.task_send_sent_event
        and not any(signal.receivers for signal in PUBLISH_SIGNALS)
    )


def build(app: Celery, commands: list[Command]) -> Template | None:
    """The template of the probe's ``commands``; None when they are not what a template fills
    (another shape, or a message whose fields depend on the clock)."""
    if not commands or commands[0][0] != "lpush" or len(commands[0][1]) != 2:
        return None
    try:
        message = loads(commands[0][1][1])
        headers, properties = message["headers"], message["properties"]
        args, kwargs, embed = loads(base64.b64decode(message["body"]))
    except (KeyError, TypeError, ValueError):
        return None
    probe_fields = (headers.get("id"), headers.get("root_id"), properties.get("correlation_id"))
    if (
        probe_fields != (PROBE_ID,) * 3
        or (args, kwargs) != ([], {})
        or properties.get("body_encoding") != "base64"
        or headers.get("eta") is not None
        or headers.get("expires") is not None
        or "expiration" in properties
    ):
        return None
    return Template(
        commands=commands,
        message=message,
        embed=embed,
        argsrepr_maxsize=app.amqp.argsrepr_maxsize,
        kwargsrepr_maxsize=app.amqp.kwargsrepr_maxsize,
        repr_maxlevels=app.conf.task_repr_maxlevels,
    )
