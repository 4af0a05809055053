"""How a replay run writes what it planned: in order, a refused record left a dead letter, the first
failure stopping the hand-over. Which dead letters verify, and what the real broker ends up holding, is
proven in tests/integration/test_replay.py."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from bridge.core import StoredRecord
from bridge.dev.samples import sample
from bridge.envelope import KafkaMessage, Replayed
from bridge.errors import PublishFailed
from bridge.replay import Tally, _Letter, _Planned, _publish
from bridge.verify import VerifiedDelivery
from tests.fakes import DEADLETTER, RecordingProducer, writer_for

STAMP = "2026-11-30T12:00:00Z"


def planned(producer: RecordingProducer, events: list[tuple[str, str]]) -> list[_Planned]:
    """(event type, organization) pairs as replay plans them, each from its own verified dead letter."""
    writer = writer_for(producer)
    made = []
    for n, (event_type, organization) in enumerate(events):
        envelope = sample(event_type) | {"id": f"evt_{n:03d}", "organization_id": organization}
        body = json.dumps(envelope).encode()
        origin = Replayed(VerifiedDelivery(f"msg_{n}", "1760000000", body, "v1,c2ln"), STAMP)
        record = StoredRecord(KafkaMessage(DEADLETTER, None, body, ()), 0, n, 0)
        letter = _Letter(record, {}, envelope, datetime(2026, 11, 30, tzinfo=UTC))
        made.append(_Planned(letter, origin, writer.plan(origin)))
    return made


async def test_a_record_kafka_refuses_for_good_stays_a_dead_letter_and_the_rest_are_written_in_order():
    producer = RecordingProducer(refuse={"scalekit.role.created"})
    plans = planned(producer, [("organization.created", "org_a"), ("role.created", "org_a"),
                               ("organization.updated", "org_a")])
    tally = Tally()

    await _publish(writer_for(producer), producer, plans, tally)

    assert [message.topic for message in producer.handed] == ["scalekit.organization.created",
                                                              "scalekit.organization.updated"]
    assert DEADLETTER not in {message.topic for message in producer.handed}
    assert tally.replayed == 2 and tally.failed == [] and tally.out_of_order == []
    (still_dead,) = tally.still_dead
    assert still_dead.startswith("evt_001: Kafka refused the record: the record is 300000 bytes")


async def test_the_first_failed_write_stops_the_hand_over_and_names_what_was_not_written():
    refusal = PublishFailed("Kafka refused the write: NotEnoughReplicasError")
    producer = RecordingProducer(lose={"scalekit.organization.updated": refusal})
    plans = planned(producer, [("organization.created", "org_a"), ("organization.updated", "org_a")]
                    + [("organization.created", "org_b")] * 600)
    tally = Tally()

    await _publish(writer_for(producer), producer, plans, tally)

    assert "evt_001" in tally.failed and "evt_000" not in tally.failed
    assert len(producer.handed) < len(plans)  # no more handed over once the failure was heard
    assert tally.replayed + len(tally.failed) == len(plans)
    assert tally.still_dead == []


async def test_a_failed_write_stops_the_hand_over_at_once_however_few_records_are_in_flight():
    """102 records, far fewer than the in-flight window: the second one's failure is heard before the third
    is handed over, so nothing of the same organization is written after it, out of order."""
    refusal = PublishFailed("Kafka refused the write: NotEnoughReplicasError")
    producer = RecordingProducer(lose={"scalekit.organization.updated": refusal})
    plans = planned(producer, [("organization.created", "org_a"), ("organization.updated", "org_a")]
                    + [("organization.created", "org_a")] * 100)
    tally = Tally()

    await _publish(writer_for(producer), producer, plans, tally)

    assert len(producer.handed) == 2
    assert tally.replayed == 1 and tally.out_of_order == []
    assert tally.failed == [f"evt_{n:03d}" for n in range(1, 102)]


async def test_sigterm_stops_the_hand_over_and_names_every_event_not_written():
    """The Job's deadline: records in flight are still waited for, nothing more is handed over."""
    producer = RecordingProducer()
    plans = planned(producer, [("organization.created", f"org_{n % 7}") for n in range(40)])
    stopping = asyncio.Event()
    tally = Tally()
    original_send = producer.send

    async def send_then_stop(message: KafkaMessage):
        if len(producer.handed) == 10:
            stopping.set()  # the signal arrives while the eleventh record is being handed over
        return await original_send(message)

    producer.send = send_then_stop  # type: ignore[method-assign]
    await _publish(writer_for(producer), producer, plans, tally, stopping=stopping)

    assert len(producer.handed) == 11
    assert tally.replayed == 11
    assert tally.failed == [f"evt_{n:03d}" for n in range(11, 40)]

