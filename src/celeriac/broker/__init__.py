"""The Redis broker: celeriac's kombu transport, Redis clients, key layout and result backend.

What other packages use is named here; the modules behind it are the broker's own:

- ``transport`` (with ``qos``, ``fetch``, ``poller``, ...): kombu's Redis transport with an
  atomic fetch, the per-queue index of held messages and the half-open connection checks;
- ``replicas``, ``sentinel``: its variants, publishes WAITed for replicas and through Sentinel,
  chosen by ``configure`` (``config``);
- ``clients``: every other Redis client of the project, and what a refused write means;
- ``backend``: Celery's result backend, one round trip per stored state (Celery imports it by
  the path ``configure`` gives, so importing this package never imports Celery);
- ``keys``, ``backlog``, ``dead_letters``: where things live in Redis, how much each queue
  holds, and the tasks set aside.
"""

from __future__ import annotations

from celeriac.broker import dead_letters, keys
from celeriac.broker.backlog import QueueBacklog, read_backlog
from celeriac.broker.clients import (
    DemotedMaster,
    async_client,
    broker_client,
    client,
    demoted,
    polling_client,
)
from celeriac.broker.config import backend_url, configure, transport_for
from celeriac.broker.message import PUBLISHED_AT_PROPERTY, parse_eta
from celeriac.broker.qos import QoS
from celeriac.broker.replicas import ReplicationError, check_replicated, wait_timeout_ms
from celeriac.broker.transport import TRANSPORT, Channel, Transport

__all__ = [
    "PUBLISHED_AT_PROPERTY",
    "TRANSPORT",
    "Channel",
    "DemotedMaster",
    "QoS",
    "QueueBacklog",
    "ReplicationError",
    "Transport",
    "async_client",
    "backend_url",
    "broker_client",
    "check_replicated",
    "client",
    "configure",
    "dead_letters",
    "demoted",
    "keys",
    "parse_eta",
    "polling_client",
    "read_backlog",
    "transport_for",
    "wait_timeout_ms",
]
