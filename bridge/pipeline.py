"""One delivery's way through the bridge: verify → envelope → contract → route → publish.

HTTP-free: the app hands in headers and the raw body and turns the returned
`Receipt` (or a raised `BridgeError`) into a response. `Writer` is the part
after verification, shared with `backfill` so both write the same records.
Every path that ends in a Receipt other than DUPLICATE has awaited the broker's
acknowledgement; a DUPLICATE is only returned once an earlier attempt's
acknowledgement exists.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

from bridge import metrics as m
from bridge.config import RecordShaping, SchemaValidation
from bridge.contract import Contract, Verdict
from bridge.core import Ack, Memory, Outcome, Pending, Publisher, Sender, Source
from bridge.envelope import (
    CloudEventsMode,
    KafkaMessage,
    Origin,
    Replayed,
    build_record,
    deadletter_message,
    parse_envelope,
)
from bridge.errors import MalformedDelivery, PublishFailed, RecordRejected, VerificationFailed, where
from bridge.redelivery import RedeliveryCache
from bridge.tracing import OFF, Span, TraceContext, Tracing
from bridge.verify import VerifiedDelivery, Verifier

_CANCELLED = "cancelled while awaiting the broker's acknowledgement"
# One line per delivery on "bridge.delivery"; anything else the pipeline has to say goes to its own logger.
log = logging.getLogger("bridge.delivery")
trouble = logging.getLogger(__name__)


@dataclass(frozen=True)
class Receipt:
    """How one delivery ended, and where its record went if it was written."""

    outcome: Outcome
    webhook_id: str | None
    event_id: str | None = None
    event_type: str | None = None
    ack: Ack | None = None
    verdict: Verdict | None = None

    def acknowledged(self, ack: Ack) -> Receipt:
        """This receipt with the broker's ack (`dataclasses.replace` costs several times more per delivery)."""
        return Receipt(self.outcome, self.webhook_id, self.event_id, self.event_type, ack, self.verdict)


class Pipeline:
    """A webhook delivery's way: verify, claim against redelivery, then the writer's."""

    def __init__(
        self,
        *,
        verifier: Verifier,
        cache: RedeliveryCache,
        writer: Writer,
        tracing: Tracing = OFF,
    ) -> None:
        self._verifier = verifier
        self._cache = cache
        self._writer = writer
        self._tracing = tracing

    async def handle(self, headers: Mapping[str, str], body: bytes) -> Receipt:
        """Deliver one webhook; raises VerificationFailed (401) or PublishFailed (503)."""
        started = time.perf_counter()
        try:
            with self._tracing.step("verify") as step:
                try:
                    delivery = self._verifier.verify(headers, body)
                except VerificationFailed as exc:
                    step.fail(exc.code)
                    raise
        except VerificationFailed as exc:
            self._writer.metrics.verification_failures.labels(reason=exc.code).inc()
            # The webhook-id of an unverified request is the caller's text, not ours to log.
            self._writer.record(Receipt(Outcome.REJECTED, None), started, reason=exc.code)
            raise

        if not await self._cache.claim(delivery.webhook_id):
            return self._writer.record(Receipt(Outcome.DUPLICATE, delivery.webhook_id), started)

        acknowledged = False
        try:
            receipt = await self._writer.write(delivery, started)
            acknowledged = True
        finally:
            self._cache.release(delivery.webhook_id, acknowledged=acknowledged)
        return receipt

    def refuse_oversized(self, started: float) -> Receipt:
        """Account for a body refused before verification (413); nothing was read or written."""
        return self._writer.record(Receipt(Outcome.TOO_LARGE, None), started)


@dataclass(frozen=True)
class Plan:
    """The record an event earns before it is written: its own, or a dead letter (with why)."""

    message: KafkaMessage
    receipt: Receipt
    reason: str | None


@dataclass(frozen=True)
class Sent:
    """An event's record handed to the producer, its acknowledgement still to come."""

    origin: Origin
    plan: Plan
    pending: Pending
    started: float
    span: Span


