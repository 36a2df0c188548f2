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

from celeriac.api.publish import Command

# Failures saying Redis could not be reached (rather than refusing a command).
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError)
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
# Client methods whose arguments are the command's own, in order (``set`` with two only).
METHODS = frozenset({"lpush", "rpush", "ltrim", "llen", "get", "set"})
# What Redis answers when scripts are not allowed (ACL, or a proxy without them).
NO_SCRIPTS = ("NOPERM", "ERR unknown command")


class TransactionQueue:
    """Sends queued units of commands to one Redis client, one MULTI/EXEC at a time."""

    def __init__(self, client: redis.asyncio.Redis, max_units: int = MAX_UNITS) -> None:
        self.client = client
        self.max_units = max_units
        self._pending: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]] = []
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

    async def _send_batch(
        self, batch: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]]
    ) -> None:
        if len(batch) == 1 and self._scripts:
            words = _words(batch[0][0])
            if words is not None:
                await self._send_alone(batch[0][0], words, batch[0][1])
                return
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                for commands, _ in batch:
                    for name, args in commands:
                        getattr(pipe, name)(*args)
                replies = await pipe.execute(raise_on_error=False)
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
        start = 0
        for commands, future in batch:
            own = replies[start : start + len(commands)]
            start += len(commands)
            if future.done():
                continue
            error = next((reply for reply in own if isinstance(reply, Exception)), None)
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(own)

    async def _send_alone(
        self, commands: Sequence[Command], words: list[Any], future: asyncio.Future[list[Any]]
    ) -> None:
        """One unit, as one ``EVAL`` (see the module); its replies as a transaction's."""
        try:
            replies = await self.client.execute_command(  # type: ignore[no-untyped-call]
                "EVAL", UNIT_SCRIPT, 0, *words
            )
        except redis.ResponseError as exc:
            if str(exc).startswith(NO_SCRIPTS):
                self._scripts = False  # nothing ran: send it, and all after, as MULTI/EXEC
                await self._send_batch([(commands, future)])
            elif not future.done():
                future.set_exception(exc)
            return
        except Exception as exc:
            if isinstance(exc, UNREACHABLE):
                waiting, self._pending = self._pending, []
                for _, other in waiting:
                    if not other.done():
                        other.set_exception(exc)
            if not future.done():
                future.set_exception(exc)
            return
        except BaseException:
            future.cancel()  # the sender itself was cancelled (shutdown)
            raise
        callbacks = self.client.response_callbacks
        out = []
        for (name, args), reply in zip(commands, replies, strict=True):
            command = str(args[0]).upper() if name == "execute_command" else name.upper()
            callback = callbacks.get(command)
            out.append(callback(reply) if callback is not None else reply)
        if not future.done():
            future.set_result(out)


def _words(commands: Sequence[Command]) -> list[Any] | None:
    """The unit as the script's ARGV, or None when a command is not sent as it is named."""
    words: list[Any] = []
    for name, args in commands:
        if name == "execute_command":
            command = list(args)
            if not command or str(command[0]).upper() not in SCRIPTABLE:
                return None
        elif name in METHODS and (name != "set" or len(args) == 2):
            command = [name.upper(), *args]
        else:
            return None
        words += [len(command), *command]
    return words
