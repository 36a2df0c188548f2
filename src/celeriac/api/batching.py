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


class TransactionQueue:
    """Sends queued units of commands to one Redis client, one MULTI/EXEC at a time."""

    def __init__(self, client: redis.asyncio.Redis, max_units: int = MAX_UNITS) -> None:
        self.client = client
        self.max_units = max_units
        self._pending: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]] = []
        self._sender: asyncio.Task[None] | None = None

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
