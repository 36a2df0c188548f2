"""Helpers for testing and benchmarking celeriac against real components (like
``celery.contrib.testing``): a private redis-server on a free port, Redis with Sentinel, child
processes with their output in a log file, a proxy that makes connections half-open, and
condition waits with a deadline.

Used by celeriac's own tests and benchmarks; usable in a project's tests of its tasks too, from
``celeriac.testing`` (one module per helper inside). No pytest dependency: test-framework glue
lives in the test suite.
"""

from celeriac.testing.children import CHILD_STOP_TIMEOUT_SECONDS, Child, celeriac_command
from celeriac.testing.ports import free_port
from celeriac.testing.proxy import PROXY_CHUNK_BYTES, HalfOpenProxy, NewConnections
from celeriac.testing.redis_server import REDIS_START_TIMEOUT_SECONDS, RedisServer
from celeriac.testing.sentinel import (
    HA_NODE_CONFIG,
    SENTINEL_MASTER,
    SentinelGroup,
    ha_node_args,
)
from celeriac.testing.waits import WAIT_INTERVAL_SECONDS, WAIT_TIMEOUT_SECONDS, wait_until

__all__ = [
    "CHILD_STOP_TIMEOUT_SECONDS",
    "HA_NODE_CONFIG",
    "PROXY_CHUNK_BYTES",
    "REDIS_START_TIMEOUT_SECONDS",
    "SENTINEL_MASTER",
    "WAIT_INTERVAL_SECONDS",
    "WAIT_TIMEOUT_SECONDS",
    "Child",
    "HalfOpenProxy",
    "NewConnections",
    "RedisServer",
    "SentinelGroup",
    "celeriac_command",
    "free_port",
    "ha_node_args",
    "wait_until",
]
