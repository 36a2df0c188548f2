"""The API's write coalescing (``celeriac.api.batching``) against a real Redis."""

from __future__ import annotations

import asyncio
import types

import redis
import redis.asyncio

from celeriac.api.batching import TransactionQueue
from celeriac.testing import free_port


def test_concurrent_units_share_transactions_and_get_their_own_replies(redis_url: str) -> None:
    async def run() -> tuple[list[list[object]], int]:
        client = redis.asyncio.Redis.from_url(redis_url)
        queue = TransactionQueue(client)
        transactions = 0
        round_trip = TransactionQueue._round_trip

        async def counted(self: TransactionQueue, wire: list[tuple[object, ...]]) -> list[object]:
            nonlocal transactions
            transactions += 1
            return await round_trip(self, wire)

        queue._round_trip = types.MethodType(counted, queue)  # type: ignore[method-assign]
        try:
            replies = await asyncio.gather(
                *(
                    queue.execute([("rpush", ("batch-test", n)), ("llen", ("batch-test",))])
                    for n in range(20)
                )
            )
        finally:
            await client.aclose()
        return replies, transactions

    replies, transactions = asyncio.run(run())
    # All 20 were queued before the sender task first ran: one transaction carries them.
    assert transactions == 1
    assert [reply[0] for reply in replies] == list(range(1, 21))


def test_a_unit_gets_its_own_error_only(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.set("batch-text", "not a list")

    async def run() -> list[object]:
        client = redis.asyncio.Redis.from_url(redis_url)
        queue = TransactionQueue(client)
        try:
            results: list[object] = await asyncio.gather(
                queue.execute([("set", ("batch-a", "1"))]),
                queue.execute([("lpush", ("batch-text", "x"))]),
                queue.execute([("set", ("batch-b", "2"))]),
                return_exceptions=True,
            )
            return results
        finally:
            await client.aclose()

    first, second, third = asyncio.run(run())
    assert first == [True]
    assert third == [True]
    assert isinstance(second, redis.ResponseError)


def test_unreachable_redis_fails_the_waiting_units_with_the_transaction() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens

    async def run() -> list[object]:
        client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=1)
        queue = TransactionQueue(client)
        try:
            results: list[object] = await asyncio.gather(
                *(queue.execute([("set", ("k", n))]) for n in range(5)), return_exceptions=True
            )
            return results
        finally:
            await client.aclose()

    # The first unit's transaction fails; the four queued meanwhile fail with it, untried.
    assert all(isinstance(result, redis.ConnectionError) for result in asyncio.run(run()))


def test_no_commands_sends_nothing() -> None:
    async def run() -> list[object]:
        return await TransactionQueue(redis.asyncio.Redis()).execute([])

    assert asyncio.run(run()) == []
