"""kombu's Redis transport with an atomic fetch and a per-queue index of held messages.

Every celeriac component uses it (``celeriac.app`` configures it; the API's publisher and the
Sentinel and ``WAIT`` variants subclass it). What it changes in kombu's, one module each:

- the fetch (``fetch``, ``fetch.lua``): one script pops a message and records it as held, so a
  dropped connection or a Redis restart never loses it; idle workers wait on doorbells;
- held messages (``qos``): a per-queue index beside kombu's ``unacked`` hash, so counting
  in-flight messages costs O(log n); requeue and dead-letter a held message in one step;
- lost replies and closed channels (``handback``): their messages go back at the next fetch;
- fanout reads (``pubsub``) and half-open connections (``poller``): a worker never waits for
  ever on a connection that is gone.

Producers keep kombu's key layout: messages are published as kombu does, with one property
more (the publish time, ``celeriac.broker.message``), so a plain Celery producer still works
(its messages just have no known age). Processes that consume (celeriac's workers) must use
this transport.
"""

from __future__ import annotations

import itertools
import uuid
from time import monotonic, time
from typing import Any, cast

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from kombu.utils.objects import cached_property

from celeriac.broker.clients import reconnect_when_refused
from celeriac.broker.fetch import fetch_command, wait_command
from celeriac.broker.handback import Handback
from celeriac.broker.keys import FETCH_PREFIX, WAKE_TOKENS_MAX, WRITE_PROBE_KEY, wake_key
from celeriac.broker.message import PUBLISHED_AT_PROPERTY
from celeriac.broker.poller import CONNECTION_CHECK_SECONDS, Poller
from celeriac.broker.prefix import PrefixedListenPubSub, client_class
from celeriac.broker.pubsub import ListenPubSub
from celeriac.broker.qos import QoS
from celeriac.settings import DEFAULT_MAX_LOST_DELIVERIES

# How Celery's ``broker_transport`` names this module's transport.
TRANSPORT = "celeriac.broker.transport:Transport"


class Channel(kombu_redis.Channel):
    QoS = QoS
    # What this process must still put back on its queues: one for every channel of the process
    # (Celery replaces channels after a connection error; ``celeriac.broker.handback``).
    handback = Handback()
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
    global_keyprefix: str
    connection_errors: tuple[type[BaseException], ...]

    def __init__(self, connection: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(connection, *args, **kwargs)
        self._fetch_key = f"{FETCH_PREFIX}{uuid.uuid4().hex}"
        self._fetch_nonces = itertools.count(1)
        self._fetch_nonce = ""
        # After a fetch that found nothing, the next one first waits on the doorbells.
        self._fetch_waits = False
        self._fetch_replies = 0
        # Whether the node has the fetch script: a channel's first fetch sends it whole, later
        # ones its digest; a node that lost it answers NOSCRIPT, and the next fetch sends it.
        self._fetch_script_cached = False
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

    def _get_client(self) -> Any:
        """With ``global_keyprefix``, a client that prefixes every command celeriac sends as
        kombu's prefixes its own (``celeriac.broker.prefix``)."""
        cast(Any, super())._get_client()  # kombu's check of the redis-py version
        return client_class(self.global_keyprefix)

    @cached_property
    def subclient(self) -> ListenPubSub:
        """The pub/sub connection of fanout queues (kombu's), read as ``ListenPubSub`` reads;
        on prefixed channels with ``global_keyprefix``, where kombu publishes."""
        client = self._create_client(asynchronous=True)
        dispatcher = getattr(client, "_event_dispatcher", None)
        if self.global_keyprefix:
            return PrefixedListenPubSub(
                client.connection_pool,
                global_keyprefix=self.global_keyprefix,
                event_dispatcher=dispatcher,
            )
        return ListenPubSub(client.connection_pool, event_dispatcher=dispatcher)

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
        self.handback.put_back(self)
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
            commands.append(wait_command(doorbells, wait or 0, key_prefix=self.global_keyprefix))
        commands.append(
            fetch_command(
                lists=keys,
                unacked=self.unacked_key,
                unacked_index=self.unacked_index_key,
                fetch_key=self._fetch_key,
                doorbells=doorbells,
                records=records,
                nonce=self._fetch_nonce,
                max_lost_deliveries=self.max_lost_deliveries,
                cached=self._fetch_script_cached,
                key_prefix=self.global_keyprefix,
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
                except redis.exceptions.NoScriptError:
                    # This node does not have the script (a restart, a failover, SCRIPT FLUSH)
                    # and ran nothing: the next fetch sends it, at once, without a wait.
                    self._fetch_script_cached = False
                    self._fetch_waits = False
                    raise virtual.Empty() from None
            self._fetch_script_cached = True
            if not reply:
                self._fetch_waits = True
                raise virtual.Empty()
            self._fetch_waits = False
            list_key, item = reply
            # The script answers with the key as Redis has it, prefix included.
            key = bytes_to_str(list_key).removeprefix(self.global_keyprefix)
            queue = key.rsplit(self.sep, 1)[0]
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
        have taken a message: the next fetch on a working connection finds out (``handback``)."""
        if self._fetch_replies and self._in_poll is connection:
            self.handback.fetch_lost(self._fetch_key, self._fetch_nonce)
            self._fetch_replies = 0
        cast(Any, super())._on_connection_disconnect(connection)

    def _restore(self, message: Any, leftmost: bool = False) -> None:
        if not self.ack_emulation:
            cast(Any, super())._restore(message, leftmost)
            return
        cast(QoS, self.qos).restore_by_tag(message.delivery_tag, leftmost=leftmost)


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
