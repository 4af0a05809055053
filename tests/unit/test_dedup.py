"""One record per event, with a recording producer: what is written, what is a duplicate, when a receipt goes.

That receipts reach every replica, across restarts, is proven in tests/integration/test_one_record_per_event.py.
"""

from __future__ import annotations

import json
import time

import pytest

from bridge.config import RecordShaping
from bridge.core import Outcome, Source
from bridge.dedup import FleetMemory, writing_only
from bridge.dev.samples import sample
from bridge.envelope import Recovered
from bridge.errors import PublishFailed
from bridge.metrics import Metrics
from bridge.remembered import RememberedIds
from tests.fakes import DEADLETTER, RecordingProducer, writer_for

RECEIPTS = "scalekit.dedup-receipts"


def recovered(event_type: str, event_id: str, **changes: object) -> Recovered:
    envelope = sample(event_type) | {"id": event_id} | changes
    return Recovered(event_id, json.dumps(envelope).encode(), "2026-11-27T12:00:00Z")


def fleet(producer: RecordingProducer, metrics: Metrics, source: Source = Source.WEBHOOK) -> FleetMemory:
    remembered = RememberedIds(86_400_000, max_ids=1000)
    return FleetMemory(sender=producer, receipts_topic=RECEIPTS, source=source, metrics=metrics, remembered=remembered)


def stopped(metrics: Metrics, source: str, written_by: str) -> float:
    labels = {"source": source, "written_by": written_by}
    return metrics.registry.get_sample_value("scalekit_bridge_dedup_duplicates_total", labels) or 0.0


async def test_the_receipt_is_handed_over_after_the_record_with_the_records_place():
    producer = RecordingProducer()
    metrics = Metrics(process_metrics=False)
    writer = writer_for(producer, metrics, memory=fleet(producer, metrics))

    receipt = await writer.write(recovered("role.created", "evt_1"), time.perf_counter())

    record, note = producer.handed
    assert receipt.outcome == Outcome.PUBLISHED and record.topic == "scalekit.role.created"
    assert (note.topic, note.key) == (RECEIPTS, b"evt_1")
    assert json.loads(note.value or b"") == {"source": "webhook", "topic": record.topic, "partition": 0, "offset": 0}


async def test_an_event_the_release_wrote_is_a_duplicate_and_writes_nothing():
    producer = RecordingProducer()
    metrics = Metrics(process_metrics=False)
    memory = fleet(producer, metrics)
    assert memory.apply(b"evt_1", b'{"source":"backfill"}', int(time.time() * 1000))
    writer = writer_for(producer, metrics, memory=memory)

    receipt = await writer.write(recovered("role.created", "evt_1"), time.perf_counter())

    assert receipt.outcome == Outcome.DUPLICATE
    assert producer.handed == []
    assert stopped(metrics, "webhook", "backfill") == 1


async def test_a_record_that_failed_leaves_no_receipt_so_its_retry_is_written():
    producer = RecordingProducer()
    metrics = Metrics(process_metrics=False)
    writer = writer_for(producer, metrics, memory=fleet(producer, metrics))
    producer.down = True
    with pytest.raises(PublishFailed):  # the 503
        await writer.write(recovered("role.created", "evt_1"), time.perf_counter())
    producer.down = False

    receipt = await writer.write(recovered("role.created", "evt_1"), time.perf_counter())

    assert receipt.outcome == Outcome.PUBLISHED
    assert [message.topic for message in producer.handed] == ["scalekit.role.created", RECEIPTS]


async def test_a_dead_letter_leaves_no_receipt_so_a_replay_can_still_write_the_event():
    producer = RecordingProducer()
    metrics = Metrics(process_metrics=False)
    memory = fleet(producer, metrics)
    writer = writer_for(producer, metrics, memory=memory)

    receipt = await writer.write(recovered("role.created", "evt_1", type="role.bad type"), time.perf_counter())

    assert receipt.outcome == Outcome.DEADLETTERED
    assert [message.topic for message in producer.handed] == [DEADLETTER]
    assert memory.written_by("evt_1") is None


async def test_a_receipt_the_broker_refuses_is_counted_and_the_delivery_still_succeeds():
    producer = RecordingProducer(refuse={RECEIPTS})
    metrics = Metrics(process_metrics=False)
    writer = writer_for(producer, metrics, memory=fleet(producer, metrics))

    receipt = await writer.write(recovered("role.created", "evt_1"), time.perf_counter())

    assert receipt.outcome == Outcome.PUBLISHED
    assert metrics.registry.get_sample_value("scalekit_bridge_dedup_receipt_failures_total") == 1


async def test_backfill_and_replay_write_receipts_but_keep_no_memory_of_their_own():
    producer = RecordingProducer()
    metrics = Metrics(process_metrics=False)
    memory = writing_only(RecordShaping(), producer, Source.REPLAY, metrics)
    assert memory is not None
    writer = writer_for(producer, metrics, memory=memory)

    await writer.settle(await writer.send(recovered("role.created", "evt_1"), producer))

    assert json.loads(producer.handed[-1].value or b"")["source"] == "replay"
    assert memory.written_by("evt_1") is None
    assert writing_only(RecordShaping(dedup=False), producer, Source.REPLAY, metrics) is None


def test_a_record_on_the_receipts_topic_that_is_not_a_receipt_is_skipped():
    metrics = Metrics(process_metrics=False)
    memory = fleet(RecordingProducer(), metrics)

    assert not memory.apply(b"evt_1", b"not json", 0)
    assert not memory.apply(b"evt_2", b'{"source":"someone"}', 0)
    assert not memory.apply(None, b'{"source":"webhook"}', 0)
    assert memory.written_by("evt_1") is None
