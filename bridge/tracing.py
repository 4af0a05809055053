"""Traces, when `BRIDGE_TRACING=true`: what the pipeline, the app and the runs may ask of a tracer.

Off (the default), `OFF` answers every call with a shared do-nothing object and nothing of
OpenTelemetry is imported, so a delivery costs what it cost before tracing existed. On,
`bridge.otel` (the only module that imports OpenTelemetry) configures the SDK from its own
`OTEL_*` variables (`bridge.traces.start` chooses). Callers hold a `Tracing` and never know which one they have.

No span attribute carries a header value, a body, a secret or a signature: callers pass
fixed words, event ids and types, topics, keys and the broker's partition and offset only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

Attribute = str | int | bool
# How a delivery, or a record's write, ended: a `bridge.core.Outcome`.
OUTCOME_ATTRIBUTE = "scalekit_bridge.outcome"


@dataclass(frozen=True, slots=True)
class TraceContext:
    """W3C trace context, as the CloudEvents distributed-tracing extension and Kafka headers carry it."""

    traceparent: str
    tracestate: str | None = None

    def headers(self) -> tuple[tuple[str, bytes], ...]:
        """The transport headers (`traceparent`, `tracestate`), as OpenTelemetry's Kafka instrumentation writes them."""
        if self.tracestate:
            return ("traceparent", self.traceparent.encode("ascii")), ("tracestate", self.tracestate.encode("ascii"))
        return (("traceparent", self.traceparent.encode("ascii")),)


class Span(Protocol):
    """One unit of work; ended by its owner (or by the `with` block that made it)."""

    @property
    def context(self) -> TraceContext | None:
        """Its context to put in a record; None when tracing is off."""
        ...

    def set(self, name: str, value: Attribute) -> None: ...

    def fail(self, error: str) -> None:
        """Mark it failed; `error` is a fixed word or a class name, never a message."""
        ...

    def sending_to(self, topic: str, key: bytes | None) -> None:
        """A producer span's destination: the topic (its name says it too) and the record's key."""
        ...

    def written(self, partition: int, offset: int) -> None:
        """Where the broker put the record."""
        ...

    def ended(self, outcome: str, error: str | None) -> None:
        """How the work ended: `outcome` as an attribute, and the status (an error when `error` is given)."""
        ...

    def end(self) -> None: ...

    def __enter__(self) -> Span: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class Tracing(Protocol):
    enabled: bool

    def delivery(self, method: str, route: str, headers: Mapping[str, str]) -> Span:
        """The server span of one request, current until it ends; an incoming `traceparent` is its
        parent when well-formed and within bounds, otherwise it starts a trace of its own."""
        ...

    def step(self, name: str) -> Span:
        """A child of the current span, current while its `with` block runs."""
        ...

    def producer(self) -> Span:
        """The span that creates and sends one record (not made current): its context goes into the
        record, its destination is named once planned, and the broker's partition and offset go onto it."""
        ...

    def run(self, name: str) -> Span:
        """A run of `backfill` or `replay`: a root span, current while its `with` block runs."""
        ...

    def current_ids(self) -> tuple[str, str] | None:
        """The current (trace id, span id) in hex, for a log line or an exemplar; None unless sampled."""
        ...

    def shutdown(self, timeout: float) -> None:
        """Export what is queued, within `timeout` seconds."""
        ...


class NoSpan:
    """A span that records nothing (tracing off, or a child of a span the sampler dropped)."""

    context: TraceContext | None = None

    def set(self, name: str, value: Attribute) -> None:
        pass

    def fail(self, error: str) -> None:
        pass

    def sending_to(self, topic: str, key: bytes | None) -> None:
        pass

    def written(self, partition: int, offset: int) -> None:
        pass

    def ended(self, outcome: str, error: str | None) -> None:
        pass

    def end(self) -> None:
        pass

    def __enter__(self) -> NoSpan:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass


_NO_SPAN = NoSpan()


class _Off:
    enabled = False

    def delivery(self, method: str, route: str, headers: Mapping[str, str]) -> Span:
        return _NO_SPAN

    def step(self, name: str) -> Span:
        return _NO_SPAN

    def producer(self) -> Span:
        return _NO_SPAN

    def run(self, name: str) -> Span:
        return _NO_SPAN

    def current_ids(self) -> tuple[str, str] | None:
        return None

    def shutdown(self, timeout: float) -> None:
        pass


OFF: Tracing = _Off()


class DroppedSpans(Protocol):
    """Where the tracer counts spans it could not hand to the collector (`reason`: a fixed word)."""

    def __call__(self, reason: str, count: int) -> None: ...
