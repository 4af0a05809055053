"""The receipts topic: writing a receipt beside the records, and following every receipt of the window.

`ReceiptWriter` has a producer of its own, so receipts never wait in (or hold up) the requests that carry
the records whose acknowledgement a 201 waits for; it batches them for longer, and places each by a CRC of
its key (the same partition for the same event id on every replica, without murmur2 in Python).

`ReceiptTail` reads without a consumer group (every replica reads every partition; nothing is committed, no group
ACL needed), from the first receipt written within the window, and says when it has read what the
topic held when it began (`caught_up`; `serve` is not ready before). From then on it keeps
following, and `lag_seconds` says how long ago it last held every receipt written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import zlib
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from bridge.config import KafkaSettings
from bridge.kafka.options import connection_options

log = logging.getLogger(__name__)

# A receipt another replica wrote reaches this one within about a fetch's wait once it is in the topic.
_FETCH_WAIT_MS = 100
_POLL_MS = 250
_RETRY_SECONDS = (0.5, 10.0)
# Receipts wait up to this long to share a request: a retry comes seconds later, a 201 does not wait for them.
_RECEIPT_LINGER_MS = 50
# Receipts queued while Kafka does not take them; past it a receipt is dropped (and counted) rather than kept.
_MAX_QUEUED = 100_000

Apply = Callable[[bytes | None, bytes | None, int], bool]


class ReceiptLog:
    """The receipts topic for `serve`: a writer and a tail, ready once both are (connected, window read)."""

    def __init__(self, writer: ReceiptWriter, tail: ReceiptTail) -> None:
        self.writer = writer
        self.tail = tail

    @property
    def ready(self) -> bool:
        return self.writer.connected and self.tail.caught_up

    async def wait_ready(self) -> None:
        await self.writer.wait_connected()
        await self.tail.wait_caught_up()

    async def run(self) -> None:
        """Connect the writer and follow the topic until cancelled."""
        await asyncio.gather(self.writer.run(), self.tail.run())

    async def use_settings(self, settings: KafkaSettings) -> None:
        """Rotated credentials: the writer reconnects now, the tail at its next connection."""
        self.tail.use_settings(settings)
        await self.writer.use_settings(settings)

    async def stop(self) -> None:
        await self.writer.stop()


class ReceiptTail:
    """Reads the receipts topic into `apply(key, value, timestamp_ms)`, from `window_seconds` ago onwards."""

    def __init__(self, settings: KafkaSettings, topic: str, window_seconds: float, apply: Apply) -> None:
        self._settings = settings
        self._topic = topic
        self._window_ms = int(window_seconds * 1000)
        self._apply = apply
        self._positions: dict[TopicPartition, int] = {}  # the next offset to read, once positioned
        self._caught_up = asyncio.Event()
        # Monotonic time this process last held every receipt (its start, until it has read them).
        self._held_all_at = time.monotonic()
        self.read = 0

    def use_settings(self, settings: KafkaSettings) -> None:
        """Rotated credentials, for the next connection (the current one stays authenticated)."""
        self._settings = settings

    @property
    def caught_up(self) -> bool:
        """True once the receipts the topic held at the start (within the window) are all read."""
        return self._caught_up.is_set()

    async def wait_caught_up(self) -> None:
        await self._caught_up.wait()

    def lag_seconds(self) -> float:
        """About 0 while every receipt written is read; else how long since that was last so (or since start)."""
        return max(0.0, time.monotonic() - self._held_all_at - _POLL_MS / 1000)

    async def run(self) -> None:
        """Follow the topic until cancelled, connecting again (backing off) whenever the connection fails."""
        delay, longest = _RETRY_SECONDS
        said: str | None = None
        while True:
            try:
                await self._follow()
            except (KafkaError, OSError, TimeoutError) as exc:
                if type(exc).__name__ != said:
                    log.warning("reading the receipts failed; retrying", extra={"error": type(exc).__name__})
                    said = type(exc).__name__
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # a position retention has just deleted: go on from what is left
            fetch_max_wait_ms=_FETCH_WAIT_MS,
            client_id="scalekit-bridge-receipts",
            **connection_options(self._settings),
        )
        admin = AIOKafkaAdminClient(client_id="scalekit-bridge-receipts", **connection_options(self._settings))
        await consumer.start()
        try:
            await admin.start()
            try:
                partitions = await self._partitions(consumer, admin)
            finally:
                await admin.close()
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            await self._position(consumer, partitions, ends)
            started = time.monotonic()
            while True:
                batches = await consumer.getmany(*partitions, timeout_ms=_POLL_MS)
                for records in batches.values():
                    for record in records:
                        self._apply(record.key, record.value, record.timestamp)
                    self.read += len(records)
                # The consumer's own positions: past records retention deleted under it, too.
                for partition in partitions:
                    self._positions[partition] = await consumer.position(partition)
                if all(self._positions[p] >= ends[p] for p in partitions) and not self.caught_up:
                    self._caught_up.set()
                    log.info(
                        "receipts read",
                        extra={"receipts": self.read, "seconds": round(time.monotonic() - started, 3)},
                    )
                if self.caught_up and all(self._positions[p] >= (consumer.highwater(p) or 0) for p in partitions):
                    self._held_all_at = time.monotonic()
        finally:
            with contextlib.suppress(Exception):  # closing must finish even when the broker is gone
                await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient) -> list[TopicPartition]:
        """The topic's partitions, once it exists (the publisher creates it, or the chart's KafkaTopic does)."""
        while True:
            # Described only once listed: asking for a missing topic may have the broker auto-create it.
            if self._topic in await consumer.topics():
                (described,) = await admin.describe_topics([self._topic])
                found = sorted(partition["partition"] for partition in described["partitions"])
                if not described["error_code"] and found:
                    return [TopicPartition(self._topic, partition) for partition in found]
            await asyncio.sleep(1.0)

    async def _position(
        self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition], ends: dict[TopicPartition, int]
    ) -> None:
        """Where a partition is read from: where this process left it, else the window's first receipt."""
        fresh = [partition for partition in partitions if partition not in self._positions]
        if fresh:
            since = time.time_ns() // 1_000_000 - self._window_ms
            starts = await consumer.offsets_for_times(dict.fromkeys(fresh, since))
            for partition in fresh:
                start = starts.get(partition)
                self._positions[partition] = ends[partition] if start is None else start.offset
        for partition in partitions:
            consumer.seek(partition, self._positions[partition])


