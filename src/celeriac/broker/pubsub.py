"""Fanout (pub/sub) reads that never hang on a dropped connection.

redis-py 8's ``PubSub.parse_response``, kombu's read of a fanout message, blocks with no
timeout, and when the connection drops it reconnects and reads again inside the same call. The
new connection is not subscribed (kombu sets the pub/sub's connection itself, so redis-py's
resubscribe callback never runs), nothing ever arrives on it, and the worker's event loop waits
in that read for ever: connected, heartbeat alive, taking nothing (Celery's remote-control
mailbox is such a fanout queue, so every worker has one). Here that read takes the one reply the
event loop found, within the socket timeout, and a dropped connection is a connection error, as
kombu expects: Celery reconnects.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

import redis
import redis.client


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
