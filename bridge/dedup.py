"""One record per event id across a release: the receipts every writer puts on the receipts topic, and the
memory `serve` keeps of them.

A receipt is written after its record is acknowledged (never before: a receipt for a record that
failed would turn the retry into a loss), keyed by the event id, with who wrote the record and where
it is. `serve` reads the window's receipts before it is ready and follows the topic from then on
(`bridge.kafka.receipts`); its own receipts are remembered at once. Backfill and replay write
receipts too, so a Scalekit retry after them is stopped. The format is this module's alone.
"""

from __future__ import annotations

import json
import logging
import time

from bridge import metrics as m
from bridge.config import RecordShaping
from bridge.core import Ack, Outbox, Sender, Source
from bridge.envelope import KafkaMessage
from bridge.errors import PublishFailed, RecordRejected
from bridge.remembered import RememberedIds

log = logging.getLogger(__name__)
_SOURCE_FIRST = b'{"source":"'


class Forgetful:
    """BRIDGE_DEDUP=off: nothing is remembered and no receipt is written."""

    def written_by(self, event_id: str) -> Source | None:
        return None

    async def remember(self, event_id: str, ack: Ack) -> None:
        return None


FORGETFUL = Forgetful()


class FleetMemory:
    """Writes a receipt for each record a writer wrote, and answers from the receipts remembered.

    Without `remembered` (backfill and replay, which look in the event topics themselves) it only
    writes receipts.
    """

    def __init__(
        self,
        *,
        sender: Outbox,
        receipts_topic: str,
        source: Source,
        metrics: m.Metrics,
        remembered: RememberedIds | None = None,
    ) -> None:
        self._sender = sender
        self._topic = receipts_topic
        self._source = source
        self._metrics = metrics
        self._remembered = remembered
        self._said_failing: str | None = None

    def written_by(self, event_id: str) -> Source | None:
        if self._remembered is None:
            return None
        first = self._remembered.holds(event_id)
        if first is not None:
            self._metrics.dedup_stopped.labels(source=self._source, written_by=first).inc()
        return first

    async def remember(self, event_id: str, ack: Ack) -> None:
        """Remember at once, and hand the receipt to the producer without waiting for its acknowledgement."""
        if self._remembered is not None:
            self._remembered.add(event_id, now_ms(), self._source)
        # JSON, with the source first so `apply` finds it without a parser (topics are [A-Za-z0-9._-]).
        where = f'"topic":"{ack.topic}","partition":{ack.partition},"offset":{ack.offset}}}'
        value = f'{{"source":"{self._source}",{where}'.encode()
        try:
            pending = await self._sender.send(KafkaMessage(self._topic, event_id.encode(), value, ()))
        except (PublishFailed, RecordRejected) as exc:
            self._failed(type(exc).__name__)
            return
        pending.when_failed(lambda: self._failed("no acknowledgement"))

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

    def _failed(self, why: str) -> None:
        self._metrics.dedup_receipt_failures.inc()
        if why != self._said_failing:  # one line per cause, not one per receipt
            log.warning("a receipt was not written; a retry of its event may be written twice", extra={"error": why})
            self._said_failing = why


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


def writing_only(settings: RecordShaping, sender: Sender, source: Source, metrics: m.Metrics) -> FleetMemory | None:
    """For backfill and replay: receipts for what they write, and no memory of their own."""
    if not settings.dedup:
        return None
    return FleetMemory(sender=sender, receipts_topic=settings.receipts_topic, source=source, metrics=metrics)


def now_ms() -> int:
    """Wall-clock epoch milliseconds, the clock of Kafka's record timestamps."""
    return time.time_ns() // 1_000_000
