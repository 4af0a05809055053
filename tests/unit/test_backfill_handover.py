"""How a backfill run hands records over and waits for them: bounded in time, stopped by the first
refusal or by SIGTERM, and honest about an organization's order when a write fails."""

from __future__ import annotations

import asyncio
import io
import time

import pytest

from bridge.backfill import Tally, _item, _publish
from bridge.dev.samples import sample
from bridge.errors import PublishFailed
from bridge.kafka.producer import KafkaPending, Translated
from bridge.progress import Progress
from tests.fakes import RecordingProducer, writer_for

STAMP = "2026-11-30T12:00:00Z"


def events(count: int, organizations: list[str], event_type: str = "organization.directory.user_updated") -> list:
    made = []
    for n in range(count):
        organization = organizations[n % len(organizations)]
        envelope = sample(event_type) | {"id": f"evt_{n:03d}", "organization_id": organization}
        envelope["data"] = envelope["data"] | {"organization_id": organization}
        made.append(_item(envelope, STAMP))
    return made


async def test_the_publish_timeout_of_a_handed_over_record_runs_from_the_hand_over_not_from_the_wait():
    """So waiting for 512 stalled records in turn takes one timeout, not 512 of them."""
    never: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    pending = KafkaPending(never, 1.0, Translated(1.0))
    await asyncio.sleep(1.1)  # the records before it took this long to settle

    started = time.monotonic()
    with pytest.raises(PublishFailed, match=r"no broker acknowledgement within 1s"):
        await pending.ack()
    assert time.monotonic() - started < 0.5  # not another whole second


async def test_the_first_refused_record_stops_the_hand_over_at_once():
    """The broker's refusal is known before anyone waits for it; nothing more is handed over."""
    refusal = PublishFailed("Kafka refused the write: NotEnoughReplicasError")
    producer = RecordingProducer(lose={"scalekit.organization.directory.user_updated": refusal})
    tally = Tally()

    await _publish(writer_for(producer), producer, events(50, ["org_a"]), Progress(io.StringIO()), tally,
                   asyncio.Event())

    assert len(producer.handed) == 1
    assert len(tally.failed) == 50 and tally.published == 0


async def test_sigterm_stops_the_hand_over_and_what_is_in_flight_gets_a_short_grace(monkeypatch):
    monkeypatch.setattr("bridge.backfill.STOPPING_GRACE_SECONDS", 0.2)
    producer = RecordingProducer()
    producer.hold = asyncio.Event()  # acknowledgements never come
    stopping = asyncio.Event()
    tally = Tally()
    items = events(30, ["org_a", "org_b"])

    async def terminate_soon() -> None:
        while len(producer.handed) < 5:
            await asyncio.sleep(0)
        stopping.set()

    started = time.monotonic()
    await asyncio.gather(
        _publish(writer_for(producer), producer, items, Progress(io.StringIO()), tally, stopping), terminate_soon()
    )

    assert time.monotonic() - started < 2
    assert len(producer.handed) < 30
    assert tally.failed == [item.origin.event_id for item in items]  # nothing acknowledged: all named


class _LateRefusal(RecordingProducer):
    """Acknowledges every record at once but one, whose refusal comes a little later (its batch expired)."""

    def __init__(self, refused_id: str) -> None:
        super().__init__()
        self._refused_id = refused_id

    async def send(self, message):
        pending = await super().send(message)
        if dict(message.headers).get("ce_id") == self._refused_id.encode():
            late = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(
                0.05, late.set_exception, PublishFailed("no broker acknowledgement within 8s")
            )
            pending._delivered = late
        await asyncio.sleep(0.01)  # the producer's pace
        return pending


async def test_an_event_acknowledged_after_an_earlier_one_of_its_organization_failed_is_named():
    items = events(40, ["org_a", "org_b"])  # evt_000 a, evt_001 b, evt_002 a, ...
    producer = _LateRefusal("evt_000")
    tally = Tally()

    await _publish(writer_for(producer), producer, items, Progress(io.StringIO()), tally, asyncio.Event())

    handed = [dict(m.headers)["ce_id"].decode() for m in producer.handed]
    assert 2 < len(handed) < 40  # the hand-over went on until the refusal came, then stopped
    later_of_a = [event_id for event_id in handed[1:] if int(event_id[4:]) % 2 == 0]
    assert tally.out_of_order == later_of_a and later_of_a  # only org_a's, and every one of them
    assert tally.failed == ["evt_000", *[item.origin.event_id for item in items[len(handed):]]]
