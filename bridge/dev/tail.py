"""`scalekit-bridge tail`: follow the bridge's topics and print each event on one line as it lands.

    2026-11-27T10:00:00.123Z  organization.directory.user_created  key=org_123  id=evt_1  {"email": "a@b.c", ...}

Reads without a consumer group (nothing is committed, no group ACL needed). Topics that appear while it
runs (the first event of a type creates its topic) are picked up within a couple of seconds and read
from the moment tail started, so `make run` + `send-test` + `tail` shows the whole path on one screen.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import time
from dataclasses import dataclass
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bridge.config import KafkaSettings
from bridge.envelope import is_event_topic, rebuild_delivery
from bridge.kafka.options import connection_options

_DISCOVERY_SECONDS = 2.0
_SUMMARY_CHARS = 100


@dataclass(frozen=True)
class Tail:
    """What to follow: the bridge's topics (prefix + type pattern) and its dead-letter topic."""

    kafka: KafkaSettings
    topic_prefix: str
    deadletter_topic: str
    type_pattern: str = "*"
    from_beginning: bool = False
    show_data: bool = False
    """Print a short excerpt of each event's data: personal data, so only when asked (`--show-data`)."""

    def follows(self, topic: str) -> bool:
        if topic == self.deadletter_topic:
            return True
        return is_event_topic(self.topic_prefix, topic) and fnmatch.fnmatchcase(
            topic.removeprefix(self.topic_prefix), self.type_pattern
        )


def describe(topic: str, deadletter_topic: str, timestamp_ms: int, key: bytes | None,
             headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...], value: bytes | None,
             *, show_data: bool = False) -> str:
    """One readable line for one record: time, type, key, id and, with `show_data`, a short excerpt of the data."""
    key_text = key.decode("utf-8", "replace") if key is not None else "-"
    if topic == deadletter_topic:
        reason = dict(headers).get("deadletter-reason", b"").decode("utf-8", "replace")
        return f"{_iso(timestamp_ms)}  DEAD LETTER  key={key_text}  reason={reason}"
    try:
        envelope = rebuild_delivery(headers, value)
    except (KeyError, ValueError):
        return f"{_iso(timestamp_ms)}  {topic}  key={key_text}  (not a CloudEvent record)"
    when = envelope.get("occurred_at", _iso(timestamp_ms))
    summary = _summary(envelope.get("data")) if show_data else ""
    return f"{when}  {envelope['type']}  key={key_text}  id={envelope['id']}  {summary}".rstrip()


async def follow(
    tail: Tail,
    out: TextIO,
    *,
    count: int | None = None,
    stop: asyncio.Event | None = None,
    following: asyncio.Event | None = None,
) -> int:
    """Print records as they land until `count` were printed or `stop` is set; returns how many.

    `following` is set once tail is connected and positioned: what lands after that is printed.
    """
    options = connection_options(tail.kafka)
    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, client_id="scalekit-bridge-tail", **options)
    admin = AIOKafkaAdminClient(client_id="scalekit-bridge-tail", **options)
    await consumer.start()
    await admin.start()
    started_ms = int(time.time() * 1000)
    printed = 0
    try:
        assigned: set[TopicPartition] = set()
        next_discovery = 0.0
        loop = asyncio.get_running_loop()
        while (count is None or printed < count) and not (stop is not None and stop.is_set()):
            if loop.time() >= next_discovery:
                assigned = await _assign_new(consumer, admin, tail, assigned, started_ms)
                next_discovery = loop.time() + _DISCOVERY_SECONDS
                if following is not None:
                    following.set()
            if not assigned:
                await asyncio.sleep(0.2)
                continue
            batches = await consumer.getmany(timeout_ms=200)
            records = sorted((r for batch in batches.values() for r in batch), key=lambda r: r.timestamp)
            for record in records:
                line = describe(record.topic, tail.deadletter_topic, record.timestamp, record.key,
                                record.headers, record.value, show_data=tail.show_data)
                print(line, file=out, flush=True)
                printed += 1
                if count is not None and printed >= count:
                    break
    finally:
        await consumer.stop()
        await admin.close()
    return printed


async def _assign_new(
    consumer: AIOKafkaConsumer,
    admin: AIOKafkaAdminClient,
    tail: Tail,
    assigned: set[TopicPartition],
    started_ms: int,
) -> set[TopicPartition]:
    """Add the partitions of newly matching topics, keeping where the others are."""
    topics = sorted(topic for topic in await admin.list_topics() if tail.follows(topic))
    if not topics:
        return assigned
    wanted = {
        TopicPartition(described["topic"], partition["partition"])
        for described in await admin.describe_topics(topics)
        if not described["error_code"]
        for partition in described["partitions"]
    }
    new = wanted - assigned
    if not new:
        return assigned
    positions = {partition: await consumer.position(partition) for partition in assigned}
    consumer.assign(list(wanted))
    for partition, offset in positions.items():
        consumer.seek(partition, offset)
    if tail.from_beginning:
        await consumer.seek_to_beginning(*new)
    else:
        starts = await consumer.offsets_for_times(dict.fromkeys(new, started_ms))
        for partition, found in starts.items():
            if found is None:
                await consumer.seek_to_end(partition)
            else:
                consumer.seek(partition, found.offset)
    return wanted


def _summary(data: Any) -> str:
    if data is None:
        return ""
    text = json.dumps(data, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= _SUMMARY_CHARS else text[: _SUMMARY_CHARS - 1] + "…"


def _iso(timestamp_ms: int) -> str:
    seconds, millis = divmod(timestamp_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"
