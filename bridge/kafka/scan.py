"""Reading what Kafka holds: the event ids and records in a window, and small state records.

For backfill and replay, which run as jobs: each call connects, reads without a consumer
group (nothing committed, no group ACL needed) and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from bridge.config import KafkaSettings
from bridge.core import StoredRecord
from bridge.envelope import KafkaMessage, event_id_of_record
from bridge.errors import PublishFailed
from bridge.kafka.options import connection_options


async def event_ids_since(
    settings: KafkaSettings, topics: Callable[[str], bool], since_ms: int, *, timeout: float
) -> tuple[set[str], int]:
    """Every event id in the `topics` that exist, written at or after `since_ms` (the broker's time index).

    Returns the ids and how many records were read. Reads without a consumer group
    (nothing is committed, no group ACL needed); topics that do not exist hold nothing.
    Raises PublishFailed when Kafka cannot be reached or stops answering for `timeout`.
    """
    ids: set[str] = set()

    def keep_id(record: ConsumerRecord[bytes, bytes]) -> None:
        found = event_id_of_record(record.headers, record.value)
        if found is not None:
            ids.add(found)

    read = await _read_topics(settings, topics, since_ms, keep_id, timeout=timeout)
    return ids, read


async def records_since(
    settings: KafkaSettings, topic: str, since_ms: int, keep: Callable[[StoredRecord], None], *, timeout: float
) -> int:
    """Hand `keep` each record of `topic` written at or after `since_ms` up to the end it has now, partition
    by partition in offset order; how many were read. Nothing when the topic does not exist.

    Raises PublishFailed like `event_ids_since`.
    """

    def visit(record: ConsumerRecord[bytes, bytes]) -> None:
        message = KafkaMessage(record.topic, record.key, record.value, tuple(record.headers))
        keep(StoredRecord(message, record.partition, record.offset, record.timestamp))

    return await _read_topics(settings, {topic}.__contains__, since_ms, visit, timeout=timeout)


async def latest_value(settings: KafkaSettings, topic: str, keys: Sequence[bytes], *, timeout: float) -> bytes | None:
    """The value of the last record with the first of `keys` that has one in `topic` (a small compacted topic),
    read in one scan; None when none has. Raises PublishFailed like `event_ids_since`."""
    found: dict[bytes, bytes | None] = {}

    def keep_latest(record: ConsumerRecord[bytes, bytes]) -> None:
        if record.key in keys:
            found[record.key] = record.value

    await _read_topics(settings, {topic}.__contains__, 0, keep_latest, timeout=timeout)
    return next((found[key] for key in keys if found.get(key) is not None), None)


async def put_value(settings: KafkaSettings, topic: str, key: bytes, value: bytes, *, timeout: float) -> None:
    """Write one record (acks=all, idempotent) to `topic`, creating it compacted when it is missing and the
    settings allow; raises PublishFailed when it is not acknowledged."""
    common = connection_options(settings)
    request_timeout_ms = int(timeout * 1000)
    producer = AIOKafkaProducer(
        acks="all",
        enable_idempotence=True,
        request_timeout_ms=request_timeout_ms,
        client_id="scalekit-bridge-backfill",
        **common,
    )
    admin = AIOKafkaAdminClient(request_timeout_ms=request_timeout_ms, client_id="scalekit-bridge-backfill", **common)
    try:
        async with asyncio.timeout(timeout):
            await producer.start()
            await admin.start()
            if settings.create_topics and topic not in await admin.list_topics():
                cluster = await admin.describe_cluster()
                replication, min_insync, _ = settings.replication_for(len(cluster["brokers"]))
                configs = {"cleanup.policy": "compact", "min.insync.replicas": str(min_insync)}
                response = await admin.create_topics([NewTopic(topic, 1, replication, topic_configs=configs)])
                for _name, code, *_rest in response.topic_errors:
                    if code and for_code(code) is not TopicAlreadyExistsError:
                        raise for_code(code)(f"creating topic {topic}")
            await producer.send_and_wait(topic, value=value, key=key)
    except (KafkaError, TimeoutError) as exc:
        raise PublishFailed(f"writing to {topic} failed: {type(exc).__name__}") from exc
    finally:
        with contextlib.suppress(Exception):  # closing must finish even when the broker is gone
            await producer.stop()
        with contextlib.suppress(Exception):
            await admin.close()


async def _read_topics(
    settings: KafkaSettings,
    topics: Callable[[str], bool],
    since_ms: int,
    visit: Callable[[ConsumerRecord[bytes, bytes]], None],
    *,
    timeout: float,
) -> int:
    """Hand `visit` every record of the existing `topics` written at or after `since_ms`; how many there were.

    Reads without a consumer group; raises PublishFailed when Kafka cannot be reached or stops answering.
    """
    common = connection_options(settings)
    request_timeout_ms = int(timeout * 1000)
    consumer = AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # a start offset retention has just deleted: begin at what is left
        request_timeout_ms=request_timeout_ms,
        client_id="scalekit-bridge-backfill",
        **common,
    )
    admin = AIOKafkaAdminClient(request_timeout_ms=request_timeout_ms, client_id="scalekit-bridge-backfill", **common)
    try:
        try:
            await consumer.start()
            await admin.start()
        except KafkaError as exc:
            raise PublishFailed(f"cannot reach Kafka at {settings.bootstrap_servers}: {type(exc).__name__}") from exc
        try:
            async with asyncio.timeout(timeout):
                partitions = await _partitions(consumer, admin, topics)
            return await _scan(consumer, partitions, since_ms, visit, timeout)
        except (KafkaError, TimeoutError) as exc:
            raise PublishFailed(f"reading the topics failed: {type(exc).__name__}") from exc
    finally:
        await consumer.stop()
        await admin.close()


async def _partitions(
    consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient, topics: Callable[[str], bool]
) -> list[TopicPartition]:
    # Describe only topics that exist: asking for a missing one may have the broker auto-create it.
    existing = sorted(topic for topic in await consumer.topics() if topics(topic))
    if not existing:
        return []
    described = await admin.describe_topics(existing)
    return [
        TopicPartition(topic["topic"], partition["partition"])
        for topic in described
        if not topic["error_code"]
        for partition in topic["partitions"]
    ]


async def _scan(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    since_ms: int,
    visit: Callable[[ConsumerRecord[bytes, bytes]], None],
    timeout: float,
) -> int:
    if not partitions:
        return 0
    # Assigned all at once so the client learns every topic's leaders in one metadata request (asked
    # one topic at a time, the offset lookup pays a retry per topic); paused until positioned.
    consumer.assign(partitions)
    consumer.pause(*partitions)
    async with asyncio.timeout(timeout):
        starts = await consumer.offsets_for_times(dict.fromkeys(partitions, since_ms))
        ends = await consumer.end_offsets(partitions)
    remaining: dict[TopicPartition, int] = {}
    for partition, start in starts.items():
        if start is not None and start.offset < ends[partition]:  # records in the window: read them
            consumer.seek(partition, start.offset)
            consumer.resume(partition)
            remaining[partition] = ends[partition]
    read = 0
    loop = asyncio.get_running_loop()
    progressed = loop.time()
    while remaining:
        # A deadline for progress, not for the scan: a long window may take a while, a dead broker may not.
        if loop.time() - progressed > timeout:
            raise TimeoutError
        batches = await consumer.getmany(*remaining, timeout_ms=500)
        for records in batches.values():
            read += len(records)
            progressed = loop.time()
            for record in records:
                visit(record)
        for partition in list(remaining):
            if await consumer.position(partition) >= remaining[partition]:
                del remaining[partition]
    return read
