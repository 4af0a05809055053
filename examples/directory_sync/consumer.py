"""Directory-sync consumer: the bridge's directory topics → a SQLite table of users and groups.

    KAFKA_BOOTSTRAP_SERVERS=localhost:9092 DIRECTORY_SYNC_DB=directory.db \\
        python -m examples.directory_sync.consumer

One consumer group; it subscribes by pattern to every `<prefix>organization.directory*`
topic, so directory event types Scalekit adds later arrive too (and are skipped, not fatal).
Records are decoded with the CloudEvents SDK's Kafka binding (binary or structured mode) and
applied by `DirectoryStore`, which dedupes on the CloudEvent id. Offsets are committed only
after the batch is in SQLite: a crash replays events, and replays change nothing.

Each event is applied inside a "process" span that continues the bridge's trace: its parent and
its link are the context the bridge put in the event (the CloudEvents distributed-tracing
extension). Without an OpenTelemetry SDK configured the spans cost nothing; `main` configures one
when OTEL_TRACES_EXPORTER=otlp.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from collections import Counter
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from opentelemetry import context, trace
from opentelemetry.trace import Link, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from examples.directory_sync.store import DirectoryStore

log = logging.getLogger("directory_sync")
_W3C = TraceContextTextMapPropagator()


def creation_context(event: BaseCloudEvent) -> context.Context:
    """The context of the span that created `event` (its `traceparent` extension); empty if it has none."""
    carrier = {name: str(value) for name in ("traceparent", "tracestate") if (value := event.get_extension(name))}
    return _W3C.extract(carrier, context=context.Context())


def process_span(tracer: Tracer, record: ConsumerRecord, created: context.Context) -> trace.Span:
    """A "process" span for one record: child of, and linked to, the context that created the event."""
    creator = trace.get_current_span(created).get_span_context()
    return tracer.start_span(
        f"process {record.topic}",
        context=created,
        kind=SpanKind.CONSUMER,
        links=[Link(creator)] if creator.is_valid else [],
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
        },
    )


def topic_pattern(prefix: str) -> str:
    """Every directory topic under the bridge's topic prefix (`scalekit.` by default)."""
    return "^" + re.escape(prefix) + r"organization\.directory.*"


class DirectorySync:
    def __init__(
        self,
        store: DirectoryStore,
        *,
        bootstrap_servers: str,
        topic_prefix: str = "scalekit.",
        group_id: str = "directory-sync",
        tracer: Tracer | None = None,
    ) -> None:
        self.store = store
        self._tracer = tracer or trace.get_tracer("directory-sync")
        self.outcomes: Counter[str] = Counter()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            enable_auto_commit=False,  # commit only what SQLite already has
            auto_offset_reset="earliest",
            metadata_max_age_ms=5_000,  # notice new directory topics within seconds
        )
        self._consumer.subscribe(pattern=topic_pattern(topic_prefix))
        self._format = JSONFormat()

    async def run(self, stop: asyncio.Event) -> None:
        await self._consumer.start()
        try:
            while not stop.is_set():
                batches = await self._consumer.getmany(timeout_ms=500, max_records=500)
                for records in batches.values():
                    self._apply(records)
                if batches:
                    await self._consumer.commit()
        finally:
            await self._consumer.stop()

    def _apply(self, records: Iterable[ConsumerRecord]) -> None:
        for record in records:
            if record.value is None:
                self.outcomes["ignored"] += 1  # an event without data says nothing about the directory
                continue
            message = ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
            event = ce_kafka.from_kafka(message, self._format)
            with trace.use_span(process_span(self._tracer, record, creation_context(event)), end_on_exit=True) as span:
                outcome = self.store.apply(event)
                span.set_attribute("directory_sync.outcome", outcome)
            self.outcomes[outcome] += 1
            log.info("%s %s %s", outcome, event.get_type(), event.get_id())


def _configure_tracing() -> None:
    """An OTLP exporter configured by the standard OTEL_* variables, when OTEL_TRACES_EXPORTER=otlp."""
    if os.environ.get("OTEL_TRACES_EXPORTER") != "otlp":
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "directory-sync"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    _configure_tracing()
    store = DirectoryStore(os.environ.get("DIRECTORY_SYNC_DB", "directory.db"))
    sync = DirectorySync(
        store,
        bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
        topic_prefix=os.environ.get("BRIDGE_TOPIC_PREFIX", "scalekit."),
        group_id=os.environ.get("DIRECTORY_SYNC_GROUP", "directory-sync"),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await sync.run(stop)
    finally:
        store.close()


if __name__ == "__main__":
    asyncio.run(main())
