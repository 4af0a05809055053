"""Fakes for broker-free unit tests: a producer that records what it is handed and scripts refusals.

Anything that claims delivery is proven against a real broker in tests/integration; these pin down
what the pipeline does with each answer a publisher can give.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from bridge.contract import Contract
from bridge.core import Ack, Memory, Pending
from bridge.envelope import KafkaMessage
from bridge.errors import PublishFailed, RecordRejected
from bridge.metrics import Metrics
from bridge.pipeline import Writer
from bridge.tracing import OFF, Tracing

DEADLETTER = "scalekit.deadletter"


@dataclass
class Metadata:
    topic: str
    partition: int
    offset: int


class Awaited:
    """A handed-over record whose ack is the producer's scripted answer."""

    def __init__(self, delivered: asyncio.Future[Metadata], hold: asyncio.Event | None = None) -> None:
        self._delivered = delivered
        self._hold = hold

    async def ack(self) -> Ack:
        if self._hold is not None:
            await self._hold.wait()
        metadata = await self._delivered
        return Ack(metadata.topic, metadata.partition, metadata.offset)

    def when_failed(self, callback: Callable[[], None]) -> None:
        self._delivered.add_done_callback(lambda done: callback() if done.exception() is not None else None)


class RecordingProducer:
    """Keeps what it is handed, in order; `refuse` and `lose` script refusals by topic.

    While `down` is set every write fails as if Kafka were unreachable; while `hold` is set (an
    unset event) acknowledgements wait for it.
    """

    ready = True
    missing_topics: frozenset[str] = frozenset()

    def __init__(self, *, refuse: set[str] = frozenset(), lose: dict[str, Exception] | None = None) -> None:
        self.handed: list[KafkaMessage] = []
        self._refuse = refuse  # refused before sending (too large for the topic)
        self._lose = lose or {}  # sent, then the broker's answer is this error
        self.down = False
        self.hold: asyncio.Event | None = None

    async def send(self, message: KafkaMessage) -> Pending:
        if self.down:
            raise PublishFailed("Kafka refused the write: KafkaConnectionError")
        if message.topic in self._refuse:
            raise RecordRejected("the record is 300000 bytes, over the 100-byte limit of its topic")
        self.handed.append(message)
        delivered: asyncio.Future[Metadata] = asyncio.get_running_loop().create_future()
        error = self._lose.get(message.topic)
        if error is not None:
            delivered.set_exception(error)
        else:
            delivered.set_result(Metadata(message.topic, 0, len(self.handed) - 1))
        return Awaited(delivered, self.hold)

    async def publish(self, message: KafkaMessage) -> Ack:
        return await (await self.send(message)).ack()


def writer_for(
    producer: RecordingProducer,
    metrics: Metrics | None = None,
    *,
    max_unknown_types: int = 100,
    tracing: Tracing = OFF,
    memory: Memory | None = None,
) -> Writer:
    return Writer(
        publisher=producer,
        metrics=metrics or Metrics(process_metrics=False),
        topic_prefix="scalekit.",
        deadletter_topic=DEADLETTER,
        cloudevents_mode="binary",
        contract=Contract.load(),
        schema_validation="warn",
        max_unknown_types=max_unknown_types,
        tracing=tracing,
        memory=memory,
    )
