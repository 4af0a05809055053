"""A topic's first use: created, found, or created a moment ago by another replica of the release.

The replicas of a new release meet each event type's topic together. One creates it; the others are told it
exists, and for a moment the broker (its metadata behind the controller's) still answers that it does not.
That moment is waited for; it is never a reason to dead-letter a valid event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from bridge.config import KafkaSettings
from bridge.errors import PublishFailed, RecordRejected
from bridge.kafka import producer as publish
from bridge.kafka.producer import KafkaPublisher

TOPIC_ALREADY_EXISTS = 36
UNKNOWN_TOPIC_OR_PARTITION = 3


@dataclass
class BrokerBehind:
    """An admin client of a broker that says the topic exists, then does not know it for `unknown_for` asks."""

    unknown_for: int
    limit: int = 2048
    asked: int = field(default=0)

    async def describe_cluster(self) -> dict[str, object]:
        return {"brokers": [{"node_id": 1}]}

    async def create_topics(self, topics: list[object]) -> object:
        return SimpleNamespace(topic_errors=[("t", TOPIC_ALREADY_EXISTS, None)])

    async def describe_configs(self, resources: list[object]) -> list[object]:
        self.asked += 1
        if self.asked <= self.unknown_for:
            return [SimpleNamespace(resources=[(UNKNOWN_TOPIC_OR_PARTITION, None, 2, "t", [])])]
        entries = [("max.message.bytes", str(self.limit), False, 5, False, [])]
        return [SimpleNamespace(resources=[(0, None, 2, "t", entries)])]


def publisher_on(admin: BrokerBehind, *, create_topics: bool = True, required: tuple[str, ...] = ()) -> KafkaPublisher:
    publisher = KafkaPublisher(
        KafkaSettings("127.0.0.1:9", create_topics=create_topics),
        timeout=2.0,
        max_record_bytes=1 << 20,
        required_topics=required,
    )
    publisher._admin = admin  # type: ignore[assignment]
    return publisher


async def test_a_topic_another_replica_just_created_is_waited_for_then_used_with_its_own_limit():
    admin = BrokerBehind(unknown_for=3)
    publisher = publisher_on(admin)

    assert await publisher._topic_limit("t") == 2048

    assert admin.asked == 4  # asked again until the broker served it


async def test_a_topic_said_to_exist_but_never_served_in_time_is_a_retry_not_a_dead_letter(monkeypatch):
    monkeypatch.setattr(publish, "_LEADER_WAIT_SECONDS", 0.2)
    publisher = publisher_on(BrokerBehind(unknown_for=10_000))

    with pytest.raises(PublishFailed, match="exists but Kafka does not serve it yet"):
        await publisher.ensure_topic("t")


async def test_a_missing_topic_the_bridge_may_not_create_is_refused_for_good():
    publisher = publisher_on(BrokerBehind(unknown_for=10_000), create_topics=False)

    with pytest.raises(RecordRejected, match="does not exist and the bridge may not create it"):
        await publisher.ensure_topic("t")


async def test_a_required_topic_not_served_yet_at_start_is_neither_fatal_nor_called_missing(monkeypatch):
    monkeypatch.setattr(publish, "_LEADER_WAIT_SECONDS", 0.2)
    publisher = publisher_on(BrokerBehind(unknown_for=10_000), required=("t",))

    await publisher._check_required_topics()  # at start: raising here would fail the connection

    assert publisher.missing_topics == frozenset()  # it exists; the next write asks again
