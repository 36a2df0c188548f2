"""kombu's ack emulation (QoS) with celeriac's per-queue index of held messages.

kombu keeps every delivered, unacknowledged message in one ``unacked`` hash for the whole
database. Counting a queue's in-flight messages from it means reading and parsing every entry
(hundreds of milliseconds of single-threaded Redis at 50,000 entries). This transport also
keeps, per queue, a sorted set of the delivery tags it holds (score: the message's ETA as a
Unix time, 0 without one), written and removed in the same MULTI/EXEC as kombu's own
``unacked`` entry. Counting is then ``ZCOUNT`` (O(log n)), exact, and never counts a message
twice: a set member is added and removed together with its ``unacked`` entry, and adding or
removing it again changes nothing.

Besides acknowledging, a worker can hand a held message back to its queue (``requeue_held``)
or set it aside among the dead letters (``dead_letter_held``), each in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from time import time
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from celeriac.broker import dead_letters
from celeriac.broker.clients import reconnect_when_refused
from celeriac.broker.keys import DELIVERIES_KEY, WAKE_TOKENS_MAX, in_flight_key, wake_key
from celeriac.broker.message import eta_score


class QoS(kombu_redis.QoS):
    """kombu's ack emulation with the per-queue index kept in the same transactions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Tags the fetch script recorded already: append keeps only the in-memory bookkeeping.
        self.recorded: set[str] = set()

    def append(self, message: Any, delivery_tag: str) -> None:
        delivery = message.delivery_info
        exchange, routing_key = delivery["exchange"], delivery["routing_key"]
        if delivery_tag in self.recorded:
            self.recorded.discard(delivery_tag)
            score = eta_score(message._raw)
            if score:
                # The script scores every message 0 (parsing ISO dates in Lua is not worth
                # it); an ETA task is scheduled, not in flight: set its real score.
                channel: Any = self.channel
                with channel.conn_or_acquire() as client:
                    client.zadd(in_flight_key(routing_key), {delivery_tag: score}, xx=True)
            virtual.QoS.append(self, message, delivery_tag)
            return
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time()})
            pipe.hset(self.unacked_key, delivery_tag, dumps([message._raw, exchange, routing_key]))
            pipe.zadd(in_flight_key(routing_key), {delivery_tag: eta_score(message._raw)})
            pipe.execute()
        # kombu's Redis QoS.append would write the entry again: only the bookkeeping here.
        virtual.QoS.append(self, message, delivery_tag)

    def restore_unacked(self, client: Any = None) -> None:
        """Put this channel's held messages back on their queues (kombu does so on close).

        When Celery closes a channel after a connection error, kombu can no longer open a
        connection for this (its transport has no connection parameters left: the
        ``'NoneType' object has no attribute 'hostname'`` that made Celery's consumer exit for
        good), or Redis is still down, or the node refuses writes (a failover under way). The
        messages stay recorded as held; their tags are handed to the next fetch on a working
        connection, which puts them back.
        """
        channel: Any = self.channel
        delivered: dict[str, Any] = self._delivered or {}
        if client is None and channel.connection.client is None:
            channel.handback.not_restored(delivered)
            delivered.clear()
            return
        try:
            with channel.conn_or_acquire(client) as conn:
                for tag in delivered:
                    # This process is alive and hands its messages back (its connection was
                    # lost, or it closes): not a lost worker, so no count towards dead letters.
                    self.restore_by_tag(tag, client=conn, lost=False)
            delivered.clear()
        except channel.connection_errors:
            channel.handback.not_restored(delivered)
            delivered.clear()
        finally:
            if getattr(channel, "_closing", False):
                # kombu restores on close after it disconnected the channel's pools: the
                # connection the restore took would be left open.
                channel._disconnect_pools()

    def ack(self, delivery_tag: str) -> None:
        self._check_open()
        self._finish(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self._check_open()
        if requeue:
            self.restore_by_tag(delivery_tag, leftmost=True)
        else:
            self._finish(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def requeue_held(self, delivery_tag: str, headers: Mapping[str, Any]) -> bool:
        """Put a held message back at the end of its queue at once, with ``headers`` added.

        For a message this worker cannot run (``celeriac.worker.unregistered``): not a lost
        delivery, so its count towards the dead-letter limit is kept as it was. The queue's
        doorbell rings, so an idle worker that can run it wakes. False when the message is no
        longer held (the visibility-timeout sweep put it back meanwhile).
        """
        channel: Any = self.channel

        def move(pipe: Any) -> bool:
            found = self._held_entry(pipe, delivery_tag)
            pipe.multi()
            if found is None:
                self._remove_from_indices(delivery_tag, pipe)
                return False
            message, exchange, routing_key = found
            message_headers = message.setdefault("headers", {})
            if isinstance(message_headers, dict):
                message_headers.update(headers)
            self._remove_from_indices(delivery_tag, pipe, queue=routing_key)
            pipe.hincrby(DELIVERIES_KEY, delivery_tag, -1)
            channel._do_restore_message(message, exchange, routing_key, pipe, leftmost=True)
            pipe.lpush(wake_key(routing_key), 1)
            pipe.ltrim(wake_key(routing_key), 0, WAKE_TOKENS_MAX - 1)
            return True

        return self._settle(delivery_tag, move)

    def dead_letter_held(
        self, delivery_tag: str, reason: str, deliveries: int, drop_headers: Iterable[str] = ()
    ) -> bool:
        """Set a held message aside among its queue's dead letters, at once, with ``reason``.

        ``drop_headers``: this worker's bookkeeping, removed so that a replay starts afresh.
        False when the message is not held (a queue consumed without acknowledgements, or the
        visibility-timeout sweep put it back meanwhile): then nothing changed.
        """

        def move(pipe: Any) -> bool:
            found = self._held_entry(pipe, delivery_tag)
            pipe.multi()
            if found is None:
                return False
            message, _exchange, routing_key = found
            headers = message.get("headers")
            if not isinstance(headers, dict):
                headers = {}
            for name in drop_headers:
                headers.pop(name, None)
            task_id = headers.get("id")
            self._remove_from_indices(delivery_tag, pipe, queue=routing_key)
            pipe.hdel(DELIVERIES_KEY, delivery_tag)
            dead_letters.record(
                pipe,
                id=task_id if isinstance(task_id, str) else delivery_tag,
                queue=routing_key,
                reason=reason,
                deliveries=deliveries,
                at=time(),
                message=dumps(message),
            )
            return True

        return self._settle(delivery_tag, move)

    def _held_entry(self, pipe: Any, delivery_tag: str) -> tuple[dict[str, Any], str, str] | None:
        """The ``unacked`` entry of a held message: (message, exchange, routing key)."""
        entry = pipe.hget(self.unacked_key, delivery_tag)
        if not entry:
            return None
        message, exchange, routing_key = loads(bytes_to_str(entry))
        return message, exchange, routing_key

    def _settle(self, delivery_tag: str, move: Callable[[Any], bool]) -> bool:
        """Run ``move`` in a transaction on ``unacked``; then this channel holds the tag no more."""
        self._check_open()
        channel: Any = self.channel
        with channel.conn_or_acquire() as client:
            moved: bool = client.transaction(move, self.unacked_key, value_from_callable=True)
        delivered: dict[str, Any] = self._delivered or {}
        if delivery_tag in delivered:
            # kombu's in-memory bookkeeping only (its Redis state was settled above).
            virtual.QoS.ack(self, delivery_tag)
        return moved

    def _finish(self, delivery_tag: str) -> None:
        """Forget a message that ran to its end (acked, or rejected for good), its count too."""
        with self.pipe_or_acquire() as pipe:
            self._remove_from_indices(delivery_tag, pipe)
            pipe.hdel(DELIVERIES_KEY, delivery_tag)
            pipe.execute()

    def _check_open(self) -> None:
        """A connection error, not kombu's AttributeError, once Celery closed the channel.

        A task that finishes after its channel was closed (a connection error meanwhile) is
        acknowledged on the dead channel; kombu then fails deep inside with an AttributeError,
        which Celery treats as fatal and the worker exits. As a connection error it is logged
        and the worker goes on; the message was handed to the next fetch on close.
        """
        channel: Any = self.channel
        if channel.connection is None or channel.connection.client is None:
            raise redis.ConnectionError("the channel was closed after a connection error")

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

    def restore_by_tag(
        self, tag: str, client: Any = None, leftmost: bool = False, lost: bool | None = None
    ) -> None:
        """Put a held message back on its queue (kombu's, with the index entry removed too).

        Runs for messages of other, dead workers too (the visibility-timeout sweep), so the
        queue comes from the ``unacked`` entry itself, not from this channel's memory.
        ``lost``: whether the delivery counts towards the dead-letter limit (its worker was
        lost); by default unless this process is requeueing on purpose (a shutdown deadline).
        """
        channel: Any = self.channel  # kombu's Redis channel; the stubs know only the base
        counts = channel.handback.counts_as_lost(lost)

        def restore_transaction(pipe: Any) -> None:
            entry = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            if not entry:
                self._remove_from_indices(tag, pipe)
                return
            message, exchange, routing_key = loads(bytes_to_str(entry))
            self._remove_from_indices(tag, pipe, queue=routing_key)
            if not counts:
                pipe.hincrby(DELIVERIES_KEY, tag, -1)
            channel._do_restore_message(message, exchange, routing_key, pipe, leftmost)

        # A node that refuses writes (a failover under way) is a connection error: a closing
        # channel then leaves the tag to the next fetch (``restore_unacked``) instead of to the
        # visibility timeout, and a fetch reconnects.
        with (
            channel.conn_or_acquire(client) as conn,
            reconnect_when_refused(conn.connection_pool.disconnect),
        ):
            conn.transaction(restore_transaction, self.unacked_key)
