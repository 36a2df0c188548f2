"""Write coalescing: the commands of concurrent requests go to Redis together.

Each request hands its commands (a unit: its id record and its message) to the client's
``TransactionQueue`` and waits. While no transaction is in flight, a unit is sent at once, alone;
units arriving while one is in flight wait for it and then leave together, in the next
``MULTI``/``EXEC``. So one process keeps at most one transaction in flight per Redis, and under
load a round trip carries as many units as arrived during the previous one.

A unit's waiter is answered only with that transaction's reply: its own replies when they are
all successes, the first error among them otherwise, or the transaction's failure (a dropped
connection, a timeout) for every unit in it. A request therefore answers 202 only once Redis has
acknowledged its own commands, as before. ``MULTI``/``EXEC`` keeps each unit's commands together
(the whole batch is one transaction); a unit is never split across two transactions.

A unit that leaves alone (the common case at low concurrency) goes as one ``EVAL`` of a script
running its commands instead: Redis runs a script whole, with nothing in between, and
propagates its writes to the AOF and replicas as one ``MULTI``/``EXEC``, so it is written whole
or not at all as before, in one command and one reply instead of ``MULTI``, one ``QUEUED`` per
command and ``EXEC`` (about half the client's time per unit). A Redis refusing scripts (an ACL
without ``EVAL``) gets ``MULTI``/``EXEC`` from then on.

Replicas: with ``wait_replicas``, each round trip ends with ``WAIT wait_replicas
wait_timeout_ms`` on the same connection (Redis waits for the writes made on that connection), so
a unit is answered only once that many replicas hold its writes, or fails with
``broker.ReplicationError`` (a 503: the writes may be on the master alone, about to be lost in
a failover). Each round trip is written and read on one pooled connection for that reason.

When a transaction fails because Redis cannot be reached, the units that arrived while it was in
flight fail with it (a 503) instead of trying again: a request never waits for more than one
attempt (about two socket timeouts), as it did when each request had its own transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.connection

from celeriac import broker

# A Redis command, its name and arguments: what publishing, tracking and idempotency build and a
# TransactionQueue sends.
Command = tuple[str, tuple[Any, ...]]
# Failures saying Redis could not be reached (rather than refusing a command).
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError)
# A unit of commands and the future its request awaits.
Unit = tuple[Sequence[Command], "asyncio.Future[list[Any]]"]
# Units per transaction at most: bounds one reply's size and the latency of a large burst.
MAX_UNITS = 256
# Runs a unit's commands, given as ARGV: the number of words of a command, then its words.
UNIT_SCRIPT = """
local replies, i = {}, 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  replies[#replies + 1] = redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return replies
"""
# What the script runs: plain data commands (not EVAL, which a script cannot call, nor
# MULTI ...); a unit with any other goes in MULTI/EXEC.
SCRIPTABLE = frozenset(
    {"SET", "GET", "DEL", "EXPIRE", "LPUSH", "RPUSH", "LTRIM", "LLEN", "ZADD", "ZREMRANGEBYRANK"}
)
# What Redis answers when scripts are not allowed (ACL, or a proxy without them).
NO_SCRIPTS = ("NOPERM", "ERR unknown command")


class TransactionQueue:
    """Sends queued units of commands to one Redis client, one transaction at a time.

    A unit's commands are ``(method, args)`` pairs whose ``args`` are the command's own words
    (``("execute_command", ("SET", key, value))`` or ``("lpush", (key, value))``), as kombu's
    publish batch and ``celeriac.api.tracking`` write them.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        max_units: int = MAX_UNITS,
        *,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        self.client = client
        self.max_units = max_units
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._pending: list[Unit] = []
        self._sender: asyncio.Task[None] | None = None
        self._scripts = True

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Run ``commands`` in a transaction (shared with concurrent units); their replies."""
        if not commands:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._pending.append((commands, future))
        if self._sender is None:
            self._sender = loop.create_task(self._send())
        # A cancelled waiter cancels only its future: its unit is still sent with the others.
        return await future

    async def _send(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_units]
                del self._pending[: self.max_units]
                await self._send_batch(batch)
        except BaseException:
            waiting, self._pending = self._pending, []
            for _, future in waiting:
                future.cancel()
            raise
        finally:
            self._sender = None

    async def _send_batch(self, batch: list[Unit]) -> None:
        """One round trip: a lone unit as one ``EVAL``, several in ``MULTI``/``EXEC``."""
        commands = [_command(name, args) for unit, _ in batch for name, args in unit]
        alone = len(batch) == 1 and self._scripts
        if alone and all(str(command[0]).upper() in SCRIPTABLE for command in commands):
            words = [word for command in commands for word in (len(command), *command)]
            wire: list[tuple[Any, ...]] = [("EVAL", UNIT_SCRIPT, 0, *words)]
        else:
            alone = False
            wire = [("MULTI",), *commands, ("EXEC",)]
        if self.wait_replicas > 0:
            wire.append(("WAIT", self.wait_replicas, self.wait_timeout_ms))
        try:
            replies = await self._round_trip(wire)
        except Exception as exc:
            if isinstance(exc, UNREACHABLE):
                # Units that arrived during the failed attempt fail with it: a request waits
                # for at most one attempt on an unreachable Redis, never for two in a row.
                batch += self._pending
                self._pending = []
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for _, future in batch:
                future.cancel()  # the sender itself was cancelled (shutdown)
            raise
        replicated: Exception | None = None
        if self.wait_replicas > 0:
            try:
                broker.check_replicated(replies.pop(), self.wait_replicas, self.wait_timeout_ms)
            except broker.ReplicationError as exc:
                replicated = exc
        if alone:
            (reply,) = replies
            if isinstance(reply, redis.ResponseError) and str(reply).startswith(NO_SCRIPTS):
                self._scripts = False  # nothing ran: send it, and all after, as MULTI/EXEC
                await self._send_batch(batch)
                return
            outcomes: list[Exception | list[Any]] = [reply]
        else:
            outcomes = _exec_outcomes(batch, replies)
        callbacks = self.client.response_callbacks
        for (unit, future), outcome in zip(batch, outcomes, strict=True):
            own, commands = commands[: len(unit)], commands[len(unit) :]
            if future.done():
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
                continue
            parsed = []
            for command, reply in zip(own, outcome, strict=True):
                callback = callbacks.get(str(command[0]).upper())
                parsed.append(
                    callback(reply) if callback and not isinstance(reply, Exception) else reply
                )
            error = next((reply for reply in parsed if isinstance(reply, Exception)), None)
            if error is not None:
                future.set_exception(error)
            elif replicated is not None:
                future.set_exception(replicated)
            else:
                future.set_result(parsed)

    async def _round_trip(self, wire: list[tuple[Any, ...]]) -> list[Any]:
        """``wire`` written at once on one pooled connection; each raw reply (errors as values).

        A dropped connection is retried as the client's retry policy says, like a command.
        """
        pool = self.client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            replies: list[Any] = await connection.retry.call_with_retry(
                lambda: _exchange(connection, wire),
                lambda error: connection.disconnect(),
            )
            return replies
        except BaseException:
            # Replies may be left unread: never hand the connection out again as it is.
            await connection.disconnect(nowait=True)
            raise
        finally:
            await pool.release(connection)


async def _exchange(
    connection: redis.asyncio.connection.AbstractConnection, wire: list[tuple[Any, ...]]
) -> list[Any]:
    await connection.send_packed_command(connection.pack_commands(wire))
    replies: list[Any] = []
    for _ in wire:
        try:
            replies.append(await connection.read_response())
        except redis.ResponseError as exc:
            replies.append(exc)
    refused = next((reply for reply in replies if broker.demoted(reply)), None)
    if refused is not None:
        # Connected to a demoted master (a script's READONLY is not turned into a connection
        # error by redis-py): retried on a new connection, to the master Sentinel names now.
        raise broker.DemotedMaster(str(refused))
    return replies


def _exec_outcomes(batch: list[Unit], replies: list[Any]) -> list[Exception | list[Any]]:
    """Per unit, its commands' replies from the replies to ``MULTI``, each command, ``EXEC``.

    A command Redis refused while queueing aborts the whole transaction (``EXECABORT``): its
    unit gets that refusal, the others the abort.
    """
    executed = replies[-1]
    outcomes: list[Exception | list[Any]] = []
    start = 1
    for unit, _ in batch:
        queued = replies[start : start + len(unit)]
        refused = next((reply for reply in queued if isinstance(reply, Exception)), None)
        if isinstance(executed, Exception):
            outcomes.append(refused or executed)
        else:
            outcomes.append(list(executed[start - 1 : start - 1 + len(unit)]))
        start += len(unit)
    return outcomes


def _command(name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The words a unit's ``(method, args)`` sends."""
    return args if name == "execute_command" else (name.upper(), *args)
