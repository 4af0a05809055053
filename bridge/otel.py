"""The OpenTelemetry SDK behind `bridge.tracing`: the only module that imports OpenTelemetry.

Imported only when `BRIDGE_TRACING=true`. The SDK reads its own variables: the sampler
(`OTEL_TRACES_SAMPLER[_ARG]`), the resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`),
the OTLP exporter (`OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, `_HEADERS`, `_TIMEOUT`, ...) and the batch
processor (`OTEL_BSP_*`). This module only checks the few it must choose by (which exporter, which
protocol, which sampler) so a bad one stops the start naming itself, instead of the SDK falling
back to a default with a warning.

Spans leave through a batch processor: a bounded queue and a background thread, so a collector
that is down or slow never holds up a delivery. Spans it cannot hand over (a full queue, an export
that failed) are counted, and the SDK's one warning per dropped span is not logged; nor are
OpenTelemetry's lines about a malformed incoming trace header, which quote it (they are counted).

One provider per process and configuration, however often a bridge starts (embedding, the test kit):
its export thread is a daemon and no exit handler waits for it, so the process exits within its drain
whatever the collector does; `shutdown` flushes for at most its share of the grace, then abandons it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bridge import __version__
from bridge.errors import ConfigError
from bridge.tracing import OUTCOME_ATTRIBUTE, Attribute, DroppedSpans, NoSpan, TraceContext, Tracing

SERVICE = "scalekit-bridge"
# An incoming traceparent is a stranger's text: version 00 is 55 characters, later versions may add
# fields; W3C asks that at least 512 characters of tracestate be passed on. Past these, neither is read.
MAX_TRACEPARENT = 256
MAX_TRACESTATE = 512
_EXPORTERS = ("otlp", "console", "none")
_PROTOCOL = "http/protobuf"
_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_W3C = TraceContextTextMapPropagator()
_PRODUCER = {"messaging.system": "kafka", "messaging.operation.type": "send", "messaging.operation.name": "send"}
_SDK_LOGGERS = ("opentelemetry.sdk._shared_internal", "opentelemetry.sdk.trace.export")
# They log a malformed traceparent or tracestate with its text: a stranger's header, once per request.
_HEADER_LOGGERS = ("opentelemetry.trace.span", "opentelemetry.trace.propagation.tracecontext")


class _Shared:
    """A provider of this process, where its drops are counted (the metrics of the bridge configured last),
    and its flush under way (one at a time)."""

    def __init__(self, provider: TracerProvider, dropped: DroppedSpans) -> None:
        self.provider, self.dropped = provider, dropped
        self.flushing: threading.Thread | None = None

    def count(self, reason: str, count: int) -> None:
        self.dropped(reason, count)

    def flush(self, timeout: float) -> None:
        # The exporter may retry a collector that is down for its whole OTEL_EXPORTER_OTLP_TIMEOUT: flush on a
        # daemon thread and wait only `timeout`, so the drain keeps its deadline and the process can exit. A
        # flush still running from an earlier stop is waited for, not joined by another.
        if self.flushing is None or not self.flushing.is_alive():
            self.flushing = threading.Thread(target=self.provider.force_flush, name="trace-flush", daemon=True)
            self.flushing.start()
        self.flushing.join(timeout)


# One provider per configuration (the OTEL_* variables, or a test's exporter): `configure` again reuses it.
_PROVIDERS: dict[tuple[object, ...], _Shared] = {}


def configure(
    dropped: DroppedSpans, *, ignored: Callable[[], None] | None = None, exporter: SpanExporter | None = None
) -> Tracing:
    """A tracer exporting as the `OTEL_*` variables say (the SDK reads them from the process environment);
    raises ConfigError naming a bad one.

    `exporter`, when given, replaces the one OTEL_TRACES_EXPORTER names (a test's in-memory one).
    """
    env = os.environ
    key = (exporter, *sorted((name, value) for name, value in env.items() if name.startswith("OTEL_")))
    shared = _PROVIDERS.get(key)
    if shared is None:
        exporters = _exporters(env) if exporter is None else [exporter]
        _check_sampler(env)
        _PROVIDERS[key] = shared = _Shared(TracerProvider(resource=_resource(), shutdown_on_exit=False), dropped)
        for chosen in exporters:
            shared.provider.add_span_processor(BatchSpanProcessor(_Counted(chosen, shared.count)))
    shared.dropped = dropped
    _filter(_SDK_LOGGERS, _QueueFull(dropped))
    _filter(_HEADER_LOGGERS, _HeaderNotes(ignored))
    return _Tracer(shared)


def _filter(names: tuple[str, ...], counter: logging.Filter) -> None:
    for name in names:
        logger = logging.getLogger(name)
        # One counter per process (the last tracer's), ahead of the SDK's own filter, which lets through
        # only the first of a run of equal warnings.
        logger.filters = [counter, *(kept for kept in logger.filters if type(kept) is not type(counter))]


def _exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    names = [name.strip().lower() for name in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if name.strip()]
    for name in names:
        if name not in _EXPORTERS:
            raise ConfigError("OTEL_TRACES_EXPORTER", f"must be among {', '.join(_EXPORTERS)}, got {name!r}")
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(variable)
        if protocol is not None and protocol.strip() != _PROTOCOL:
            raise ConfigError(variable, f"must be {_PROTOCOL} (the exporter the bridge carries), got {protocol!r}")
        if protocol is not None:
            break
    chosen: list[SpanExporter] = []
    if "none" in names:
        return chosen
    if "otlp" in names:
        chosen.append(OTLPSpanExporter())
    if "console" in names:
        chosen.append(ConsoleSpanExporter())
    return chosen


def _check_sampler(env: Mapping[str, str]) -> None:
    sampler = env.get("OTEL_TRACES_SAMPLER")
    if sampler is None:
        return
    if sampler.strip().lower() not in _SAMPLERS:
        raise ConfigError("OTEL_TRACES_SAMPLER", f"must be one of {', '.join(_SAMPLERS)}, got {sampler!r}")
    argument = env.get("OTEL_TRACES_SAMPLER_ARG")
    if argument is not None and sampler.strip().lower().endswith("traceidratio"):
        try:
            ratio = float(argument)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError("OTEL_TRACES_SAMPLER_ARG", f"must be a ratio from 0 to 1, got {argument!r}")


def _resource() -> Resource:
    """The SDK's resource from OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, named scalekit-bridge unless they say."""
    detected = Resource.create({SERVICE_VERSION: __version__})
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        return detected.merge(Resource({SERVICE_NAME: SERVICE}))
    return detected


class _Counted(SpanExporter):
    """An exporter that counts the spans of every batch it could not deliver."""

    def __init__(self, exporter: SpanExporter, dropped: DroppedSpans) -> None:
        self._exporter, self._dropped = exporter, dropped

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._exporter.export(spans)
        except Exception:  # noqa: BLE001 - an exporter's failure is a count, never the delivery's
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._dropped("export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class _QueueFull(logging.Filter):
    """The batch processor says "Queue full" once per span it drops; count them instead of logging each."""

    def __init__(self, dropped: DroppedSpans) -> None:
        super().__init__()
        self._dropped = dropped

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and record.getMessage().startswith("Queue full"):
            self._dropped("queue_full", 1)
            return False
        return True


class _HeaderNotes(logging.Filter):
    """OpenTelemetry's lines about an incoming trace header quote it: counted, never written."""

    def __init__(self, ignored: Callable[[], None] | None) -> None:
        super().__init__()
        self._ignored = ignored

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and self._ignored is not None:
            self._ignored()
        return False


class _Span:
    """An SDK span, as `bridge.tracing.Span`; `current` spans are attached while their `with` block runs."""

    __slots__ = ("_context", "_failed", "_span", "_token")

    def __init__(self, span: trace.Span, *, current: bool) -> None:
        self._span = span
        self._failed = False
        self._context: TraceContext | None = None
        self._token: object | None = otel_context.attach(trace.set_span_in_context(span)) if current else None

    @property
    def context(self) -> TraceContext | None:
        if self._context is None:
            self._context = _context_of(self._span)
        return self._context

    def set(self, name: str, value: Attribute) -> None:
        self._span.set_attribute(name, value)

    def sending_to(self, topic: str, key: bytes | None) -> None:
        self._span.update_name(f"send {topic}")
        self._span.set_attribute("messaging.destination.name", topic)
        if key is not None:
            self._span.set_attribute("messaging.kafka.message.key", key.decode("utf-8", "replace"))

    def written(self, partition: int, offset: int) -> None:
        self._span.set_attribute("messaging.destination.partition.id", str(partition))
        self._span.set_attribute("messaging.kafka.offset", offset)

    def fail(self, error: str) -> None:
        self._failed = True
        self._span.set_attribute("error.type", error)
        self._span.set_status(Status(StatusCode.ERROR, error))

    def ended(self, outcome: str, error: str | None) -> None:
        self._span.set_attribute(OUTCOME_ATTRIBUTE, str(outcome))
        if error is None:
            self._span.set_status(Status(StatusCode.OK))
        else:
            self.fail(error)

    def end(self) -> None:
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self._token = None
        self._span.end()

    def __enter__(self) -> _Span:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None and not self._failed:
            self.fail(type(exc).__name__)
        self.end()


class _Tracer:
    enabled = True

    def __init__(self, shared: _Shared) -> None:
        self._shared = shared
        self._tracer = shared.provider.get_tracer("scalekit-bridge", __version__)

    def delivery(self, method: str, route: str, headers: Mapping[str, str]) -> _Span:
        attributes = {"http.request.method": method, "http.route": route}
        span = self._tracer.start_span(
            f"{method} {route}", context=_parent(headers), kind=SpanKind.SERVER, attributes=attributes
        )
        return _Span(span, current=True)

    def step(self, name: str) -> _Span | _Unsampled:
        if not trace.get_current_span().is_recording():
            return _UNSAMPLED
        return _Span(self._tracer.start_span(name), current=True)

    def producer(self) -> _Span | _Unsampled:
        current = trace.get_current_span()
        if not current.is_recording() and current.get_span_context().is_valid:
            # The delivery is not sampled: its records carry the server span's context (not sampled) as is.
            return _Unsampled(_context_of(current))
        return _Span(self._tracer.start_span("send", kind=SpanKind.PRODUCER, attributes=_PRODUCER), current=False)

    def run(self, name: str) -> _Span:
        # A run starts its own trace: whatever context the process began with is not its parent.
        return _Span(self._tracer.start_span(name, context=otel_context.Context()), current=True)

    def current_ids(self) -> tuple[str, str] | None:
        context = trace.get_current_span().get_span_context()
        if not context.trace_flags.sampled:
            return None
        return format(context.trace_id, "032x"), format(context.span_id, "016x")

    def shutdown(self, timeout: float) -> None:
        """Flush for at most `timeout` seconds; the provider stays for the process's next bridge."""
        self._shared.flush(timeout)


def _context_of(span: trace.Span) -> TraceContext | None:
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=trace.set_span_in_context(span))
    parent = carrier.get("traceparent")
    return TraceContext(parent, carrier.get("tracestate")) if parent is not None else None


class _Unsampled(NoSpan):
    """A child of a span the sampler dropped: recording nothing, it skips the SDK's span altogether.

    A record still carries the trace's context (flagged not sampled), so a consumer's parent-based
    sampler makes the same decision."""

    def __init__(self, context: TraceContext | None) -> None:
        self.context = context


_UNSAMPLED = _Unsampled(None)


def _parent(headers: Mapping[str, str]) -> otel_context.Context:
    """The incoming trace context when it is well-formed and within bounds; else an empty one (a new trace).

    The current context (an embedding application's own server span, say) is the parent when the
    request carries none.
    """
    parent = headers.get("traceparent")
    if parent is None:
        return otel_context.get_current()
    if len(parent) > MAX_TRACEPARENT:
        return otel_context.Context()
    carrier = {"traceparent": parent}
    state = headers.get("tracestate")
    if state is not None and len(state) <= MAX_TRACESTATE:
        carrier["tracestate"] = state
    # The W3C propagator refuses a malformed traceparent (and an all-zero id) by returning the context unchanged.
    return _W3C.extract(carrier, context=otel_context.Context())
