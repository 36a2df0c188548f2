"""Half-open connections: the poller drops them within the socket timeout.

A connection whose peer is gone without a FIN or RST (an expired NAT or conntrack entry, a load
balancer that cut an idle flow, a network blip) accepts writes and never delivers a reply; the
event loop waits on no socket timeout, so kombu's own check drops a fetch only once its reply is
``brpop_timeout + health_check_interval`` overdue and a pub/sub after two missed pings (20-30 s
with celeriac's settings), and when it dropped a fetch whose script had run, that message stayed
held until the visibility timeout. Here the poller (``Poller``) checks every second: a fetch
whose reply is overdue by the socket timeout, and a fanout connection whose ping went unanswered
for the socket timeout, are dropped; the next poll reconnects and sends the fetch (or
subscribes) again, and a fetch dropped with its reply unread is a lost fetch
(``celeriac.broker.handback``). Commands on other connections (acks, publishes, the result
backend) are bounded by the socket timeout and retried on a new connection by redis-py.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis

from celeriac.broker.pubsub import ListenPubSub

log = logging.getLogger(__name__)
# kombu's poller clock and socket check, which its type stubs do not declare.
_kombu_redis: Any = kombu_redis

# How often the poller looks for half-open fetch and fanout connections (``Poller``).
CONNECTION_CHECK_SECONDS = 1.0


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
