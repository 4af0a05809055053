"""The words the pipeline speaks: how a delivery can end, and what it writes records to.

Adapters implement these (`bridge.kafka` for Kafka, fakes in tests); the pipeline,
the backfill and the metrics import them from here, never from an adapter.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bridge.envelope import KafkaMessage


class Outcome(enum.StrEnum):
    """How one delivery (or backfilled event) ended; also the `outcome` label of the deliveries metric."""

    PUBLISHED = "published"
    DUPLICATE = "duplicate"
    DEADLETTERED = "deadlettered"
    REJECTED = "rejected"
    FAILED = "failed"
    TOO_LARGE = "too_large"


class Source(enum.StrEnum):
    """Which of the release's writers wrote (or tried to write) an event's record: the `source` and `written_by`
    labels of the duplicates stopped."""

    WEBHOOK = "webhook"
    BACKFILL = "backfill"
    REPLAY = "replay"


@dataclass(frozen=True)
class Ack:
    """The broker's confirmation: where the record now lives."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class StoredRecord:
    """A record read back from a topic, and where and when the broker holds it."""

    message: KafkaMessage
    partition: int
    offset: int
    timestamp_ms: int


class Publisher(Protocol):
    """Writes one record and returns once every in-sync replica has it.

    Raises `PublishFailed` while the write cannot be made (retry later) and
    `RecordRejected` when it never can.
    """

    @property
    def ready(self) -> bool: ...

    @property
    def missing_topics(self) -> frozenset[str]:
        """Topics the bridge cannot do without (the dead-letter topic) that do not exist and may not be created."""
        ...

    async def publish(self, message: KafkaMessage) -> Ack: ...


class Pending(Protocol):
    """A record handed over, its acknowledgement still to come.

    `ack()` raises like `publish`; the publish timeout runs from the hand-over, not from the call,
    so waiting for many in turn takes no longer than waiting for the last. `when_failed` calls back
    as soon as the broker refuses the record, before anyone waits for it.
    """

    async def ack(self) -> Ack: ...

    def when_failed(self, callback: Callable[[], None]) -> None: ...


class Memory(Protocol):
    """What the release wrote within its window (one record per event id); `bridge.dedup` keeps it."""

    def written_by(self, event_id: str) -> Source | None:
        """Who wrote `event_id`'s record within the window, or None."""
        ...

    def remember(self, event_id: str, ack: Ack) -> None:
        """Note that `event_id`'s record is acknowledged at `ack`, for the whole release (its receipt is
        written later, never waited for); never raises."""
        ...


class Sender(Publisher, Protocol):
    """A publisher that can also hand records over in order and wait for their acks later (backfill)."""

    async def send(self, message: KafkaMessage) -> Pending: ...
