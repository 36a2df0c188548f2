"""Messages this process took and must still put back on their queues.

A fetch whose reply was lost with its connection may have taken a message (the script ran,
``celeriac.broker.fetch``); a channel closed after a connection error could not put back the
messages it held. Either way the messages stay recorded as held, and the next fetch on a
working connection puts them back at once, instead of the visibility timeout an hour later.

Celery replaces a worker's connection, transport and channels after a connection error, so this
cannot stay with them: one ``Handback`` per process, owned by the channel class
(``Channel.handback``) and shared by every channel of the process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from kombu.utils.encoding import bytes_to_str

log = logging.getLogger(__name__)


class Handback:
    """What to put back, and whether this process requeues on purpose (its shutdown)."""

    def __init__(self) -> None:
        # (fetch key, nonce) of fetches whose reply was lost with the connection.
        self._lost_fetches: list[tuple[str, str]] = []
        # Tags of held messages a closing channel could not put back (its connection was gone).
        self._unrestored: list[str] = []
        self._deliberate = False

    def requeue_deliberately(self) -> None:
        """From now on, messages this process hands back were cut short on purpose (the
        worker's shutdown deadline): those deliveries do not count towards the dead-letter
        limit."""
        self._deliberate = True

    def counts_as_lost(self, lost: bool | None) -> bool:
        """Whether a delivery handed back counts towards the dead-letter limit: ``lost`` when
        the caller knows, else unless this process requeues on purpose."""
        return not self._deliberate if lost is None else lost

    def fetch_lost(self, fetch_key: str, nonce: str) -> None:
        """The reply of the fetch ``nonce`` (its tag under ``fetch_key``) was lost."""
        self._lost_fetches.append((fetch_key, nonce))

    def not_restored(self, tags: Iterable[str]) -> None:
        """A closing channel could not put back the held messages ``tags``."""
        self._unrestored.extend(tags)

    def put_back(self, channel: Any) -> None:
        """Put back, through ``channel`` (one that works), every message waiting for it."""
        qos = channel.qos
        while self._unrestored:
            tag = self._unrestored[0]
            with channel.conn_or_acquire() as client:
                # Only a message still held is put back (restore_by_tag checks unacked); handed
                # back by a live process, so not a lost delivery (restore_unacked).
                qos.restore_by_tag(tag, client=client, lost=False)
            self._unrestored.pop(0)
        while self._lost_fetches:
            fetch_key, nonce = self._lost_fetches[0]
            with channel.conn_or_acquire() as client:
                value = client.get(fetch_key)
                if value is not None:
                    taken_by, _, tag = bytes_to_str(value).partition(":")
                    if taken_by == nonce:
                        # Never ran: not a lost-worker delivery.
                        qos.restore_by_tag(tag, client=client, lost=False)
                        log.warning("requeued message %s: its fetch's reply was lost", tag)
            self._lost_fetches.pop(0)
