"""One record per Scalekit event across a release (BRIDGE_DEDUP): whichever replica gets the retry, across
restarts, and after backfill and replay, on the real broker."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from bridge.envelope import organization_of
from tests.conftest import KafkaTool
from tests.fake_scalekit import FakeScalekit, sample_events
from tests.helpers import body_of, signed_headers
from tests.integration.conftest import SECRET, BridgeProcess
from tests.integration.test_backfill import BackfillCommand
from tests.integration.test_replay import ReplayCommand

NOW = datetime.now(UTC)
ORGANIZATIONS = tuple(f"org_{n:02d}" for n in range(12))


@pytest.fixture
def scalekit() -> Iterator[FakeScalekit]:
    fake = FakeScalekit()
    fake.start()
    yield fake
    fake.stop()


class Fleet:
    """A release's replicas behind a Service: a delivery goes to one, and on a refusal or a closed port to the
    next that is up, as Scalekit's retry would reach another pod."""

    def __init__(self, bridge_process: type[BridgeProcess], kafka: KafkaTool, prefix: str) -> None:
        self._start = lambda: bridge_process("serve", prefix=prefix, KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap)
        self.replicas: list[BridgeProcess] = []
        self.outcomes: dict[str, list[str]] = defaultdict(list)  # event id -> each 201's outcome
        self.answered_by: dict[str, int] = {}  # event id -> the port that answered its first 201

    async def scale_to(self, count: int) -> None:
        started = [self._start() for _ in range(count)]
        for replica in started:
            await replica.wait_for_readiness(200, timeout=60)
        self.replicas.extend(started)

    async def roll(self) -> None:
        """Replace each replica in turn: out of the Service, SIGTERM (it drains), and a new one in once ready."""
        for old in list(self.replicas):
            self.replicas.remove(old)
            old.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(old.process.wait, 30)
            assert old.process.returncode == 0, old.output()
            new = self._start()
            await new.wait_for_readiness(200, timeout=60)
            self.replicas.append(new)

    async def deliver(self, session: aiohttp.ClientSession, envelope: dict[str, Any], first: int) -> None:
        """Deliver until a replica answers 201, starting at replica `first`; then retry to a different one."""
        event_id = envelope["id"]
        attempt = first
        while event_id not in self.answered_by:
            replica = self.replicas[attempt % len(self.replicas)]
            attempt += 1
            status, outcome = await _post(session, replica, envelope)
            if status == 201:
                self.outcomes[event_id].append(outcome)
                self.answered_by[event_id] = replica.port

    async def retry_elsewhere(self, session: aiohttp.ClientSession, envelope: dict[str, Any]) -> None:
        """Scalekit's retry of a delivery whose 201 it did not see, reaching a replica other than the first."""
        others = [replica for replica in self.replicas if replica.port != self.answered_by[envelope["id"]]]
        status, outcome = await _post(session, others[hash(envelope["id"]) % len(others)], envelope)
        assert status == 201
        self.outcomes[envelope["id"]].append(outcome)

    async def wait_until_each_remembers(self, count: int) -> None:
        """Until every replica holds `count` event ids: the receipts written are all read (the propagation
        window, the one a retry must not fall in)."""
        for replica in self.replicas:
            for _ in range(300):
                if sample_value(await replica.metrics(), "scalekit_bridge_dedup_remembered_ids") >= count:
                    break
                await asyncio.sleep(0.1)
            else:
                held = sample_value(await replica.metrics(), "scalekit_bridge_dedup_remembered_ids")
                unwritten = {event_id: found[0] for event_id, found in self.outcomes.items() if found[0] != "published"}
                raise AssertionError(f"a replica remembers {held:g} ids, not {count}; first answers not published: "
                                     f"{unwritten}")


async def _post(session: aiohttp.ClientSession, replica: BridgeProcess, envelope: dict[str, Any]) -> tuple[int, str]:
    body = body_of(envelope)
    headers = signed_headers(SECRET, body, webhook_id=f"msg_{envelope['id']}")  # a retry keeps its webhook-id
    try:
        async with session.post(replica.url, data=body, headers=headers) as response:
            answer = await response.json(content_type=None)
            return response.status, answer.get("outcome", answer.get("error", ""))
    except aiohttp.ClientError:  # the pod is gone: the Service sends the retry elsewhere
        return 0, "unreachable"


