"""kombu's ``global_keyprefix``: every broker key a celeriac client touches, prefixed.

kombu's Redis transport, given ``global_keyprefix``, talks to Redis through a client that puts
the prefix before the key arguments of the commands kombu itself sends (its
``PrefixedStrictRedis``), and before the channel names of its pub/sub. celeriac's channel, its
readers (the exporter, the API, ``celeriac inspect``, the worker's registry and stall check)
and its Lua scripts use more commands than kombu's list knows, so here the same idea is
complete: ``PrefixedRedis`` knows where the keys of every command celeriac sends are, and
refuses a command it does not know instead of sending it unprefixed. Keys keep their unprefixed
names everywhere else (``celeriac.broker.keys``); only commands sent past a client (the fetch,
the API's collected publishes) add the prefix themselves, with ``prefixed``.

Scripts follow kombu's rule: the client prefixes the first key of an ``EVAL``/``EVALSHA``
only (kombu's channel prefixes the second key of its binding script by hand); ``script_keys``
prefixes the others for celeriac's scripts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
import redis.client
from kombu.transport import redis as kombu_redis

from celeriac.broker.pubsub import ListenPubSub

# Commands whose first argument is their one key.
_FIRST_KEY = {
    "GET", "SET", "SETNX", "SETEX", "PSETEX", "GETDEL", "GETSET", "INCR", "INCRBY", "DECR",
    "DECRBY", "EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT", "TTL", "PTTL", "PERSIST", "TYPE",
    "HGET", "HSET", "HSETNX", "HDEL", "HLEN", "HGETALL", "HKEYS", "HVALS", "HMGET", "HMSET",
    "HINCRBY", "HEXISTS", "HSCAN",
    "LPUSH", "RPUSH", "LPUSHX", "RPUSHX", "LPOP", "RPOP", "LLEN", "LINDEX", "LRANGE", "LTRIM",
    "LREM", "LSET", "LINSERT",
    "SADD", "SREM", "SMEMBERS", "SCARD", "SISMEMBER", "SSCAN",
    "ZADD", "ZREM", "ZRANGE", "ZREVRANGE", "ZRANGEBYSCORE", "ZREVRANGEBYSCORE", "ZCOUNT",
    "ZCARD", "ZSCORE", "ZINCRBY", "ZREMRANGEBYSCORE", "ZREMRANGEBYRANK", "ZRANK", "ZREVRANK",
    "ZSCAN",
    "PUBLISH",
}  # fmt: skip
# Commands whose every argument is a key.
_ALL_KEYS = frozenset({"DEL", "UNLINK", "EXISTS", "WATCH", "MGET", "TOUCH"})
# Blocking pops: every argument but the last (the timeout) is a key.
_KEYS_THEN_TIMEOUT = frozenset({"BLPOP", "BRPOP"})
# Scripts: the script (or its digest), the number of keys, the keys, then the arguments.
_SCRIPTS = frozenset({"EVAL", "EVALSHA"})
# Commands without keys.
_KEYLESS = frozenset(
    {
        "PING", "ECHO", "INFO", "TIME", "WAIT", "MULTI", "EXEC", "DISCARD", "UNWATCH",
        "SCRIPT", "SCRIPT LOAD", "SCRIPT EXISTS", "SCRIPT FLUSH", "CLIENT", "CLIENT SETNAME",
        "CLIENT ID", "SELECT", "AUTH", "HELLO", "ROLE", "CONFIG GET", "DBSIZE", "COMMAND",
    }
)  # fmt: skip


def prefixed(prefix: str, keys: Sequence[Any]) -> list[str]:
    """``keys``, each with ``prefix`` before it, as a prefixed client sends them."""
    return [f"{prefix}{key}" for key in keys]


def prefix_command(prefix: str, args: Sequence[Any]) -> list[Any]:
    """The command ``args`` (name first) with ``prefix`` before each of its keys.

    Raises ValueError for a command not known here: sent unprefixed, it would read or write
    another application's keys.
    """
    command, *rest = args
    name = str(command).upper()
    if not prefix or name in _KEYLESS:
        return [command, *rest]
    if name in _FIRST_KEY and rest:
        return [command, f"{prefix}{rest[0]}", *rest[1:]]
    if name in _ALL_KEYS:
        return [command, *prefixed(prefix, rest)]
    if name in _KEYS_THEN_TIMEOUT and rest:
        return [command, *prefixed(prefix, rest[:-1]), rest[-1]]
    if name in _SCRIPTS and len(rest) >= 2:
        script, count, *more = rest
        if int(count) == 0:
            return [command, *rest]
        return [command, script, count, f"{prefix}{more[0]}", *more[1:]]
    raise ValueError(
        f"Redis command {name} with global_keyprefix {prefix!r}: celeriac's prefixed client "
        "does not know which of its arguments are keys (celeriac.broker.prefix)"
    )


def script_keys(client: object, keys: Sequence[str]) -> list[str]:
    """The keys to pass a script run through ``client``: with a prefixed client, which prefixes
    a script's first key only (kombu's rule), the others get its prefix here."""
    prefix: str = getattr(client, "global_keyprefix", "")
    return [*keys[:1], *prefixed(prefix, keys[1:])]


class _PrefixMixin(kombu_redis.GlobalKeyPrefixMixin):
    global_keyprefix: str

    def _prefix_args(self, args: Any) -> list[Any]:
        return prefix_command(self.global_keyprefix, list(args))

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        client: Any = self
        return PrefixedPipeline(
            client.connection_pool,
            client.response_callbacks,
            transaction,
            shard_hint,
            global_keyprefix=self.global_keyprefix,
        )


class PrefixedRedis(_PrefixMixin, redis.Redis):
    """A client that puts ``global_keyprefix`` before every key (kombu's, completed).

    The prefix is a class attribute (``client_class``), so redis-py's ``from_url`` and
    Sentinel's ``master_for``, which build the client themselves, build prefixed ones.
    """

    global_keyprefix = ""

    def __init__(self, *args: Any, global_keyprefix: str | None = None, **kwargs: Any) -> None:
        if global_keyprefix is not None:
            self.global_keyprefix = global_keyprefix
        redis.Redis.__init__(self, *args, **kwargs)

    def pubsub(self, **kwargs: Any) -> Any:
        return kombu_redis.PrefixedRedisPubSub(
            self.connection_pool, global_keyprefix=self.global_keyprefix, **kwargs
        )


class PrefixedPipeline(_PrefixMixin, redis.client.Pipeline):
    """``PrefixedRedis``'s pipelines and transactions."""

    def __init__(self, *args: Any, global_keyprefix: str = "", **kwargs: Any) -> None:
        self.global_keyprefix = global_keyprefix
        redis.client.Pipeline.__init__(self, *args, **kwargs)


class PrefixedListenPubSub(kombu_redis.PrefixedRedisPubSub, ListenPubSub):
    """celeriac's fanout connection (``ListenPubSub``) subscribing to prefixed channels, as
    kombu's prefixed pub/sub does: a stock kombu publisher with the same prefix reaches it."""


def client_class(prefix: str) -> type[redis.Redis]:
    """The class of a broker client: ``PrefixedRedis`` for ``prefix``, plain without one."""
    if not prefix:
        return redis.Redis
    return type("PrefixedRedis", (PrefixedRedis,), {"global_keyprefix": prefix})
