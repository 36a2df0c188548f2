"""kombu's Redis transport with an atomic fetch and a per-queue index of held messages.

Atomic fetch. kombu's worker takes a message with BRPOP and records it in the ``unacked`` hash
in a second round trip; if Redis dies or the connection drops between the two, the message
exists only in the worker's memory and is lost with it (a SIGKILLed worker loses it too). Here a
worker fetches with one server-side script that pops the message and records it (``unacked``
entry, its index score, the queue's in-flight set) in one step: at every moment a message is
either on its queue or recorded as held, so a held message that nobody runs is restored by the
visibility-timeout sweep. When the reply of a fetch is lost (the connection dropped after the
script ran), the worker asks Redis on the next connection which message that fetch took (the
script leaves its tag under a per-channel key) and puts it back on its queue at once.

Waiting. A script cannot block, so an idle worker waits with BLPOP on a per-queue doorbell list
(``celeriac:wake:<queue>``) for at most ``fetch_wait_seconds`` between fetches. celeriac's
producers push a doorbell token with every message, so idle workers wake at once; a message
from a plain Celery producer (no token) is found by the next fetch, within the wait. A fetch
that finds every list empty deletes the doorbells: their messages are taken already.

kombu keeps every delivered, unacknowledged message in one ``unacked`` hash for the whole
database. Counting a queue's in-flight messages from it means reading and parsing every entry
(hundreds of milliseconds of single-threaded Redis at 50,000 entries). This transport also
keeps, per queue, a sorted set of the delivery tags it holds (score: the message's ETA as a
Unix time, 0 without one), written and removed in the same MULTI/EXEC as kombu's own
``unacked`` entry. Counting is then ``ZCOUNT`` (O(log n)), exact, and never counts a message
twice: a set member is added and removed together with its ``unacked`` entry, and adding or
removing it again changes nothing.

Fanout (pub/sub) reads. redis-py 8's ``PubSub.parse_response``, kombu's read of a fanout
message, blocks with no timeout, and when the connection drops it reconnects and reads again
inside the same call. The new connection is not subscribed (kombu sets the pub/sub's connection
itself, so redis-py's resubscribe callback never runs), nothing ever arrives on it, and the
worker's event loop waits in that read for ever: connected, heartbeat alive, taking nothing
(Celery's remote-control mailbox is such a fanout queue, so every worker has one). Here that
read takes the one reply the event loop found, within the socket timeout, and a dropped
connection is a connection error, as kombu expects: Celery reconnects.

Half-open connections. A connection whose peer is gone without a FIN or RST (an expired NAT or
conntrack entry, a load balancer that cut an idle flow, a network blip) accepts writes and never
delivers a reply; the event loop waits on no socket timeout, so kombu's own check drops a BRPOP
only once its reply is ``brpop_timeout + health_check_interval`` overdue and a pub/sub after two
missed pings (20-30 s with celeriac's settings), and when it dropped a fetch whose script had
run, that message stayed held until the visibility timeout. Here the poller (``Poller``) checks
every second: a fetch whose reply is overdue by the socket timeout, and a fanout connection
whose ping went unanswered for the socket timeout, are dropped; the next poll reconnects and
sends the fetch (or subscribes) again, and a fetch dropped with its reply unread is a lost fetch
(recovered as above). Commands on other connections (acks, publishes, the result backend) are
bounded by the socket timeout and retried on a new connection by redis-py.

Producers keep kombu's key layout: messages are published as kombu does, with one property
more (the publish time; a property, not a header, so consumers see exactly the headers that were
sent), so a plain Celery producer still works (its messages just have no known age). Processes
that consume (celeriac's workers) must use this transport, which
``celeriac.app`` configures for every component.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from time import monotonic, time
from typing import Any, cast

import redis
import redis.client
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from kombu.utils.objects import cached_property

from celeriac.broker import dead_letters
from celeriac.broker.clients import reconnect_when_refused
from celeriac.broker.keys import (
    ALL_DEAD_LETTERS_KEY,
    DEAD_LETTER_ENTRIES_KEY,
    DEAD_LETTERS_PREFIX,
    DELIVERIES_KEY,
    FETCH_PREFIX,
    IN_FLIGHT_PREFIX,
    UNDELIVERABLE_KEY,
    WRITE_PROBE_KEY,
    in_flight_key,
    wake_key,
)
from celeriac.settings import DEFAULT_MAX_LOST_DELIVERIES

log = logging.getLogger(__name__)
# kombu's poller clock and socket check, which its type stubs do not declare.
_kombu_redis: Any = kombu_redis

# How Celery's ``broker_transport`` names this module's transport.
TRANSPORT = "celeriac.broker.transport:Transport"
# A message property with the Unix time it was published: the age of the oldest waiting message
# (exporter) and the time a task waited before it started (worker metrics) are read from it.
# Celery's message protocol has no publish time of its own. A property, not a header: consumers
# (Celery's tasks, kombu's message.headers) see exactly the headers the producer sent.
PUBLISHED_AT_PROPERTY = "celeriac_published_at"
# Doorbell tokens kept per queue: enough to wake every idle worker of a burst, bounded so that
# tokens piling up while every worker is busy cost little.
WAKE_TOKENS_MAX = 1000
# How often the poller looks for half-open fetch and fanout connections (``Poller``).
CONNECTION_CHECK_SECONDS = 1.0
# How long Redis keeps a channel's last fetched tag: longer than any reconnect takes.
FETCH_KEY_TTL_SECONDS = 3600

# KEYS: the lists in fetch order (n of them), unacked, unacked_index, this channel's fetch key,
# then the doorbells of the queues fetched from. ARGV: n, now, the in-flight key prefix, this
# fetch's nonce, the fetch key's TTL, the key for messages that are not kombu's, one character
# per list ("1" to record its message as held, "0" for a list consumed without acknowledgements,
# Celery's reply queues, whose message is only popped, as kombu does), the most deliveries a
# message may have that did not finish (0: no limit), the deliveries hash, the dead-letter key
# prefix, the dead-letter entries hash and the set of all dead letters.
# A message over its limit (it took its worker down each time: out of memory, a segfault) goes
# to its queue's dead letters instead of running again.
# Pops the first message and records it as held in the same step (kombu's unacked entry
# ``[message, exchange, routing_key]``, its index score, celeriac's in-flight set), so it is
# never only in a worker's memory. Finding nothing, it deletes the doorbells: their messages
# have been taken.
FETCH_SCRIPT = """
local n = tonumber(ARGV[1])
for i = 1, n do
  local item = redis.call('RPOP', KEYS[i])
  if item and string.sub(ARGV[7], i, i) == '0' then
    return {KEYS[i], item}
  end
  while item do
    local ok, message = pcall(cjson.decode, item)
    local tag, exchange, routing_key
    if ok and type(message) == 'table' and type(message['properties']) == 'table' then
      local properties = message['properties']
      tag = properties['delivery_tag']
      local info = properties['delivery_info']
      if type(info) == 'table' then
        exchange = info['exchange']
        routing_key = info['routing_key']
      end
    end
    local valid = type(tag) == 'string' and type(exchange) == 'string'
      and type(routing_key) == 'string'
    local deliveries = 0
    if valid then
      deliveries = redis.call('HINCRBY', ARGV[9], tag, 1)
    end
    local limit = tonumber(ARGV[8])
    if valid and limit > 0 and deliveries > limit then
      local id = tag
      if type(message['headers']) == 'table' and type(message['headers']['id']) == 'string' then
        id = message['headers']['id']
      end
      redis.call('HSET', ARGV[11], id, cjson.encode({
        id = id, queue = routing_key, deliveries = deliveries - 1, at = tonumber(ARGV[2]),
        reason = 'its worker was lost on each of ' .. (deliveries - 1) .. ' deliveries',
        message = item}))
      redis.call('ZADD', ARGV[10] .. routing_key, ARGV[2], id)
      redis.call('ZADD', ARGV[12], ARGV[2], id)
      redis.call('HDEL', ARGV[9], tag)
      redis.call('ZREM', KEYS[n + 2], tag)
      redis.call('HDEL', KEYS[n + 1], tag)
      redis.call('ZREM', ARGV[3] .. routing_key, tag)
      item = redis.call('RPOP', KEYS[i])
    elseif valid then
      redis.call('HSET', KEYS[n + 1], tag,
        '[' .. item .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']')
      redis.call('ZADD', KEYS[n + 2], ARGV[2], tag)
      redis.call('ZADD', ARGV[3] .. routing_key, 0, tag)
      redis.call('SET', KEYS[n + 3], ARGV[4] .. ':' .. tag, 'EX', ARGV[5])
      return {KEYS[i], item}
    else
      redis.call('LPUSH', ARGV[6], item)
      item = redis.call('RPOP', KEYS[i])
    end
  end
