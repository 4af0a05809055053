"""Shared fixtures: a real Kafka for the session, and helpers to look inside it.

Where the broker comes from, in order: `KAFKA_BOOTSTRAP_SERVERS` if set;
testcontainers' Kafka container if a Docker engine answers; otherwise a local
single-node Apache Kafka started from Maven Central's jars (`bridge.dev.kafka`).
"""

from __future__ import annotations

import base64
import secrets
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bridge.dev.topics import Record, read_topics

__all__ = ["KafkaTool", "Record"]


@pytest.fixture(scope="session")
def kafka_bootstrap(scalekit_kafka: str) -> str:
    """Bootstrap address of a real Kafka broker, up for the whole session: the test kit's, found the
    same way any consumer team's suite finds it (`bridge.testing.kafka_bootstrap`)."""
    return scalekit_kafka


class KafkaTool:
    """Creates topics and reads back everything in them."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    async def create_topic(self, name: str, partitions: int = 1, configs: dict[str, str] | None = None) -> str:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(name, num_partitions=partitions, replication_factor=1, topic_configs=configs or {})]
            )
        finally:
            await admin.close()
        return name

    async def set_topic_config(self, topic: str, configs: dict[str, str]) -> None:
        """Change a topic's configuration, as an operator would with kafka-configs."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)])
        finally:
            await admin.close()

    async def topics(self) -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    async def partitions(self, topic: str) -> list[int]:
        """Partition numbers of `topic`; [] when it does not exist."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            if topic not in await admin.list_topics():
                return []
            (described,) = await admin.describe_topics([topic])
            return sorted(p["partition"] for p in described["partitions"])
        finally:
            await admin.close()

    async def read_all(self, topic: str, timeout: float = 10.0) -> list[Record]:
        """Every record in `topic` at this moment, in offset order per partition ([] if no topic)."""
        return await read_topics(self.bootstrap, {topic}.__contains__, timeout)


@pytest.fixture
def kafka(kafka_bootstrap: str) -> KafkaTool:
    return KafkaTool(kafka_bootstrap)


@pytest.fixture
def unique() -> str:
    """A short random token; tests put it in topic prefixes so they never share a topic."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def signing_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
