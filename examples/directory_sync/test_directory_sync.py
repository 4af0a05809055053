"""The example consumer, end to end, written with the bridge's test kit (the way your team would).

The kit's fixtures (`start_scalekit_bridge`, `scalekit_event`) come from `bridge.testing.fixtures`,
loaded because this project's pytest settings say `scalekit_bridge = true`. Each test starts a real
`scalekit-bridge serve` on a real Kafka, sends signed Scalekit deliveries, and checks SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable

import pytest

from examples.directory_sync.consumer import DirectorySync
from examples.directory_sync.store import DirectoryStore
from examples.directory_sync.story import expected_directory, provisioning_story

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


def consumer_of(bridge, store: DirectoryStore, group: str) -> DirectorySync:
    return DirectorySync(
        store, bootstrap_servers=bridge.bootstrap_servers, topic_prefix=bridge.topic_prefix, group_id=group
    )


async def test_a_provisioning_story_ends_as_the_same_directory_in_sqlite(start_scalekit_bridge, tmp_path):
    org = f"org_{secrets.token_hex(4)}"
    # With BRIDGE_DEDUP off, as a release may run, the retry below lands a second time. With it on, a copy
    # still reaches Kafka in the narrow cases docs/guarantees.md names, so the consumer must not care.
    bridge = start_scalekit_bridge(BRIDGE_DEDUP="false")
    story = provisioning_story(org)
    for delivery in story:
        assert bridge.send(delivery).status == 201, delivery["type"]

    store = DirectoryStore(tmp_path / "directory.db")
    sync = consumer_of(bridge, store, group=f"g{org}")
    async with consuming(sync):
        await until(lambda: len(store.processed()) == len(story))
        assert store.snapshot(org) == expected_directory()

        # Scalekit sends an event the bridge already wrote again (a retry whose first 201 it did not see): the
        # kit signs each send afresh, and with dedup off the same event lands a second time.
        jane_created = story[3]
        assert bridge.send(jane_created).status == 201
        await until(lambda: sync.outcomes["duplicate"] == 1)

    copies = [event for event in bridge.records(jane_created["type"]) if event.get_id() == jane_created["id"]]
    assert len(copies) == 2
    assert store.snapshot(org) == expected_directory()
    assert sum(sync.outcomes.values()) == len(story) + 1
    store.close()


async def test_the_consumer_group_resumes_after_its_committed_offsets(start_scalekit_bridge, tmp_path):
    org = f"org_{secrets.token_hex(4)}"
    # With BRIDGE_DEDUP off, as a release may run, the retry below lands a second time. With it on, a copy
    # still reaches Kafka in the narrow cases docs/guarantees.md names, so the consumer must not care.
    bridge = start_scalekit_bridge(BRIDGE_DEDUP="false")
    first, *rest = provisioning_story(org)
    assert bridge.send(first).status == 201

    store = DirectoryStore(tmp_path / "directory.db")
    async with consuming(consumer_of(bridge, store, group=f"g{org}")):
        await until(lambda: len(store.processed()) == 1)

    for delivery in rest:
        assert bridge.send(delivery).status == 201
    after = consumer_of(bridge, store, group=f"g{org}")
    async with consuming(after):
        await until(lambda: len(store.processed()) == len(rest) + 1)

    assert after.outcomes["duplicate"] == 0  # it started where the first consumer committed
    assert store.snapshot(org) == expected_directory()
    store.close()


async def test_a_user_deleted_in_the_idp_is_gone(scalekit_bridge, scalekit_event, tmp_path):
    """docs/consuming/testing.md's example, run as written."""
    org, user = f"org_{secrets.token_hex(4)}", {"id": "diruser_1", "email": "jane@acme.example"}
    sent = [
        scalekit_event(event_type, organization_id=org, data=user)
        for event_type in ("organization.directory.user_created", "organization.directory.user_deleted")
    ]
    for event in sent:
        assert scalekit_bridge.send(event).status == 201

    store = DirectoryStore(tmp_path / "directory.db")
    async with consuming(consumer_of(scalekit_bridge, store, group=org)):
        await until(lambda: {event["id"] for event in sent} <= store.processed().keys())
    assert "diruser_1" not in store.snapshot(org).users
    store.close()
