"""Publishing a task without blocking the event loop.

Celery and kombu build each message exactly as ``send_task`` does (headers, routing, priority
sub-list, the celeriac transport's publish-time header); only the final Redis commands are not
sent by kombu. They are handed over through kombu's publish-batch protocol (``_put`` adds its
``LPUSH`` to a batch object when given one) and the API writes them with ``redis.asyncio``, in
the same round trip as its record of the id. A request then costs one Redis round trip, awaited
on the event loop: no thread-pool hop, no producer or connection acquired from a pool, no
Redis client built per publish. Where only the id and arguments differ from an earlier
submit of the same task to the same queue and priority, the commands come from a template
``send_task`` built then (``celeriac.api.templates``).

Only setting up the channel talks to Redis through kombu (a PING, and the binding of each
served queue, as kombu's own producer does on first use); that runs once, in a thread, with one
quick retry like a publish. Revocations (a pidbox broadcast) go through a connection of their
own, also set up once.
"""

from __future__ import annotations

import threading
from typing import Any, cast

from celery import Celery
from kombu import Connection, Producer
from kombu.common import maybe_declare

from celeriac import broker
from celeriac.api import templates
from celeriac.api.batching import Command
from celeriac.broker.prefix import prefix_command

# A template not built yet (None: none can be built for that task, queue and priority).
_UNBUILT = object()
# How the API's publisher names its transport in Celery's ``broker_transport``.
TRANSPORT = "celeriac.api.publish:Transport"

# Like a publish: one immediate retry, then fail (kombu's default would retry for seconds).
MAX_CONNECT_RETRIES = 1


class Commands:
    """kombu's publish-batch protocol: ``_put`` adds the Redis commands that deliver a message.

    With ``key_prefix`` (kombu's ``global_keyprefix``) each key gets it here, where kombu's own
    batch gets it from its prefixed pipeline: the API sends the commands with its own client.
    """

    def __init__(self, key_prefix: str = "") -> None:
        self.key_prefix = key_prefix
        self.commands: list[Command] = []

    def add(self, name: str, *args: Any) -> None:
        _name, *prefixed_args = prefix_command(self.key_prefix, [name, *args])
        self.commands.append((name, tuple(prefixed_args)))


class Channel(broker.Channel):
    """The celeriac channel; while ``collector`` is set, publishing only collects commands."""

    collector: Commands | None = None

    def basic_publish(self, message: Any, exchange: str, routing_key: str, **kwargs: Any) -> Any:
        if self.collector is not None:
            kwargs["_publish_batch"] = self.collector
        return super().basic_publish(message, exchange, routing_key, **kwargs)


class Transport(broker.Transport):
    Channel = Channel


class Publisher:
    """Builds task messages with ``app.send_task`` and returns the Redis commands to send.

    One producer and channel for the process, set up by ``connect`` (blocking: call it from a
    thread). ``commands`` does no I/O and must not run in two threads at once: the API calls it
    on the event loop only.
    """

    def __init__(self, app: Celery, queues: tuple[str, ...]) -> None:
        self.app = app
        self.queues = queues
        self._lock = threading.Lock()
        self._control_lock = threading.Lock()
        self._connection: Connection | None = None
        self._control: Connection | None = None
        self._producer: Producer | None = None
        # (task, queue, priority) -> its template, or None where none can be used.
        self._templates: dict[tuple[str, Any, Any], object] = {}

    @property
    def connected(self) -> bool:
        return self._producer is not None

    def connect(self) -> None:
        with self._lock:
            if self._producer is not None:
                return
            connection = self.app.connection_for_write()
            control = self.app.connection_for_write()
            try:
                # kombu creates a channel here, which PINGs Redis.
                connection.ensure_connection(max_retries=MAX_CONNECT_RETRIES, interval_start=0)
                channel = connection.default_channel
                for name in self.queues:
                    maybe_declare(self.app.amqp.queues[name], channel)
                producer = self.app.amqp.Producer(channel, auto_declare=False)
                control.ensure_connection(max_retries=MAX_CONNECT_RETRIES, interval_start=0)
            except BaseException:
                connection.release()
                control.release()
                raise
            self._connection, self._control, self._producer = connection, control, producer

    def revoke(self, task_id: str) -> None:
        """Broadcast Celery's revoke (blocking: call it from a thread)."""
        self.connect()
        with self._control_lock:  # a kombu connection is not for two threads at once
            self.app.control.revoke(task_id, connection=self._control)

    def commands(self, name: str, **options: Any) -> list[Command]:
        """The Redis commands that publish the task, as ``send_task`` would send them.

        From a template when nothing but the id and arguments varies (``templates``).
        """
        if not templates.usable(self.app, options):
            return self._send(name, **options)
        key = (name, options.get("queue"), options.get("priority"))
        template = self._templates.get(key, _UNBUILT)
        if template is _UNBUILT:
            probe = {**options, "args": [], "kwargs": {}, "task_id": templates.PROBE_ID}
            if len(self._templates) >= templates.MAX_TEMPLATES:
                self._templates.clear()
            template = self._templates[key] = templates.build(self.app, self._send(name, **probe))
        if template is None:
            return self._send(name, **options)
        return cast(templates.Template, template).fill(
            options["task_id"], options.get("args") or [], options.get("kwargs") or {}
        )

    def _send(self, name: str, **options: Any) -> list[Command]:
        """The Redis commands ``send_task`` produces for the task (no I/O)."""
        producer = self._producer
        if producer is None:
            raise RuntimeError("Publisher.connect() first")
        channel = cast(Channel, producer.channel)
        collector = channel.collector = Commands(channel.global_keyprefix)
        try:
            # The queues were declared by ``connect``; the message goes to the anonymous
            # exchange, routed by queue name.
            self.app.send_task(name, producer=producer, declare=[], **options)
        finally:
            channel.collector = None
        if not collector.commands:
            raise RuntimeError(f"kombu produced no Redis command for task {name!r}")
        return collector.commands

    def close(self) -> None:
        with self._lock:
            for connection in (self._connection, self._control):
                if connection is not None:
                    connection.release()
            self._connection = self._control = None
            self._producer = None