class ReceiptWriter:
    """Writes receipts from a queue, in batches of its own producer (acks=all), so the delivery that noted one
    never waits on a producer: `hand` only queues. Every `_RECEIPT_LINGER_MS` the queue goes out as one batch
    per partition: one future per batch, not per receipt, which is what a receipt's cost comes down to."""

    def __init__(self, settings: KafkaSettings, topic: str, *, timeout: float, lost: Callable[[int], None]) -> None:
        self._settings = settings
        self._topic = topic
        self._timeout = timeout
        self._lost = lost  # told how many receipts were not written, each time some are not
        self._said: str | None = None
        self._producer: AIOKafkaProducer | None = None
        self._partitions = 0
        self._connected = asyncio.Event()
        self._queue: list[tuple[bytes, bytes]] = []
        self._queued = asyncio.Event()
        self._in_flight: set[asyncio.Future[Any]] = set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def run(self) -> None:
        """Connect, retrying (backing off) until Kafka answers, then write queued receipts until cancelled."""
        delay, longest = _RETRY_SECONDS
        while self._producer is None:
            try:
                await self._connect()
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("the receipt writer cannot reach Kafka yet; retrying", extra={"error": type(exc).__name__})
                await asyncio.sleep(delay)
                delay = min(delay * 2, longest)
        while True:
            await self._queued.wait()
            await asyncio.sleep(_RECEIPT_LINGER_MS / 1000)  # let the receipts of a burst share batches
            self._queued.clear()
            await self._write_queued()

    async def use_settings(self, settings: KafkaSettings) -> None:
        """Rotated credentials: a new producer on them, then the old one flushed and closed."""
        self._settings = settings
        old = self._producer
        if old is None:
            return  # not connected yet: `run` connects with them
        await self._connect()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._timeout):
                await old.stop()

    async def stop(self) -> None:
        """Write what is queued and wait for it (within the caller's deadline), then close."""
        if self._producer is not None:
            await self._write_queued()
            if self._in_flight:
                await asyncio.wait(self._in_flight)
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):  # closing must finish even when the broker is gone
                await producer.stop()
        if self._queue:
            self._failed("not connected", len(self._queue))
            self._queue.clear()

    def hand(self, key: bytes, value: bytes) -> None:
        """Queue one receipt; past `_MAX_QUEUED` waiting (Kafka is not taking them) it is counted as failed."""
        if len(self._queue) >= _MAX_QUEUED:
            self._failed("queue full", 1)
            return
        self._queue.append((key, value))
        self._queued.set()

    async def _write_queued(self) -> None:
        producer = self._producer
        if producer is None or not self._queue:
            return
        queued, self._queue = self._queue, []
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value in queued:
            by_partition.setdefault(zlib.crc32(key) % self._partitions, []).append((key, value))
        left = list(by_partition.items())
        try:
            while left:
                partition, receipts = left[0]
                batch, count = producer.create_batch(), 0
                for key, value in receipts:
                    if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                        await self._send(producer, batch, partition, count)
                        batch, count = producer.create_batch(), 0
                        batch.append(key=key, value=value, timestamp=None)
                    count += 1
                await self._send(producer, batch, partition, count)
                left.pop(0)
        except BaseException:
            # Cancelled (a shutdown) part way: what was not handed over goes back for `stop` to write. A receipt
            # written twice is harmless; one never written is a duplicate waiting to happen.
            self._queue[:0] = [receipt for _, receipts in left for receipt in receipts]
            raise

    async def _send(self, producer: AIOKafkaProducer, batch: Any, partition: int, count: int) -> None:
        try:
            sent: asyncio.Future[Any] = await producer.send_batch(batch, self._topic, partition=partition)
        except (KafkaError, OSError, TimeoutError) as exc:
            self._failed(type(exc).__name__, count)
            return
        self._in_flight.add(sent)
        sent.add_done_callback(functools.partial(self._settled, count))

    def _failed(self, why: str, count: int) -> None:
        self._lost(count)
        if why != self._said:  # one line per cause, not one per batch
            log.warning("receipts were not written; a retry of their events may be written twice", extra={"error": why})
            self._said = why

    def _settled(self, count: int, sent: asyncio.Future[Any]) -> None:
        self._in_flight.discard(sent)
        if sent.cancelled():
            self._failed("cancelled", count)
        elif sent.exception() is not None:
            self._failed(type(sent.exception()).__name__, count)

    async def _connect(self) -> None:
        self._partitions = await self._partition_count()
        producer = AIOKafkaProducer(
            acks="all",
            linger_ms=_RECEIPT_LINGER_MS,
            request_timeout_ms=int(self._timeout * 1000),
            client_id="scalekit-bridge-receipts",
            **connection_options(self._settings),
        )
        try:
            await producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        self._producer = producer
        self._connected.set()

    async def _partition_count(self) -> int:
        """The topic's partitions, once it exists: looked up by name only once listed, since asking a broker
        for a missing topic's metadata may have it created with the broker's defaults (not compacted)."""
        admin = AIOKafkaAdminClient(client_id="scalekit-bridge-receipts", **connection_options(self._settings))
        await admin.start()
        try:
            while True:
                if self._topic in await admin.list_topics():
                    (described,) = await admin.describe_topics([self._topic])
                    if not described["error_code"] and described["partitions"]:
                        return len(described["partitions"])
                await asyncio.sleep(1.0)
        finally:
            await admin.close()

