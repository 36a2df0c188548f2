"""kombu's Redis transport, plus a per-queue index of the messages workers hold.

kombu keeps every delivered, unacknowledged message in one ``unacked`` hash for the whole
database. Counting a queue's in-flight messages from it means reading and parsing every entry
(hundreds of milliseconds of single-threaded Redis at 50,000 entries). This transport also
keeps, per queue, a sorted set of the delivery tags it holds (score: the message's ETA as a
Unix time, 0 without one), written and removed in the same MULTI/EXEC as kombu's own
``unacked`` entry. Counting is then ``ZCOUNT`` (O(log n)), exact, and never counts a message
twice: a set member is added and removed together with its ``unacked`` entry, and adding or
removing it again changes nothing.

Producers keep kombu's key layout: messages are published as kombu does, with one header more
(the publish time), so a plain Celery producer still works (its messages just have no known
age). Processes that consume (celeriac's workers) must use this transport, which
``celeriac.app`` configures for every component.
"""

from __future__ import annotations

from datetime import UTC, datetime
from time import time
from typing import Any, cast

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from celeriac.keys import in_flight_key

# How Celery's ``broker_transport`` names this module's transport.
TRANSPORT = "celeriac.transport:Transport"
# A message header with the Unix time it was published: the age of the oldest waiting message
# (exporter) and the time a task waited before it started (worker metrics) are read from it.
# Celery's message protocol has no publish time of its own.
PUBLISHED_AT_HEADER = "celeriac_published_at"


def eta_score(raw_message: dict[str, Any]) -> float:
    """The message's ETA as a Unix time, or 0 when it has none (runs as soon as delivered)."""
    headers = raw_message.get("headers")
    eta = headers.get("eta") if isinstance(headers, dict) else None
    parsed = parse_eta(eta)
    return 0.0 if parsed is None else parsed.timestamp()


def parse_eta(value: object) -> datetime | None:
    """An ETA header as an aware datetime; None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        eta = datetime.fromisoformat(value)
    except ValueError:
        return None
    # Celery sends UTC-aware ETAs; a naive one (enable_utc off) is read as UTC.
    return eta if eta.tzinfo is not None else eta.replace(tzinfo=UTC)


class QoS(kombu_redis.QoS):
    """kombu's ack emulation with the per-queue index kept in the same transactions."""

    def append(self, message: Any, delivery_tag: str) -> None:
        delivery = message.delivery_info
        exchange, routing_key = delivery["exchange"], delivery["routing_key"]
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time()})
            pipe.hset(self.unacked_key, delivery_tag, dumps([message._raw, exchange, routing_key]))
            pipe.zadd(in_flight_key(routing_key), {delivery_tag: eta_score(message._raw)})
            pipe.execute()
        # kombu's Redis QoS.append would write the entry again: only the bookkeeping here.
        virtual.QoS.append(self, message, delivery_tag)

    def _remove_from_indices(
        self, delivery_tag: str, pipe: Any = None, queue: str | None = None
    ) -> Any:
        with self.pipe_or_acquire(pipe) as pipe:
            pipe.zrem(self.unacked_index_key, delivery_tag)
            pipe.hdel(self.unacked_key, delivery_tag)
            queue = queue if queue is not None else self._queue_of(delivery_tag)
            if queue is not None:
                pipe.zrem(in_flight_key(queue), delivery_tag)
            return pipe

    def _queue_of(self, delivery_tag: str) -> str | None:
        """The routing key of a message this channel delivered (ack and reject know it)."""
        delivered: dict[str, Any] = self._delivered or {}
        message = delivered.get(delivery_tag)
        if message is None:
            return None
        routing_key: str = message.delivery_info["routing_key"]
        return routing_key

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        """Put a held message back on its queue (kombu's, with the index entry removed too).

        Runs for messages of other, dead workers too (the visibility-timeout sweep), so the
        queue comes from the ``unacked`` entry itself, not from this channel's memory.
        """

        def restore_transaction(pipe: Any) -> None:
            entry = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            if not entry:
                self._remove_from_indices(tag, pipe)
                return
            message, exchange, routing_key = loads(bytes_to_str(entry))
            self._remove_from_indices(tag, pipe, queue=routing_key)
            channel._do_restore_message(message, exchange, routing_key, pipe, leftmost)

        channel: Any = self.channel  # kombu's Redis channel; the stubs know only the base
        with channel.conn_or_acquire(client) as conn:
            conn.transaction(restore_transaction, self.unacked_key)


class Channel(kombu_redis.Channel):
    QoS = QoS

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        headers = message.setdefault("headers", {})
        if isinstance(headers, dict):
            # setdefault: a requeued or re-sent message keeps the time it was first published.
            headers.setdefault(PUBLISHED_AT_HEADER, time())
        super()._put(queue, message, **kwargs)

    def _restore(self, message: Any, leftmost: bool = False) -> None:
        if not self.ack_emulation:
            cast(Any, super())._restore(message, leftmost)
            return
        cast(QoS, self.qos).restore_by_tag(message.delivery_tag, leftmost=leftmost)


class Transport(kombu_redis.Transport):
    Channel = Channel
