"""Fault trials on a real 3-broker cluster: no acknowledged delivery is ever lost, and per-organization order holds.

Each trial drives `scalekit-bridge serve` with organizations that send their events one at a time and
retry until 201, as Scalekit does; then it reads the topic back and checks that every `ce_id` answered
201 is there and that, per organization, first copies are in sending order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bridge.dev.kafka import LocalKafka
from bridge.dev.samples import sample
from tests.conftest import KafkaTool
from tests.helpers import body_of, signed_headers
from tests.integration.conftest import SECRET

pytestmark = pytest.mark.integration

EVENT_TYPE = "organization.directory.user_updated"
ORGANIZATIONS = [f"org_trial_{n}" for n in range(8)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalKafka]:
    """Three brokers and one controller, of this module's own: the trials kill and freeze brokers."""
    with LocalKafka(brokers=3) as kafka:
        yield kafka


@dataclass
class Load:
    """Organizations sending events in order, each retried (same webhook-id) until it is acknowledged."""

    url: str
    statuses: dict[int, int] = field(default_factory=dict)
    acknowledged: dict[str, list[int]] = field(default_factory=dict)
    acknowledged_at: list[float] = field(default_factory=list)
    running: bool = True

    async def organization(self, org: str, session: aiohttp.ClientSession) -> None:
        sequence = 0
        while self.running:
            envelope = sample(EVENT_TYPE) | {"id": f"evt_{org}_{sequence:06d}", "organization_id": org}
            body = body_of(envelope)
            webhook_id = f"msg_{org}_{sequence:06d}"
            while True:  # Scalekit's side: the same delivery until it is acknowledged
                status = await self.post(session, body, webhook_id)
                if status == 201:
                    self.acknowledged.setdefault(org, []).append(sequence)
                    self.acknowledged_at.append(time.monotonic())
                    break
                await asyncio.sleep(0.2)
            sequence += 1
            await asyncio.sleep(0.02)

    async def post(self, session: aiohttp.ClientSession, body: bytes, webhook_id: str) -> int:
        try:
            async with session.post(self.url, data=body, headers=signed_headers(SECRET, body, webhook_id=webhook_id),
                                    timeout=aiohttp.ClientTimeout(total=15)) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            status = 0  # no answer: the bridge was killed, or the connection dropped
        self.statuses[status] = self.statuses.get(status, 0) + 1
        return status

    @contextlib.asynccontextmanager
    async def running_for(self, organizations: list[str] = ORGANIZATIONS):
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(self.organization(org, session)) for org in organizations]
            try:
                yield self
            finally:
                self.running = False
                # Each organization finishes the delivery it is on: retried until acknowledged.
                async with asyncio.timeout(90):
                    await asyncio.gather(*tasks)

    def since(self, moment: float) -> int:
        return sum(1 for at in self.acknowledged_at if at > moment)


async def check_nothing_acknowledged_was_lost(kafka: KafkaTool, topic: str, load: Load) -> int:
    records = await kafka.read_all(topic, timeout=60)
    first_seen: dict[str, list[int]] = {}
    seen: set[str] = set()
    for record in records:  # offset order within each partition; one organization is one partition
        event_id = record.header("ce_id").decode()
        org, sequence = event_id.removeprefix("evt_").rsplit("_", 1)
        if event_id not in seen:
            seen.add(event_id)
            first_seen.setdefault(org, []).append(int(sequence))
    acknowledged = {f"evt_{org}_{s:06d}" for org, sequences in load.acknowledged.items() for s in sequences}
    assert acknowledged, "the load never got a delivery through"
    missing = acknowledged - seen
    assert not missing, f"{len(missing)} acknowledged deliveries are not in Kafka: {sorted(missing)[:5]}"
    for org, sequences in first_seen.items():
        assert sequences == sorted(sequences), f"{org}'s events are out of order"
    return len(acknowledged)


async def restart(cluster: LocalKafka, broker: int) -> None:
    cluster.launch(broker)  # from this (the main) thread: a node dies with the thread that launched it
    await asyncio.to_thread(cluster.wait_listening, broker)


async def leader_of(bootstrap: str, topic: str, partition: int) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return next(p["leader"] for p in described["partitions"] if p["partition"] == partition)
    finally:
        await admin.close()


async def partition_of(kafka: KafkaTool, topic: str, org: str) -> int:
    return next(r.partition for r in await kafka.read_all(topic) if r.key == org.encode())


async def started_bridge(bridge_process, cluster: LocalKafka, **env: str):
    bridge = bridge_process("serve", KAFKA_BOOTSTRAP_SERVERS=cluster.bootstrap_servers, BRIDGE_PUBLISH_TIMEOUT="3",
                            BRIDGE_LOG_LEVEL="WARNING", **env)
    await bridge.wait_for_readiness(200, timeout=60)
    # The topic exists, created by the bridge, before the faults begin.
    warmup = sample(EVENT_TYPE) | {"id": "evt_warmup_000000", "organization_id": ORGANIZATIONS[0]}
    assert (await bridge.deliver(warmup))[0] == 201
    return bridge


async def test_the_bridge_creates_topics_with_three_replicas_and_two_in_sync(cluster, bridge_process):
    bridge = await started_bridge(bridge_process, cluster)
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers)
    await admin.start()
    try:
        topic = bridge.prefix + EVENT_TYPE
        (described,) = await admin.describe_topics([topic])
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    assert {len(p["replicas"]) for p in described["partitions"]} == {3}
    entries = {name: value for _, _, _, _, config, *_ in response.resources for name, value, *_ in config}
    assert entries["min.insync.replicas"] == "2"


