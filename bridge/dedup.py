"""One record per event id across a release: the receipts every writer puts on the receipts topic, and the
memory `serve` keeps of them.

A receipt is written after its record is acknowledged (never before: a receipt for a record that
failed would turn the retry into a loss), keyed by the event id, with who wrote the record and where
it is. `serve` reads the window's receipts before it is ready and follows the topic from then on
(`bridge.kafka.receipts`); its own receipts are remembered at once. Backfill and replay write
receipts too, so a Scalekit retry after them is stopped. The format is this module's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

from bridge import metrics as m
from bridge.config import KafkaSettings, RecordShaping
from bridge.core import Ack, Source
from bridge.errors import PublishFailed, RecordRejected
from bridge.kafka.producer import KafkaPublisher
from bridge.kafka.receipts import ReceiptWriter
from bridge.remembered import RememberedIds

log = logging.getLogger(__name__)

_SOURCE_FIRST = b'{"source":"'


class FleetMemory:
    """Writes a receipt for each record a writer wrote, and answers from the receipts remembered.

    Without `remembered` (backfill and replay, which look in the event topics themselves) it only
    writes receipts.
    """

    def __init__(
        self,
        *,
        write: Callable[[bytes, bytes], None],
        source: Source,
        metrics: m.Metrics,
        remembered: RememberedIds | None = None,
    ) -> None:
        self._write = write  # queues a receipt (key, value); `bridge.kafka.receipts.ReceiptWriter.hand`
        self._source = source
        self._metrics = metrics
        self._remembered = remembered

    def written_by(self, event_id: str) -> Source | None:
        if self._remembered is None:
            return None
        first = self._remembered.holds(event_id)
        if first is not None:
            self._metrics.dedup_stopped.labels(source=self._source, written_by=first).inc()
        return first

    def remember(self, event_id: str, ack: Ack) -> None:
        """Remember at once, and queue the receipt (written within about 50 ms, never waited for here)."""
        if self._remembered is not None:
            self._remembered.add(event_id, now_ms(), self._source)
        # JSON, with the source first so `apply` finds it without a parser (topics are [A-Za-z0-9._-]).
        where = f'"topic":"{ack.topic}","partition":{ack.partition},"offset":{ack.offset}}}'
        self._write(event_id.encode(), f'{{"source":"{self._source}",{where}'.encode())

    def apply(self, key: bytes | None, value: bytes | None, timestamp_ms: int) -> bool:
        """Take one receipt read from the topic; False (and nothing remembered) when it is not one of ours."""
        if self._remembered is None or key is None or value is None:
            return False
        try:
            if value.startswith(_SOURCE_FIRST):  # as this module writes them
                source = Source(value[len(_SOURCE_FIRST) : value.index(b'"', len(_SOURCE_FIRST))].decode())
            else:  # a receipt written some other way (by hand, by a tool)
                source = Source(json.loads(value)["source"])
            event_id = key.decode()
        except (ValueError, KeyError, TypeError):
            return False
        self._remembered.add(event_id, timestamp_ms, source)
        return True


class JobReceipts:
    """Receipts for what a recovery job (backfill, replay) writes: `memory` for its Writer, and `writing` around
    the writing. The job finds what is already in Kafka by scanning the event topics (any window's length), so
    it keeps no memory of its own."""

    def __init__(self, settings: RecordShaping, kafka: KafkaSettings, source: Source, metrics: m.Metrics) -> None:
        self._topic = settings.receipts_topic
        self._writer = ReceiptWriter(
            kafka, settings.receipts_topic, timeout=settings.publish_timeout, lost=metrics.dedup_receipt_failures.inc
        )
        self.memory = FleetMemory(write=self._writer.hand, source=source, metrics=metrics) if settings.dedup else None

    @contextlib.asynccontextmanager
    async def writing(self, publisher: KafkaPublisher, grace: Callable[[], float]) -> AsyncIterator[None]:
        """Write receipts while the job writes records (on `publisher`, started), and flush them after, within
        `grace()` seconds (shorter once SIGTERM asked the job to stop)."""
        if self.memory is None:
            yield
            return
        async def write() -> None:
            with contextlib.suppress(RecordRejected, PublishFailed):  # then the writer says how many were lost
                await publisher.ensure_topic(self._topic)
            await self._writer.run()

        # In the background, so a Kafka that stops answering holds up neither the records nor a SIGTERM.
        task = asyncio.create_task(write(), name="receipts")
        try:
            yield
        finally:
            task.cancel()
            try:
                async with asyncio.timeout(grace()):  # the whole of it: the job's own deadline comes first
                    await asyncio.gather(task, return_exceptions=True)
                    await self._writer.stop()
            except TimeoutError:
                log.warning("the receipts of this run were not all acknowledged in time")


def recovery_job(
    settings: RecordShaping, kafka: KafkaSettings, source: Source, metrics: m.Metrics
) -> tuple[KafkaPublisher, JobReceipts]:
    """A recovery job's producer (which may create the receipts topic as `serve` would) and its receipts."""
    publisher = KafkaPublisher(
        kafka,
        timeout=settings.publish_timeout,
        max_record_bytes=settings.max_body_bytes,
        topic_configs=topic_configs(settings),
    )
    return publisher, JobReceipts(settings, kafka, source, metrics)


def topic_configs(settings: RecordShaping) -> dict[str, dict[str, str]]:
    """The receipts topic's configs, for a writer that may create it: compacted (one receipt per event
    id) and deleted past the window, in segments of a twenty-fourth of it so the deletion keeps pace."""
    if not settings.dedup:
        return {}
    window_ms = int(settings.dedup_window * 1000)
    configs = {
        "cleanup.policy": "compact,delete",
        "retention.ms": str(window_ms),
        "segment.ms": str(max(60_000, window_ms // 24)),
    }
    return {settings.receipts_topic: configs}


def now_ms() -> int:
    """Wall-clock epoch milliseconds, the clock of Kafka's record timestamps."""
    return time.time_ns() // 1_000_000
