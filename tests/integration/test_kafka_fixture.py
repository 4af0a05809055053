"""The test broker is a real Kafka: an idempotent, acks=all write can be read back."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer

pytestmark = pytest.mark.integration


async def test_an_acknowledged_idempotent_write_is_readable(kafka, unique):
    """What every delivery test relies on: acks=all + idempotence, then a consumer sees the record."""
    topic = await kafka.create_topic(f"fixture-{unique}", partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        metadata = await producer.send_and_wait(topic, b"payload", key=b"org_1", headers=[("h", b"v")])
    finally:
        await producer.stop()

    records = await kafka.read_all(topic)

    assert [(r.partition, r.offset, r.key, r.value, r.headers) for r in records] == [
        (metadata.partition, metadata.offset, b"org_1", b"payload", (("h", b"v"),))
    ]


async def test_reading_a_missing_topic_finds_nothing(kafka, unique):
    """Tests that expect 'nothing written' can ask about topics that were never created."""
    assert await kafka.read_all(f"never-created-{unique}") == []