async def test_the_partition_leader_killed_under_load_loses_no_acknowledged_delivery(cluster, bridge_process):
    bridge = await started_bridge(bridge_process, cluster)
    kafka = KafkaTool(cluster.bootstrap_servers)
    topic = bridge.prefix + EVENT_TYPE
    leader = await leader_of(cluster.bootstrap_servers, topic, await partition_of(kafka, topic, ORGANIZATIONS[0]))
    load = Load(bridge.url)
    async with load.running_for():
        await asyncio.sleep(3)
        cluster.kill(leader)
        killed_at = time.monotonic()
        await asyncio.sleep(8)
        assert load.since(killed_at) > 0, "deliveries resume on the new leader while the old one is dead"
        await restart(cluster, leader)
        await asyncio.sleep(3)
    total = await check_nothing_acknowledged_was_lost(kafka, topic, load)
    print(f"leader killed: {total} acknowledged, statuses {load.statuses}")


async def test_with_two_of_three_brokers_down_writes_are_refused_never_acknowledged(cluster, bridge_process):
    bridge = await started_bridge(bridge_process, cluster)
    kafka = KafkaTool(cluster.bootstrap_servers)
    topic = bridge.prefix + EVENT_TYPE
    load = Load(bridge.url)
    async with load.running_for():
        await asyncio.sleep(2)
        down = cluster.broker_ids[:2]
        for broker in down:
            cluster.kill(broker)
        await asyncio.sleep(5)  # fenced, ISR shrunk to one: below min.insync.replicas
        refused_from = time.monotonic()
        await asyncio.sleep(6)
        assert load.since(refused_from) == 0, "a write was acknowledged with one replica in sync"
        assert load.statuses.get(503, 0) > 0
        for broker in down:
            await restart(cluster, broker)
        await asyncio.sleep(5)
    assert load.since(refused_from) > 0, "writes resume once the brokers are back"
    total = await check_nothing_acknowledged_was_lost(kafka, topic, load)
    print(f"two brokers down: {total} acknowledged, statuses {load.statuses}")


async def test_a_frozen_leader_means_503_within_the_publish_timeout_then_recovery_without_restart(
    cluster, bridge_process
):
    bridge = await started_bridge(bridge_process, cluster)
    kafka = KafkaTool(cluster.bootstrap_servers)
    topic = bridge.prefix + EVENT_TYPE
    org = ORGANIZATIONS[0]
    leader = await leader_of(cluster.bootstrap_servers, topic, await partition_of(kafka, topic, org))
    cluster.pause(leader)
    try:
        started = time.monotonic()
        status, answer = await bridge.deliver(sample(EVENT_TYPE) | {"id": "evt_frozen_1", "organization_id": org})
        took = time.monotonic() - started
        assert (status, answer["error"]) == (503, "kafka_unavailable")
        assert took < 3 + 1, f"answered after {took:.1f}s with a 3 s publish timeout"

        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:  # the controller fences the frozen broker; a follower leads
            status, _ = await bridge.deliver(sample(EVENT_TYPE) | {"id": "evt_frozen_2", "organization_id": org},
                                             webhook_id="msg_frozen_2")
            if status == 201:
                break
            await asyncio.sleep(1)
        assert status == 201, "the bridge recovers by itself while the old leader is still frozen"
    finally:
        cluster.resume(leader)
    # The resumed broker may answer a reader with its stale view (still leader, old high watermark) for a
    # moment before it learns it was fenced; the acknowledged record must be there once it has.
    deadline = time.monotonic() + 30
    ids: set[bytes | None] = set()
    while b"evt_frozen_2" not in ids and time.monotonic() < deadline:
        ids = {r.header("ce_id") for r in await kafka.read_all(topic)}
        await asyncio.sleep(1)
    assert b"evt_frozen_2" in ids


async def test_a_rolling_restart_of_every_broker_under_load_loses_nothing(cluster, bridge_process):
    bridge = await started_bridge(bridge_process, cluster)
    kafka = KafkaTool(cluster.bootstrap_servers)
    topic = bridge.prefix + EVENT_TYPE
    load = Load(bridge.url)
    async with load.running_for():
        for broker in cluster.broker_ids:
            await asyncio.to_thread(cluster.terminate, broker)
            await asyncio.sleep(1)
            await restart(cluster, broker)
            await asyncio.sleep(6)  # back in sync before the next one goes
    total = await check_nothing_acknowledged_was_lost(kafka, topic, load)
    print(f"rolling restart: {total} acknowledged, statuses {load.statuses}")


async def test_the_bridge_killed_under_load_and_restarted_loses_no_acknowledged_delivery(cluster, bridge_process):
    first = await started_bridge(bridge_process, cluster)
    kafka = KafkaTool(cluster.bootstrap_servers)
    topic = first.prefix + EVENT_TYPE
    load = Load(first.url)
    async with load.running_for():
        await asyncio.sleep(3)
        first.process.kill()
        killed_at = time.monotonic()
        await asyncio.sleep(1)
        second = bridge_process("serve", KAFKA_BOOTSTRAP_SERVERS=cluster.bootstrap_servers, BRIDGE_LOG_LEVEL="WARNING",
                                BRIDGE_PORT=str(first.port), BRIDGE_TOPIC_PREFIX=first.prefix,
                                BRIDGE_DEADLETTER_TOPIC=first.prefix + "deadletter")
        await second.wait_for_readiness(200, timeout=60)
        await asyncio.sleep(3)
    assert load.since(killed_at) > 0, "the deliveries in flight at the kill succeed on retry"
    assert load.statuses.get(0, 0) > 0, "some deliveries really were cut off by the kill"
    total = await check_nothing_acknowledged_was_lost(kafka, topic, load)
    print(f"bridge killed: {total} acknowledged, statuses {load.statuses}")