class Writer:
    """Envelope → contract → route → publish, for webhook deliveries and backfilled events alike.

    One mapping and one set of dead-letter rules, so a backfilled event's record is
    the one its webhook would have written.
    """

    def __init__(
        self,
        *,
        publisher: Publisher,
        metrics: m.Metrics,
        topic_prefix: str,
        deadletter_topic: str,
        cloudevents_mode: CloudEventsMode,
        contract: Contract,
        schema_validation: SchemaValidation,
        max_unknown_types: int,
        tracing: Tracing = OFF,
        memory: Memory | None = None,
    ) -> None:
        self._publisher = publisher
        # What the release wrote (BRIDGE_DEDUP): an event it holds is not written again; each one written is noted.
        self._memory = memory
        self._tracing = tracing
        self.metrics = metrics
        self._topic_prefix = topic_prefix
        self._deadletter_topic = deadletter_topic
        self._mode = cloudevents_mode
        self._contract = contract
        self._validation = schema_validation
        self._max_unknown_types = max_unknown_types
        metrics.expect_event_types(contract.event_types)
        # Undocumented types this writer has published (each has a topic): at most max_unknown_types.
        self._unknown_types: set[str] = set()

    @classmethod
    def configured(
        cls,
        settings: RecordShaping,
        publisher: Publisher,
        metrics: m.Metrics,
        tracing: Tracing = OFF,
        memory: Memory | None = None,
    ) -> Writer:
        """A writer shaping records as `settings` say (prefix, mode, validation, dead-letter topic)."""
        return cls(
            publisher=publisher,
            metrics=metrics,
            topic_prefix=settings.topic_prefix,
            deadletter_topic=settings.deadletter_topic,
            cloudevents_mode=settings.cloudevents_mode,
            contract=Contract.load(),
            schema_validation=settings.schema_validation,
            max_unknown_types=settings.max_unknown_types,
            tracing=tracing,
            memory=memory,
        )

    async def write(self, origin: Origin, started: float) -> Receipt:
        """Write the event's record (or its dead letter) and wait for the ack; raises PublishFailed."""
        span = self._tracing.producer()
        planned = self._planned(origin, span)
        first = self._written_by(planned)
        if first is not None:
            span.ended(Outcome.DUPLICATE, None)
            span.end()
            reason = f"the {first} path wrote this event's record within the dedup window"
            return self.record(replace(planned.receipt, outcome=Outcome.DUPLICATE), started, reason=reason)
        try:
            ack, planned = await self._write(origin, planned, span)
        except PublishFailed as exc:
            span.fail(type(exc).__name__)
            span.end()
            self.record(replace(planned.receipt, outcome=Outcome.FAILED), started, reason=exc.reason)
            raise
        except asyncio.CancelledError:
            span.fail("cancelled")
            span.end()
            # The shutdown grace ran out, or the caller went away: no 201, so Scalekit retries. Said all the same.
            self.record(replace(planned.receipt, outcome=Outcome.FAILED), started, reason=_CANCELLED)
            raise
        written(span, planned, ack)
        self.note_written(planned, ack)
        return self.record(planned.receipt.acknowledged(ack), started, reason=planned.reason)

    def _written_by(self, planned: Plan) -> Source | None:
        """Who of the release wrote this event's record within the window (a record, not a dead letter)."""
        receipt = planned.receipt
        if self._memory is None or receipt.outcome != Outcome.PUBLISHED or receipt.event_id is None:
            return None
        return self._memory.written_by(receipt.event_id)

    def note_written(self, planned: Plan, ack: Ack) -> None:
        """Tell the release's memory that an event's record is in its topic (after the ack, never before:
        a receipt for a record that failed would turn its retry into a loss). A dead letter is not noted,
        so a replay can still write the event."""
        receipt = planned.receipt
        if self._memory is not None and receipt.outcome == Outcome.PUBLISHED and receipt.event_id is not None:
            self._memory.remember(receipt.event_id, ack)

    def traced(self, origin: Origin, planned: Plan) -> tuple[Plan, Span]:
        """A record planned earlier (replay plans first, to choose what to write), under a producer span of
        its own: with tracing on, the same record planned again with the span's context in it. Hand it over
        with `with_trace`; end the span with `written`, or with `fail` and `end`."""
        span = self._tracing.producer()
        if span.context is not None:
            planned = self.plan(origin, span.context)
        _sending(span, planned)
        return planned, span

    def _planned(self, origin: Origin, span: Span) -> Plan:
        """The plan, made under its own span, with the producer span's context in the record."""
        with self._tracing.step("map"):
            planned = self.plan(origin, span.context)
        _sending(span, planned)
        return planned

    async def _write(self, origin: Origin, planned: Plan, span: Span) -> tuple[Ack, Plan]:
        """Publish; a record Kafka will never take is dead-lettered instead. Raises PublishFailed."""
        try:
            return await self.publish(planned.message, span.context), planned
        except RecordRejected as exc:
            planned = self._letter(origin, planned, exc)
            _sending(span, planned)
        return await self._publish_letter(planned.message, span.context), planned

    async def send(self, origin: Origin, sender: Sender) -> Sent:
        """Hand the event's record (or its dead letter) to the producer without waiting for the ack.

        Events sent one after another are written in that order; `settle` then waits for
        each. Raises PublishFailed (the event is counted as failed).
        """
        started = time.perf_counter()
        span = self._tracing.producer()
        planned = self._planned(origin, span)
        try:
            try:
                pending = await sender.send(with_trace(planned.message, span.context))
            except RecordRejected as exc:
                planned = self._letter(origin, planned, exc)
                _sending(span, planned)
                try:
                    pending = await sender.send(with_trace(planned.message, span.context))
                except RecordRejected as exc:
                    raise self._deadletter_refused(exc) from exc
            return Sent(origin, planned, pending, started, span)
        except PublishFailed as exc:
            span.fail(type(exc).__name__)
            span.end()
            self.record(replace(planned.receipt, outcome=Outcome.FAILED), started, reason=exc.reason)
            raise

    async def settle(self, sent: Sent) -> Receipt:
        """Wait for a sent record's ack; one the broker refused for good is dead-lettered now."""
        planned, span = sent.plan, sent.span
        try:
            try:
                ack = await sent.pending.ack()
            except RecordRejected as exc:
                planned = self._letter(sent.origin, planned, exc)
                _sending(span, planned)
                ack = await self._publish_letter(planned.message, span.context)
        except PublishFailed as exc:
            span.fail(type(exc).__name__)
            span.end()
            self.record(replace(planned.receipt, outcome=Outcome.FAILED), sent.started, reason=exc.reason)
            raise
        written(span, planned, ack)
        self.note_written(planned, ack)
        return self.record(planned.receipt.acknowledged(ack), sent.started, reason=planned.reason)

    def _letter(self, origin: Origin, planned: Plan, exc: RecordRejected) -> Plan:
        """The dead letter for a record Kafka will never take; PublishFailed if that was the dead letter."""
        if planned.message.topic == self._deadletter_topic:
            raise PublishFailed(f"the dead-letter topic refused the delivery: {exc.reason}") from exc
        reason = f"Kafka refused the record: {exc.reason}"
        letter = deadletter_message(origin, topic=self._deadletter_topic, reason=reason)
        return Plan(letter, replace(planned.receipt, outcome=Outcome.DEADLETTERED), reason)

    async def _publish_letter(self, letter: KafkaMessage, trace: TraceContext | None) -> Ack:
        try:
            return await self.publish(letter, trace)
        except RecordRejected as exc:
            raise self._deadletter_refused(exc) from exc

    def _deadletter_refused(self, exc: RecordRejected) -> PublishFailed:
        trouble.error("the dead-letter topic refuses deliveries", extra={"reason": exc.reason})
        return PublishFailed(f"the dead-letter topic refused the delivery: {exc.reason}")

    def plan(self, origin: Origin, trace: TraceContext | None = None) -> Plan:
        """The record to write and the receipt it earns: the event's own, or a dead letter.

        Never raises: a verified delivery always has a record to write. A bug in
        the mapping dead-letters the raw body (counted and logged by class name)
        rather than answering 500 until Scalekit gives up and the event is lost.
        """
        try:
            return self._plan_event(origin, trace)
        except Exception as exc:  # noqa: BLE001 - the one boundary for verified deliveries
            error = type(exc).__name__
            self.metrics.internal_errors.inc()
            trouble.error(
                "unexpected error while mapping a verified delivery; dead-lettering it",
                extra={"webhook_id": _webhook_id(origin), "error": error, "at": where(exc)},
            )
            reason = f"internal error: {error}"
            message = deadletter_message(origin, topic=self._deadletter_topic, reason=reason)
            return Plan(message, Receipt(Outcome.DEADLETTERED, _webhook_id(origin)), reason)

    def _plan_event(self, origin: Origin, trace: TraceContext | None) -> Plan:
        verdict: Verdict | None = None
        event_id = event_type = None
        webhook_id = _webhook_id(origin)
        try:
            envelope = parse_envelope(origin.body)
            verdict = self._contract.check(envelope, validate=self._validation != "off")
            if verdict.violation is not None and self._validation == "enforce":
                # A documented type, so its id and type are fit for logs and labels.
                event_id, event_type = envelope["id"], envelope["type"]
                raise MalformedDelivery(f"schema violation: {verdict.violation}")
            record = build_record(
                origin,
                topic_prefix=self._topic_prefix,
                mode=self._mode,
                envelope=envelope,
                dataschema=verdict.dataschema,
                deadletter_topic=self._deadletter_topic,
                trace=trace,
            )
            if not verdict.known:
                self._admit_unknown(record.event_type)
        except MalformedDelivery as exc:
            message = deadletter_message(origin, topic=self._deadletter_topic, reason=exc.reason)
            receipt = Receipt(Outcome.DEADLETTERED, webhook_id, event_id, event_type, verdict=verdict)
            return Plan(message, receipt, exc.reason)
        receipt = Receipt(Outcome.PUBLISHED, webhook_id, record.event_id, record.event_type, verdict=verdict)
        return Plan(record.message, receipt, None)

    def _admit_unknown(self, event_type: str) -> None:
        """An undocumented type gets a topic of its own, up to a number of them; past it, a dead letter.

        Every new type costs a topic (partitions on the cluster), a metric series and memory, and a
        leaked secret could mint thousands a minute; Scalekit adds a type now and then.
        """
        if event_type in self._unknown_types:
            return
        if len(self._unknown_types) < self._max_unknown_types:
            self._unknown_types.add(event_type)
            return
        self.metrics.unknown_event_types.labels(event_type=m.OTHER_TYPE).inc()
        if self._max_unknown_types == 0:
            raise MalformedDelivery("undocumented event type (BRIDGE_MAX_UNKNOWN_TYPES=0 publishes none)")
        raise MalformedDelivery(
            f"undocumented event type past the {self._max_unknown_types} this process publishes "
            "(BRIDGE_MAX_UNKNOWN_TYPES)"
        )

    async def publish(self, message: KafkaMessage, trace: TraceContext | None = None) -> Ack:
        """Write one planned record (with the transport trace context, if any), and time it; raises
        PublishFailed or RecordRejected."""
        sent = time.perf_counter()
        ack = await self._publisher.publish(with_trace(message, trace))
        ids = self._tracing.current_ids()
        self.metrics.publish_duration.observe(time.perf_counter() - sent, {"trace_id": ids[0]} if ids else None)
        return ack

    def record(self, receipt: Receipt, started: float, *, reason: str | None = None) -> Receipt:
        """Count the outcome and write the delivery's one log line."""
        self.metrics.count_delivery(receipt.outcome, receipt.event_type or m.UNKNOWN_TYPE)
        fields: dict[str, object] = {
            "outcome": receipt.outcome,
            "webhook_id": receipt.webhook_id,
            "event_id": receipt.event_id,
            "event_type": receipt.event_type,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        if reason is not None:
            fields["reason"] = reason
        verdict = receipt.verdict
        if verdict is not None and receipt.outcome in (Outcome.PUBLISHED, Outcome.DEADLETTERED):
            fields["schema"] = verdict.status
            if verdict.violation is not None:
                self.metrics.schema_violations.labels(event_type=receipt.event_type).inc()
                if reason is None:  # a dead letter's reason already says it
                    fields["schema_violation"] = verdict.violation
            elif not verdict.known and receipt.event_type is not None:
                self.metrics.unknown_event_types.labels(event_type=receipt.event_type).inc()
        if receipt.ack is not None:
            fields.update(topic=receipt.ack.topic, partition=receipt.ack.partition, offset=receipt.ack.offset)
        ids = self._tracing.current_ids()
        if ids is not None:
            fields["trace_id"], fields["span_id"] = ids
        log.info("delivery %s", receipt.outcome, extra={"delivery": fields})
        return receipt


def with_trace(message: KafkaMessage, trace: TraceContext | None) -> KafkaMessage:
    """The record with the transport `traceparent` (and `tracestate`) headers, when there is a context."""
    if trace is None:
        return message
    return KafkaMessage(message.topic, message.key, message.value, (*message.headers, *trace.headers()))


def _sending(span: Span, planned: Plan) -> None:
    span.sending_to(planned.message.topic, planned.message.key)
    if planned.receipt.event_id is not None:
        span.set("cloudevents.event_id", planned.receipt.event_id)
    if planned.receipt.event_type is not None:
        span.set("cloudevents.event_type", planned.receipt.event_type)


def written(span: Span, planned: Plan, ack: Ack) -> None:
    """End a record's producer span with where the broker put it and how its event ended."""
    span.written(ack.partition, ack.offset)
    outcome = planned.receipt.outcome
    span.ended(outcome, "deadlettered" if outcome == Outcome.DEADLETTERED else None)
    span.end()


def _webhook_id(origin: Origin) -> str | None:
    if isinstance(origin, Replayed):
        return origin.delivery.webhook_id
    return origin.webhook_id if isinstance(origin, VerifiedDelivery) else None
