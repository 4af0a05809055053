"""The example consumer, end to end: Scalekit deliveries → the real bridge → real Kafka → SQLite."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from examples.directory_sync.consumer import DirectorySync
from examples.directory_sync.store import DirectoryStore

from tests.directory_story import expected_directory, provisioning_story

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def consuming(sync: DirectorySync) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(sync.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.1)


async def test_a_provisioning_story_ends_as_the_same_directory_in_sqlite(start_bridge, kafka, kafka_bootstrap, unique, tmp_path):
    org = f"org_{unique}"
    running = await start_bridge()
    story = provisioning_story(org)
    for envelope in story:
        assert (await running.deliver(envelope))[0] == 201, envelope["type"]

    store = DirectoryStore(tmp_path / "directory.db")
    sync = DirectorySync(store, bootstrap_servers=kafka_bootstrap, topic_prefix=running.prefix, group_id=f"g{unique}")
    async with consuming(sync):
        await until(lambda: len(store.processed()) == len(story))
        assert store.snapshot(org) == expected_directory()

        # Scalekit retries a delivery the bridge already acknowledged, after a bridge restart
        # (its redelivery memory is per process): the event reaches Kafka a second time.
        jane_created = story[3]
        restarted = await start_bridge()
        assert (await restarted.deliver(jane_created, webhook_id="msg_retry_after_restart"))[0] == 201
        await until(lambda: sync.outcomes["duplicate"] == 1)

    copies = await kafka.read_all(running.topic(jane_created["type"]))
    assert [r.header("ce_id") for r in copies].count(jane_created["id"].encode()) == 2
    assert store.snapshot(org) == expected_directory()
    assert sum(sync.outcomes.values()) == len(story) + 1
    store.close()


async def test_the_consumer_group_resumes_after_its_committed_offsets(start_bridge, kafka_bootstrap, unique, tmp_path):
    org = f"org_{unique}"
    running = await start_bridge()
    first, *rest = provisioning_story(org)
    assert (await running.deliver(first))[0] == 201

    store = DirectoryStore(tmp_path / "directory.db")
    group = f"g{unique}"
    before = DirectorySync(store, bootstrap_servers=kafka_bootstrap, topic_prefix=running.prefix, group_id=group)
    async with consuming(before):
        await until(lambda: len(store.processed()) == 1)

    for envelope in rest:
        assert (await running.deliver(envelope))[0] == 201
    after = DirectorySync(store, bootstrap_servers=kafka_bootstrap, topic_prefix=running.prefix, group_id=group)
    async with consuming(after):
        await until(lambda: len(store.processed()) == len(rest) + 1)

    assert after.outcomes["duplicate"] == 0  # it started where the first consumer committed
    assert store.snapshot(org) == expected_directory()
    store.close()
