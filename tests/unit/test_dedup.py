"""One record per event, with a recording producer: what is written, what is a duplicate, when a receipt goes.

That receipts reach every replica, across restarts, is proven in tests/integration/test_one_record_per_event.py.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from bridge.core import Outcome, Source
from bridge.dedup import FleetMemory
from bridge.dev.samples import sample
from bridge.envelope import Recovered
from bridge.errors import PublishFailed
from bridge.metrics import Metrics
from bridge.remembered import RememberedIds
from tests.fakes import DEADLETTER, RecordingProducer, writer_for


def recovered(event_type: str, event_id: str, **changes: object) -> Recovered:
    envelope = sample(event_type) | {"id": event_id} | changes
    return Recovered(event_id, json.dumps(envelope).encode(), "2026-11-27T12:00:00Z")


class Receipts(list[tuple[bytes, dict[str, object]]]):
    """The receipts queued for the receipts topic, as (key, value)."""

    def write(self, key: bytes, value: bytes) -> None:
        self.append((key, json.loads(value)))


def fleet(
    receipts: Receipts, metrics: Metrics, source: Source = Source.WEBHOOK, *, remembers: bool = True
) -> FleetMemory:
    remembered = RememberedIds(86_400_000, max_ids=1000) if remembers else None
    return FleetMemory(write=receipts.write, source=source, metrics=metrics, remembered=remembered)


def stopped(metrics: Metrics, source: str, written_by: str) -> float:
    labels = {"source": source, "written_by": written_by}
    return metrics.registry.get_sample_value("scalekit_bridge_dedup_duplicates_total", labels) or 0.0


async def test_the_receipt_is_queued_after_the_record_is_acknowledged_with_the_records_place():
    producer = RecordingProducer()
    producer.hold = asyncio.Event()
    receipts = Receipts()
    metrics = Metrics(process_metrics=False)
    writer = writer_for(producer, metrics, memory=fleet(receipts, metrics))

    writing = asyncio.create_task(writer.write(recovered("role.created", "evt_1"), time.perf_counter()))
    while not producer.handed:
        await asyncio.sleep(0)
    assert receipts == []  # handed over, not yet acknowledged
    producer.hold.set()
    receipt = await writing

    (record,) = producer.handed
    assert receipt.outcome == Outcome.PUBLISHED and record.topic == "scalekit.role.created"
    assert receipts == [(b"evt_1", {"source": "webhook", "topic": record.topic, "partition": 0, "offset": 0})]


async def test_an_event_the_release_wrote_is_a_duplicate_and_writes_nothing():
    producer = RecordingProducer()
    metrics = Metrics(process_metrics=False)
    memory = fleet(Receipts(), metrics)
    backfilled = b'{"source":"backfill","topic":"scalekit.role.created","partition":0,"offset":3}'
    assert memory.apply(b"evt_1", backfilled, int(time.time() * 1000))
    writer = writer_for(producer, metrics, memory=memory)

    receipt = await writer.write(recovered("role.created", "evt_1"), time.perf_counter())

    assert receipt.outcome == Outcome.DUPLICATE
    assert producer.handed == []
    assert stopped(metrics, "webhook", "backfill") == 1


async def test_a_record_that_failed_leaves_no_receipt_so_its_retry_is_written():
    producer = RecordingProducer()
    receipts = Receipts()
    metrics = Metrics(process_metrics=False)
    writer = writer_for(producer, metrics, memory=fleet(receipts, metrics))
    producer.down = True
    with pytest.raises(PublishFailed):  # the 503
        await writer.write(recovered("role.created", "evt_1"), time.perf_counter())
    producer.down = False

    receipt = await writer.write(recovered("role.created", "evt_1"), time.perf_counter())

    assert receipt.outcome == Outcome.PUBLISHED
    assert [message.topic for message in producer.handed] == ["scalekit.role.created"]
    assert [key for key, _ in receipts] == [b"evt_1"]


async def test_a_dead_letter_leaves_no_receipt_so_a_replay_can_still_write_the_event():
    producer = RecordingProducer()
    receipts = Receipts()
    metrics = Metrics(process_metrics=False)
    memory = fleet(receipts, metrics)
    writer = writer_for(producer, metrics, memory=memory)

    receipt = await writer.write(recovered("role.created", "evt_1", type="role.bad type"), time.perf_counter())

    assert receipt.outcome == Outcome.DEADLETTERED
    assert [message.topic for message in producer.handed] == [DEADLETTER]
    assert receipts == []
    assert memory.written_by("evt_1") is None


async def test_backfill_and_replay_write_receipts_but_keep_no_memory_of_their_own():
    producer = RecordingProducer()
    receipts = Receipts()
    metrics = Metrics(process_metrics=False)
    memory = fleet(receipts, metrics, Source.REPLAY, remembers=False)
    writer = writer_for(producer, metrics, memory=memory)

    await writer.settle(await writer.send(recovered("role.created", "evt_1"), producer))

    assert [(key, value["source"]) for key, value in receipts] == [(b"evt_1", "replay")]
    assert memory.written_by("evt_1") is None


def test_a_record_on_the_receipts_topic_that_is_not_a_receipt_is_skipped():
    metrics = Metrics(process_metrics=False)
    memory = fleet(Receipts(), metrics)

    assert not memory.apply(b"evt_1", b"not json", 0)
    assert not memory.apply(b"evt_2", b'{"source":"someone"}', 0)
    assert not memory.apply(None, b'{"source":"webhook"}', 0)
    assert memory.apply(b"evt_3", b'{"topic":"t","source":"replay"}', 0)  # written by hand: parsed as JSON
    assert memory.written_by("evt_1") is None