async def receipts_once_written(kafka: KafkaTool, topic: str) -> list[Any]:
    """The receipts topic once it holds something: a receipt is written within about 50 ms of its 201."""
    for _ in range(300):
        found = await kafka.read_all(topic)
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"no receipt reached {topic}")


def sample_value(exposition: str, series: str, labels: dict[str, str] | None = None) -> float:
    """The value of one series in a Prometheus text exposition (0 when absent)."""
    wanted = series + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in exposition.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def deliver_in_organization_order(
    fleet: Fleet, session: aiohttp.ClientSession, events: list[dict[str, Any]]
) -> None:
    """Each organization's events one after another (its order is the one asserted), organizations at once."""
    by_organization: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for envelope in events:
        by_organization[organization_of(envelope) or envelope["environment_id"]].append(envelope)

    async def deliver_all(envelopes: list[dict[str, Any]]) -> None:
        for position, envelope in enumerate(envelopes):
            await fleet.deliver(session, envelope, first=position)

    await asyncio.gather(*(deliver_all(envelopes) for envelopes in by_organization.values()))


async def records_by_event(kafka: KafkaTool, prefix: str, events: list[dict[str, Any]]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = defaultdict(list)
    for event_type in sorted({envelope["type"] for envelope in events}):
        for record in await kafka.read_all(prefix + event_type):
            found[dict(record.headers)["ce_id"].decode()].append(record)
    return found


def organization_order_holds(events: list[dict[str, Any]], records: dict[str, list[Any]]) -> bool:
    """Within each topic and organization, the records are in the order the events were sent."""
    sent = {envelope["id"]: position for position, envelope in enumerate(events)}
    per_key: dict[tuple[str, bytes], list[tuple[int, int]]] = defaultdict(list)
    for event_id, (record,) in records.items():
        per_key[(record.topic, record.key)].append((record.offset, sent[event_id]))
    return all([position for _, position in sorted(pairs)] == sorted(p for _, p in pairs) for pairs in per_key.values())


@pytest.mark.parametrize(
    "roll_while_delivering", [False, True], ids=["restart-between-deliveries", "restart-during-deliveries"]
)
async def test_1000_events_each_retried_to_another_replica_through_a_rolling_restart_are_1000_records(
    bridge_process, kafka, scalekit, unique, roll_while_delivering
):
    """Three replicas; each event delivered to one and retried to another; all three replaced in the middle;
    then a backfill and a replay of the same window. Exactly 1,000 records, each once, in organization order."""
    prefix = f"t{unique}."
    events = sample_events(
        1000, start=NOW - timedelta(minutes=50), step=timedelta(seconds=2), organizations=ORGANIZATIONS
    )
    fleet = Fleet(bridge_process, kafka, prefix)
    await fleet.scale_to(3)

    async with aiohttp.ClientSession() as session:
        await deliver_in_organization_order(fleet, session, events[:400])
        if roll_while_delivering:  # the rolling restart runs while the next 350 events are being delivered
            await asyncio.gather(fleet.roll(), deliver_in_organization_order(fleet, session, events[400:750]))
        else:  # between them
            await fleet.roll()
            await deliver_in_organization_order(fleet, session, events[400:750])
        await deliver_in_organization_order(fleet, session, events[750:])
        await fleet.wait_until_each_remembers(1000)
        await asyncio.gather(*(fleet.retry_elsewhere(session, envelope) for envelope in events))

    assert sorted(fleet.answered_by) == sorted(envelope["id"] for envelope in events)  # every event got a 201
    # Written the first time (none dead-lettered: the replicas met each topic at once), stopped every retry.
    assert {event_id: outcomes[0] for event_id, outcomes in fleet.outcomes.items()} == {
        envelope["id"]: "published" for envelope in events
    }
    assert {event_id: outcomes[-1] for event_id, outcomes in fleet.outcomes.items()} == {
        envelope["id"]: "duplicate" for envelope in events
    }
    records = await records_by_event(kafka, prefix, events)
    assert {event_id: len(found) for event_id, found in records.items()} == {envelope["id"]: 1 for envelope in events}
    assert organization_order_holds(events, records)

    for envelope in events:
        scalekit.add(envelope)
    backfilled = BackfillCommand(scalekit, kafka.bootstrap, unique)("--since", "2h")
    replayed = ReplayCommand(kafka.bootstrap, prefix)("--since", "2h")

    assert backfilled.returncode == 0, backfilled.stderr
    assert backfilled.summary.startswith("fetched 1000, already in Kafka 1000, published 0,")
    assert replayed.returncode == 0, replayed.stderr
    after = await records_by_event(kafka, prefix, events)
    assert {event_id: len(found) for event_id, found in after.items()} == {envelope["id"]: 1 for envelope in events}


async def test_a_retry_after_backfill_wrote_the_event_is_answered_duplicate_by_every_replica(
    bridge_process, kafka, scalekit, unique
):
    """Scalekit's deliveries failed, backfill wrote the events, then Scalekit's retries arrive: no second record."""
    prefix = f"t{unique}."
    events = sample_events(5, start=NOW - timedelta(minutes=30), organizations=ORGANIZATIONS)
    for envelope in events:
        scalekit.add(envelope)
    fleet = Fleet(bridge_process, kafka, prefix)
    await fleet.scale_to(2)

    backfilled = BackfillCommand(scalekit, kafka.bootstrap, unique)("--since", "2h")
    assert backfilled.summary.startswith("fetched 5, already in Kafka 0, published 5,"), backfilled.stderr
    await fleet.wait_until_each_remembers(5)
    async with aiohttp.ClientSession() as session:
        answers = [await _post(session, replica, envelope) for envelope in events for replica in fleet.replicas]

    assert answers == [(201, "duplicate")] * 10
    stopped = sample_value(
        await fleet.replicas[0].metrics(),
        "scalekit_bridge_dedup_duplicates_total",
        {"source": "webhook", "written_by": "backfill"},
    )
    assert stopped == 5
    records = await records_by_event(kafka, prefix, events)
    assert {event_id: len(found) for event_id, found in records.items()} == {envelope["id"]: 1 for envelope in events}


async def test_a_replica_killed_after_its_201_is_replaced_by_one_that_knows_the_event(bridge_process, kafka, unique):
    """An OOM kill after the answer: the new pod reads the receipt before it is ready, and the retry writes nothing."""
    prefix = f"t{unique}."
    (envelope,) = sample_events(1, start=NOW - timedelta(minutes=1))
    fleet = Fleet(bridge_process, kafka, prefix)
    await fleet.scale_to(1)
    async with aiohttp.ClientSession() as session:
        assert await _post(session, fleet.replicas[0], envelope) == (201, "published")
        receipts = await receipts_once_written(kafka, f"{prefix}dedup-receipts")
        assert [(record.key, json.loads(record.value)["source"]) for record in receipts] == [
            (envelope["id"].encode(), "webhook")
        ]
        fleet.replicas[0].kill()
        fleet.replicas.clear()
        await fleet.scale_to(1)
        assert await _post(session, fleet.replicas[0], envelope) == (201, "duplicate")
    assert len(await kafka.read_all(prefix + envelope["type"])) == 1


async def test_with_dedup_off_a_retry_to_another_replica_is_written_again(bridge_process, kafka, unique):
    """BRIDGE_DEDUP=off keeps 0.2's behaviour: each replica remembers only its own deliveries."""
    prefix = f"t{unique}."
    (envelope,) = sample_events(1, start=NOW - timedelta(minutes=1))
    first = bridge_process("serve", prefix=prefix, KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap, BRIDGE_DEDUP="off")
    second = bridge_process("serve", prefix=prefix, KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap, BRIDGE_DEDUP="off")
    for replica in (first, second):
        await replica.wait_for_readiness(200, timeout=60)
    async with aiohttp.ClientSession() as session:
        answers = [await _post(session, replica, envelope) for replica in (first, second)]

    assert answers == [(201, "published"), (201, "published")]
    assert len(await kafka.read_all(prefix + envelope["type"])) == 2
    assert f"{prefix}dedup-receipts" not in await kafka.topics()