end
for i = n + 4, #KEYS do
  redis.call('DEL', KEYS[i])
end
return false
"""

# (fetch key, nonce) of fetches whose reply was lost with the connection, in this process;
# the next fetch on a working connection puts their message back (Celery replaces the channel
# after a connection error, so the channel itself cannot keep this).
_lost_fetches: list[tuple[str, str]] = []
# Set by the worker's shutdown when it requeues at its deadline: those deliveries were cut
# short on purpose and do not count towards the dead-letter limit.
deliberate_requeues = False
# Tags of held messages a closing channel could not put back (its connection was gone); the
# next fetch on a working connection does, instead of the visibility timeout an hour later.
_unrestored: list[str] = []


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
            _unrestored.extend(delivered)
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
            _unrestored.extend(delivered)
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
        counts = not deliberate_requeues if lost is None else lost

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

        channel: Any = self.channel  # kombu's Redis channel; the stubs know only the base
        # A node that refuses writes (a failover under way) is a connection error: a closing
        # channel then leaves the tag to the next fetch (``restore_unacked``) instead of to the
        # visibility timeout, and a fetch reconnects.
        with (
            channel.conn_or_acquire(client) as conn,
            reconnect_when_refused(conn.connection_pool.disconnect),
        ):
            conn.transaction(restore_transaction, self.unacked_key)


class ListenPubSub(redis.client.PubSub):
    """kombu's fanout connection: a read takes a reply the event loop found, never waits on.

    redis-py's own ``parse_response`` (see the module doc) blocks without a timeout and, on a
    connection error, reconnects and reads again: the event loop would wait for ever on an
    unsubscribed connection. Here the read is one reply within the socket timeout, and a
    dropped connection raises, so kombu clears its LISTEN state and Celery reconnects.
    """

    # Since when a ping of ``ping`` waits for its reply (None: nothing unanswered).
    awaiting_reply_since: float | None = None

    def ping_for_health(self) -> None:
        """Send a health-check PING; any reply read afterwards proves the connection alive.

        redis-py's ``check_health`` pings at most every ``health_check_interval`` and kombu
        drops the connection after two unanswered ones; ``Poller`` pings every check instead,
        so a half-open connection shows within the socket timeout.
        """
        connection = self.connection
        if connection is None or connection._sock is None:
            return
        if self.awaiting_reply_since is None:
            self.awaiting_reply_since = monotonic()
        connection.send_command("PING", self.HEALTH_CHECK_MESSAGE, check_health=False)
        self.health_check_response_counter += 1

    def parse_response(self, block: bool = True, timeout: float = 0) -> Any:
        connection = self.connection
        if connection is None or connection._sock is None:
            # Never connect here: a new socket would be behind the poller's back, unsubscribed.
            raise redis.ConnectionError("the pub/sub connection was closed")
        self.check_health()
        # The connection's socket timeout bounds the read; on an error it disconnects (kombu's
        # poller forgets the socket) and raises.
        response = connection.read_response(push_request=True)
        self.awaiting_reply_since = None
        if self.is_health_check_response(response):
            self.health_check_response_counter -= 1
            return None
        return response


def refuse_global_keyprefix(transport_options: Mapping[str, Any]) -> None:
    """Refuse kombu's ``global_keyprefix`` when connecting (README "Sharing one Redis").

    celeriac's fetch script, doorbells, in-flight index and dead letters, and every reader of
    them (exporter, API, inspect), use unprefixed keys; with a prefix, fanout (Celery's
    remote control) would also subscribe to channels nobody publishes to. Refused at once,
    not at the first fetch or silently.
    """
    if transport_options.get("global_keyprefix"):
        raise NotImplementedError(
            "broker_transport_options['global_keyprefix'] is not supported by celeriac's "
            "transport: use a Redis database (or server) of its own per application instead"
        )


class Channel(kombu_redis.Channel):
    QoS = QoS
    # Deliveries that did not finish (the worker was lost) before a message is dead-lettered;
    # 0: never. Set from the transport option of the same name (celeriac.app).
    max_lost_deliveries = DEFAULT_MAX_LOST_DELIVERIES
    from_transport_options = (*kombu_redis.Channel.from_transport_options, "max_lost_deliveries")
    # kombu's Redis channel has these; its type stubs do not declare them.
    _q_for_pri: Any
    _expires: dict[str, int]
    _queue_cycle: Any
    _flush_brpop_reauth: Any
    _create_client: Any
    _disconnect_pools: Any
    _pool: Any
    connection_errors: tuple[type[BaseException], ...]

    def __init__(self, connection: Any, *args: Any, **kwargs: Any) -> None:
        refuse_global_keyprefix(connection.client.transport_options)
        super().__init__(connection, *args, **kwargs)
        self._fetch_key = f"{FETCH_PREFIX}{uuid.uuid4().hex}"
        self._fetch_nonces = itertools.count(1)
        self._fetch_nonce = ""
        # After a fetch that found nothing, the next one first waits on the doorbells.
        self._fetch_waits = False
        self._fetch_replies = 0
        # Queues consumed without acknowledgements: their messages are never recorded as held.
        self._no_ack_queues: set[str] = set()
        # Last: a refusal disconnects, and the disconnect handler reads the state above.
        self._check_writable()

    def _check_writable(self) -> None:
        """Connect only to a node that accepts writes (kombu's channel checks with a PING).

        A master without a replica in sync (``NOREPLICAS``, while a failover completes) or a
        replica (``READONLY``) answers PING but refuses every fetch, acknowledgement and
        publish. Refused here, connecting fails, so Celery's consumer retries the connection
        with its backoff; connected, its first fetch fails at once, the consumer restarts
        without a pause and spins (``RestartFreqExceeded``).
        """
        try:
            with reconnect_when_refused(self._disconnect_pools):
                self.client.delete(WRITE_PROBE_KEY)
        except BaseException:
            # As kombu's channel does when its PING fails; it also registered itself with the
            # poller after the PING: undo that.
            self._disconnect_pools()
            transport: Any = self.connection
            transport.cycle.discard(self)
            raise

    @cached_property
    def subclient(self) -> ListenPubSub:
        """The pub/sub connection of fanout queues (kombu's), read as ``ListenPubSub`` reads."""
        client = self._create_client(asynchronous=True)
        return ListenPubSub(
            client.connection_pool, event_dispatcher=getattr(client, "_event_dispatcher", None)
        )

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        properties = message.setdefault("properties", {})
        if isinstance(properties, dict):
            # setdefault: a requeued or re-sent message keeps the time it was first published.
            properties.setdefault(PUBLISHED_AT_PROPERTY, time())
        batch = kwargs.get("_publish_batch")
        if batch is not None:
            super()._put(queue, message, **kwargs)
            batch.add("lpush", wake_key(queue), 1)
            batch.add("ltrim", wake_key(queue), 0, WAKE_TOKENS_MAX - 1)
            return
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            pipe.lpush(key, dumps(message))
            if self._expires and queue in self._expires:
                for step in self.priority_steps:
                    pipe.pexpire(self._q_for_pri(queue, step), self._expires[queue])
            # The doorbell is a hint, not part of the message: no transaction needed.
            pipe.lpush(wake_key(queue), 1)
            pipe.ltrim(wake_key(queue), 0, WAKE_TOKENS_MAX - 1)
            pipe.execute()

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Send a fetch (after a wait on the doorbells when the last one found nothing)."""
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        self._recover_lost_fetches()
        pairs = [
            (queue, self._q_for_pri(queue, step))
            for step in self.priority_steps
            for queue in queues
        ]
        keys = [key for _queue, key in pairs]
        records = "".join("0" if queue in self._no_ack_queues else "1" for queue, _key in pairs)
        doorbells = [wake_key(queue) for queue in queues]
        self._fetch_nonce = f"{next(self._fetch_nonces)}"
        commands: list[tuple[Any, ...]] = []
        if self._fetch_waits:
            wait = self.brpop_timeout if timeout is None else timeout
            commands.append(("BLPOP", *doorbells, wait or 0))
        commands.append(
            (
                "EVAL",
                FETCH_SCRIPT,
                len(keys) + 3 + len(doorbells),
                *keys,
                self.unacked_key,
                self.unacked_index_key,
                self._fetch_key,
                *doorbells,
                len(keys),
                time(),
                IN_FLIGHT_PREFIX,
                self._fetch_nonce,
                FETCH_KEY_TTL_SECONDS,
                UNDELIVERABLE_KEY,
                records,
                self.max_lost_deliveries,
                DELIVERIES_KEY,
                DEAD_LETTERS_PREFIX,
                DEAD_LETTER_ENTRIES_KEY,
                ALL_DEAD_LETTERS_KEY,
            )
        )
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = monotonic()
        connection.send_packed_command(connection.pack_commands(commands))
        self._fetch_replies = len(commands)

    def _brpop_read(self, **options: Any) -> bool:
        try:
            connection = self.client.connection
            # Not the master (a replica, or cut off from its replicas) refuses the first write
            # of the script, so nothing was taken: reconnect, without a lost fetch to recover.
            with reconnect_when_refused(connection.disconnect):
                try:
                    if self._fetch_replies == 2:
                        self.client.parse_response(connection, "BLPOP", **options)
                    reply = self.client.parse_response(connection, "EVAL", **options)
                except self.connection_errors:
                    # A lost fetch, recorded by _on_connection_disconnect.
                    connection.disconnect()
                    raise
            if not reply:
                self._fetch_waits = True
                raise virtual.Empty()
            self._fetch_waits = False
            list_key, item = reply
            queue = bytes_to_str(list_key).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            payload = loads(bytes_to_str(item))
            if queue not in self._no_ack_queues:
                cast(QoS, self.qos).recorded.add(payload["properties"]["delivery_tag"])
            self.connection._deliver(payload, queue)
            return True
        finally:
            self._in_poll = None
            self._fetch_replies = 0
            self._flush_brpop_reauth()

    def drop_half_open(self, connection: Any) -> None:
        """Drop ``connection`` (half-open: ``Poller``) and this channel's idle pooled ones.

        Those went the same way (the same NAT entry, balancer or link) and are most likely
        half-open too: each would cost the next ack, restore or recovery a socket timeout
        before redis-py retries it on a new connection. Connections are made again on demand.
        """
        connection.disconnect()
        if self._pool is not None:
            self._pool.disconnect(inuse_connections=False)

    def _on_connection_disconnect(self, connection: Any) -> None:
        """Whoever drops the fetch's connection with its reply unread (a read error, the
        poller's check of a half-open connection, a refused write, a close), the script may
        have taken a message: the next fetch on a working connection finds out (module doc)."""
        if self._fetch_replies and self._in_poll is connection:
            _lost_fetches.append((self._fetch_key, self._fetch_nonce))
            self._fetch_replies = 0
        cast(Any, super())._on_connection_disconnect(connection)

    def _recover_lost_fetches(self) -> None:
        """Put back on their queues the messages of lost fetch replies and closed channels."""
        qos = cast(QoS, self.qos)
        while _unrestored:
            tag = _unrestored[0]
            with self.conn_or_acquire() as client:
                # Only a message still held is put back (restore_by_tag checks unacked); handed
                # back by a live process, so not a lost delivery (restore_unacked).
                qos.restore_by_tag(tag, client=client, lost=False)
            _unrestored.pop(0)
        while _lost_fetches:
            fetch_key, nonce = _lost_fetches[0]
            with self.conn_or_acquire() as client:
                value = client.get(fetch_key)
                if value is not None:
                    taken_by, _, tag = bytes_to_str(value).partition(":")
                    if taken_by == nonce:
                        # Never ran: not a lost-worker delivery.
                        qos.restore_by_tag(tag, client=client, lost=False)
                        log.warning("requeued message %s: its fetch's reply was lost", tag)
            _lost_fetches.pop(0)

    def _restore(self, message: Any, leftmost: bool = False) -> None:
        if not self.ack_emulation:
            cast(Any, super())._restore(message, leftmost)
            return
        cast(QoS, self.qos).restore_by_tag(message.delivery_tag, leftmost=leftmost)


class Poller(kombu_redis.MultiChannelPoller):
    """kombu's poller, dropping half-open fetch and fanout connections within the socket
    timeout (module doc) instead of kombu's ``health_check_interval`` multiples.

    Both checks run every ``CONNECTION_CHECK_SECONDS`` from the event loop (``Transport``),
    from kombu's own timers, and (the fetch's) from ``drain_events`` when nothing arrived. A
    socket with a reply waiting to be read is alive, however late the loop reads it.
    """

    _channels: set[Any]

    def maybe_check_brpop_health(self) -> None:
        # kombu's poller clock (its own check reads this one too).
        now = _kombu_redis.monotonic()
        for channel in self._channels:
            connection = channel._in_poll
            sent_at = getattr(channel, "_brpop_sent_at", None)
            timeout = _reply_timeout(channel)
            # A wait of 0 blocks without end on the server: no reply is ever overdue.
            if not connection or sent_at is None or not timeout or not channel.brpop_timeout:
                continue
            # A fetch that waits on the doorbells first replies within that wait.
            waited = now - sent_at
            if waited < channel.brpop_timeout + timeout:
                continue
            sock = getattr(connection, "_sock", None)
            if sock is None or _kombu_redis._socket_readable(sock):
                continue
            log.warning(
                "Redis fetch got no reply for %.0f s (socket timeout %g s): the connection is "
                "half-open; dropping it and fetching on a new one",
                waited,
                timeout,
            )
            channel.drop_half_open(connection)

    def maybe_check_subclient_health(self) -> None:
        now = _kombu_redis.monotonic()
        for channel in self._channels:
            # Only a fanout connection that exists and is subscribed (kombu's LISTEN state).
            client = channel.__dict__.get("subclient")
            timeout = _reply_timeout(channel)
            if not isinstance(client, ListenPubSub) or not channel._in_listen or not timeout:
                continue
            connection = client.connection
            sock = getattr(connection, "_sock", None)
            if sock is None:
                continue
            try:
                since = client.awaiting_reply_since
                if since is None:
                    client.ping_for_health()
                    continue
                if now - since < timeout or _kombu_redis._socket_readable(sock):
                    continue
                log.warning(
                    "Redis pub/sub connection: no reply to a ping for %.0f s (socket timeout "
                    "%g s): the connection is half-open; dropping it and subscribing on a new one",
                    now - since,
                    timeout,
                )
            except channel.connection_errors:
                pass  # the write failed: the connection is dead already, drop it as well
            client.awaiting_reply_since = None
            client.health_check_response_counter = 0
            channel.drop_half_open(connection)

    def check_connections(self) -> None:
        self.maybe_check_brpop_health()
        self.maybe_check_subclient_health()


def _reply_timeout(channel: Any) -> float:
    """How long a live Redis may take to answer: the socket timeout (kombu's health-check
    interval without one; 0: never overdue)."""
    return float(channel.socket_timeout or channel.health_check_interval or 0)


class Transport(kombu_redis.Transport):
    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = Poller()

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        cycle = cast(Poller, self.cycle)
        # As kombu does with its timers: a reconnect registers again, never twice.
        previous = getattr(cycle, "_celeriac_check_tref", None)
        if previous is not None:
            previous.cancel()
        cycle._celeriac_check_tref = loop.call_repeatedly(  # type: ignore[attr-defined]
            CONNECTION_CHECK_SECONDS, cycle.check_connections
        )
