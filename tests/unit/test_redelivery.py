"""The redelivery cache answers repeats from memory, bounded by size and age."""

from __future__ import annotations

import asyncio

from bridge.redelivery import RedeliveryCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_an_acknowledged_delivery_is_a_duplicate_afterwards():
    cache = RedeliveryCache(10, 60)
    assert await cache.claim("msg_1")
    cache.release("msg_1", acknowledged=True)
    assert not await cache.claim("msg_1")


async def test_a_failed_delivery_may_be_tried_again():
    cache = RedeliveryCache(10, 60)
    assert await cache.claim("msg_1")
    cache.release("msg_1", acknowledged=False)
    assert await cache.claim("msg_1")


async def test_a_repeat_waits_for_the_attempt_in_flight_and_follows_its_outcome():
    cache = RedeliveryCache(10, 60)
    assert await cache.claim("msg_1")
    waiting = asyncio.create_task(cache.claim("msg_1"))
    await asyncio.sleep(0)
    assert not waiting.done(), "the repeat must not answer before the first attempt ends"
    cache.release("msg_1", acknowledged=True)
    assert await waiting is False

    assert await cache.claim("msg_2")
    retry = asyncio.create_task(cache.claim("msg_2"))
    await asyncio.sleep(0)
    cache.release("msg_2", acknowledged=False)
    assert await retry is True, "after a failed first attempt the repeat publishes itself"


async def test_entries_expire_after_the_ttl():
    clock = Clock()
    cache = RedeliveryCache(10, 60, clock=clock)
    await cache.claim("msg_1")
    cache.release("msg_1", acknowledged=True)
    clock.now = 61
    assert await cache.claim("msg_1")
    assert len(cache) == 0


async def test_the_oldest_entries_go_when_full():
    cache = RedeliveryCache(2, 60)
    for webhook_id in ("a", "b", "c"):
        await cache.claim(webhook_id)
        cache.release(webhook_id, acknowledged=True)
    assert len(cache) == 2
    assert await cache.claim("a")
    assert not await cache.claim("c")


async def test_size_zero_disables_memory():
    cache = RedeliveryCache(0, 60)
    await cache.claim("a")
    cache.release("a", acknowledged=True)
    assert await cache.claim("a") and len(cache) == 0
