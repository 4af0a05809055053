"""The Writer's two ways of writing, with a recording producer: wait per record, or hand over and settle later.

What reaches a real broker (and in what order) is proven in tests/integration/test_backfill.py; here the
dead-letter rules and failure accounting of each way are pinned down.
"""

from __future__ import annotations

import json

import pytest

from bridge.core import Outcome
from bridge.dev.samples import sample
from bridge.envelope import KafkaMessage, Recovered
from bridge.errors import PublishFailed, RecordRejected
from bridge.metrics import Metrics
from tests.fakes import DEADLETTER, RecordingProducer, writer_for


def recovered(event_type: str, event_id: str) -> Recovered:
    envelope = sample(event_type) | {"id": event_id}
    return Recovered(event_id, json.dumps(envelope).encode(), "2026-11-27T12:00:00Z")


def ce_id(message: KafkaMessage) -> str:
    value = dict(message.headers).get("ce_id")
    return value.decode() if value is not None else json.loads(message.value or b"{}")["id"]


async def test_events_sent_one_after_another_are_handed_over_in_that_order_then_settled():
    producer = RecordingProducer()
    writer = writer_for(producer)
    origins = [recovered(t, f"evt_{n}") for n, t in enumerate(["role.created", "user.login", "role.deleted"])]

    sent = [await writer.send(origin, producer) for origin in origins]
    receipts = [await writer.settle(each) for each in sent]

    assert [ce_id(message) for message in producer.handed] == ["evt_0", "evt_1", "evt_2"]
    assert [r.outcome for r in receipts] == [Outcome.PUBLISHED] * 3
    assert [r.ack.offset for r in receipts if r.ack] == [0, 1, 2]


async def test_a_record_refused_before_sending_is_dead_lettered_in_its_place():
    producer = RecordingProducer(refuse={"scalekit.role.created"})
    writer = writer_for(producer)

    receipt = await writer.settle(await writer.send(recovered("role.created", "evt_big"), producer))

    (letter,) = producer.handed
    assert letter.topic == DEADLETTER and letter.key == b"evt_big"
    assert dict(letter.headers)["deadletter-reason"].startswith(b"Kafka refused the record: the record is")
    assert receipt.outcome == Outcome.DEADLETTERED


async def test_a_record_the_broker_refuses_after_sending_is_dead_lettered_when_settled():
    producer = RecordingProducer(lose={"scalekit.role.created": RecordRejected("MessageSizeTooLargeError")})
    writer = writer_for(producer)

    receipt = await writer.settle(await writer.send(recovered("role.created", "evt_1"), producer))

    assert [message.topic for message in producer.handed] == ["scalekit.role.created", DEADLETTER]
    assert receipt.outcome == Outcome.DEADLETTERED and receipt.ack is not None and receipt.ack.topic == DEADLETTER


async def test_a_lost_acknowledgement_fails_the_event_and_is_counted():
    metrics = Metrics(process_metrics=False)
    producer = RecordingProducer(lose={"scalekit.role.created": PublishFailed("no broker acknowledgement within 1s")})
    writer = writer_for(producer, metrics)

    sent = await writer.send(recovered("role.created", "evt_1"), producer)
    with pytest.raises(PublishFailed):
        await writer.settle(sent)

    failed = metrics.registry.get_sample_value(
        "scalekit_bridge_deliveries_total", {"outcome": Outcome.FAILED, "event_type": "role.created"}
    )
    assert failed == 1.0


async def test_when_the_dead_letter_topic_refuses_too_the_event_fails_rather_than_vanishes():
    producer = RecordingProducer(refuse={"scalekit.role.created", DEADLETTER})
    writer = writer_for(producer)

    with pytest.raises(PublishFailed, match="the dead-letter topic refused"):
        await writer.send(recovered("role.created", "evt_1"), producer)
    assert producer.handed == []


async def test_the_webhook_way_waits_for_each_ack_with_the_same_rules():
    producer = RecordingProducer(refuse={"scalekit.user.login"})
    writer = writer_for(producer)

    published = await writer.write(recovered("role.created", "evt_1"), 0.0)
    deadlettered = await writer.write(recovered("user.login", "evt_2"), 0.0)

    assert (published.outcome, deadlettered.outcome) == (Outcome.PUBLISHED, Outcome.DEADLETTERED)
    assert [message.topic for message in producer.handed] == ["scalekit.role.created", DEADLETTER]
