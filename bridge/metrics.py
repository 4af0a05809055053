"""Prometheus metrics on an injected registry (no module-level collectors).

Every label takes values from a closed set: outcomes are `bridge.core.Outcome`, reasons the
constants below, event types come only from verified deliveries whose type
already passed the topic-name check, and statuses are HTTP codes we send.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.exposition import choose_encoder

from bridge import __version__
from bridge.core import Outcome, Source
from bridge.verify import REASONS

# Why the public port refused a request or connection (bridge.guard, bridge.app), before any delivery work.
CONNECTION_LIMIT = "connection_limit"
HEADER_TIMEOUT = "header_timeout"
HEADER_TOO_LARGE = "header_too_large"
BODY_TIMEOUT = "body_timeout"
UNSUPPORTED_ENCODING = "unsupported_content_encoding"
OVERLOADED = "overloaded"
BAD_REQUEST = "bad_request"
# The client hung up before its request was in: its doing, not ours (answered 499, as nginx logs it).
CLIENT_CLOSED = "client_closed"
HTTP_REFUSALS = (
    CONNECTION_LIMIT,
    HEADER_TIMEOUT,
    HEADER_TOO_LARGE,
    BODY_TIMEOUT,
    UNSUPPORTED_ENCODING,
    OVERLOADED,
    BAD_REQUEST,
    CLIENT_CLOSED,
)

# How a connection closed after its last answer (bridge.guard's lingering close).
CLOSES = ("graceful", "reset")

# Why spans were dropped on their way to the collector (bridge.otel).
SPANS_DROPPED = ("queue_full", "export_failed")

# Event type label for deliveries whose type we do not know (yet) or cannot trust.
UNKNOWN_TYPE = "unknown"
# Event type label for undocumented types dead-lettered rather than published (BRIDGE_MAX_UNKNOWN_TYPES).
OTHER_TYPE = "other"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, process_metrics: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        if process_metrics:
            # The default collectors are singletons; register them on our registry.
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)
        self.deliveries = Counter(
            "scalekit_bridge_deliveries",
            "Webhook deliveries by how they ended.",
            ("outcome", "event_type"),
            registry=self.registry,
        )
        self.verification_failures = Counter(
            "scalekit_bridge_verification_failures",
            "Deliveries refused with 401, by reason.",
            ("reason",),
            registry=self.registry,
        )
        self.schema_violations = Counter(
            "scalekit_bridge_schema_violations",
            "Written deliveries of a documented type that did not match its schema "
            "(published in warn mode, dead-lettered in enforce mode).",
            ("event_type",),
            registry=self.registry,
        )
        self.unknown_event_types = Counter(
            "scalekit_bridge_unknown_event_types",
            "Deliveries whose event type has no schema (not documented when this bridge was built): published, by "
            "type, up to BRIDGE_MAX_UNKNOWN_TYPES types; dead-lettered past it, as event_type=\"other\".",
            ("event_type",),
            registry=self.registry,
        )
        self.http_refusals = Counter(
            "scalekit_bridge_http_refusals",
            "Requests or connections refused on the public port before any delivery work, by reason.",
            ("reason",),
            registry=self.registry,
        )
        self.internal_errors = Counter(
            "scalekit_bridge_internal_errors",
            "Unexpected exceptions caught at the error boundary (each one is a bug; the log line names it).",
            registry=self.registry,
        )
        self.open_connections = Gauge(
            "scalekit_bridge_open_connections",
            "Connections open on the public port.",
            registry=self.registry,
        )
        self.lingering_connections = Gauge(
            "scalekit_bridge_lingering_connections",
            "Public-port connections answered and closing: their unread bytes are being read and thrown away.",
            registry=self.registry,
        )
        self.closed_connections = Counter(
            "scalekit_bridge_closed_connections",
            "Public-port connections closed after their last answer, by how: graceful (the client closed its side "
            "while lingering) or reset (a lingering bound, or the lingering cap, was reached first).",
            ("how",),
            registry=self.registry,
        )
        self.publish_duration = Histogram(
            "scalekit_bridge_publish_duration_seconds",
            "Time from handing a record to the producer until the broker acknowledged it.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "scalekit_bridge_request_duration_seconds",
            "Whole webhook request time, by response status.",
            ("status",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge(
            "scalekit_bridge_inflight_requests",
            "Webhook requests being handled right now.",
            registry=self.registry,
        )
        self.ready = Gauge(
            "scalekit_bridge_ready",
            "1 while the bridge can reach Kafka and takes deliveries, else 0.",
            registry=self.registry,
        )
        self.deadletter_topic_missing = Gauge(
            "scalekit_bridge_deadletter_topic_missing",
            "1 while the dead-letter topic does not exist and the bridge may not create it (the bridge is then "
            "not ready: a verified but unroutable delivery could only get 503), else 0.",
            registry=self.registry,
        )
        self.redelivery_cache_entries = Gauge(
            "scalekit_bridge_redelivery_cache_entries",
            "Acknowledged webhook ids remembered for answering redeliveries.",
            registry=self.registry,
        )
        self.dedup_stopped = Counter(
            "scalekit_bridge_dedup_duplicates_total",
            "Events not written again because the release wrote their record within the window "
            "(BRIDGE_DEDUP): by the writer stopped (source) and the one that wrote it first (written_by).",
            ("source", "written_by"),
            registry=self.registry,
        )
        self.dedup_remembered = Gauge(
            "scalekit_bridge_dedup_remembered_ids",
            "Event ids this process remembers as written by the release (BRIDGE_DEDUP).",
            registry=self.registry,
        )
        self.dedup_reach = Gauge(
            "scalekit_bridge_dedup_reach_seconds",
            "How far back the memory of written event ids reaches: BRIDGE_DEDUP_WINDOW, or less once "
            "BRIDGE_DEDUP_MAX_IDS cut it short.",
            registry=self.registry,
        )
        self.dedup_receipts_lag = Gauge(
            "scalekit_bridge_dedup_receipts_lag_seconds",
            "Seconds since this process last held every receipt on the receipts topic (0 while it does): a "
            "retry reaching it may repeat a record another replica wrote within that time.",
            registry=self.registry,
        )
        self.dedup_receipt_failures = Counter(
            "scalekit_bridge_dedup_receipt_failures_total",
            "Receipts not written after their record was (the broker refused or timed out): a retry of that "
            "event reaching another replica may be written again.",
            registry=self.registry,
        )
        self.trace_spans_dropped = Counter(
            "scalekit_bridge_trace_spans_dropped",
            "Spans not handed to the collector (BRIDGE_TRACING=true): its queue was full, or an export failed.",
            ("reason",),
            registry=self.registry,
        )
        self.trace_headers_ignored = Counter(
            "scalekit_bridge_trace_headers_ignored",
            "Incoming trace-context headers (BRIDGE_TRACING=true) that OpenTelemetry could not use, such as a "
            "malformed tracestate member; its log line, which quotes the header, is not written.",
            registry=self.registry,
        )
        self.build_info = Info(
            "scalekit_bridge_build",
            "Version of the running bridge.",
            registry=self.registry,
        )
        self.build_info.info({"version": __version__})
        # Children of the per-delivery series, looked up once per label value rather than once a delivery.
        self._request_durations: dict[int, Histogram] = {}
        self._deliveries: dict[tuple[str, str], Counter] = {}
        # Pre-create the fixed series so dashboards and alerts see zeros, not gaps.
        for reason in REASONS:
            self.verification_failures.labels(reason=reason)
        for outcome in (Outcome.REJECTED, Outcome.TOO_LARGE):
            self.deliveries.labels(outcome=outcome, event_type=UNKNOWN_TYPE)
        for refusal in HTTP_REFUSALS:
            self.http_refusals.labels(reason=refusal)
        self.unknown_event_types.labels(event_type=OTHER_TYPE)
        for how in CLOSES:
            self.closed_connections.labels(how=how)
        for reason in SPANS_DROPPED:
            self.trace_spans_dropped.labels(reason=reason)
        for source in Source:
            for first in Source:
                self.dedup_stopped.labels(source=source, written_by=first)
        # The statuses the delivery alerts divide by; a first 503 then counts as an increase.
        for status in (201, 401, 503):
            self._request_child(status)

    def expect_event_types(self, documented: Iterable[str]) -> None:
        """Create at 0 every series an alert reads per event type, for the documented types and the two others.

        A counter created at its first increment hides that increment from `increase()`: the first dead
        letter of a pod, answered 201 and never retried, would alert no one.
        """
        for event_type in documented:
            self.schema_violations.labels(event_type=event_type)
            self._delivery_child(Outcome.DEADLETTERED, event_type)
        for event_type in (UNKNOWN_TYPE, OTHER_TYPE):
            self._delivery_child(Outcome.DEADLETTERED, event_type)

    def _request_child(self, status: int) -> Histogram:
        histogram = self._request_durations.get(status)
        if histogram is None:
            histogram = self._request_durations[status] = self.request_duration.labels(status=str(status))
        return histogram

    def _delivery_child(self, outcome: str, event_type: str) -> Counter:
        counter = self._deliveries.get((outcome, event_type))
        if counter is None:
            counter = self._deliveries[outcome, event_type] = self.deliveries.labels(
                outcome=outcome, event_type=event_type
            )
        return counter

    def observe_request(self, status: int, seconds: float, trace_id: str | None = None) -> None:
        """One webhook request answered with `status` after `seconds`; its trace, if sampled, as the exemplar."""
        self._request_child(status).observe(seconds, {"trace_id": trace_id} if trace_id is not None else None)

    def ignore_trace_header(self) -> None:
        """One incoming trace header the tracer could not use (its text is never logged)."""
        self.trace_headers_ignored.inc()

    def drop_spans(self, reason: str, count: int) -> None:
        """`count` spans the tracer could not hand to the collector (`reason` is one of SPANS_DROPPED)."""
        self.trace_spans_dropped.labels(reason=reason).inc(count)

    def count_delivery(self, outcome: str, event_type: str) -> None:
        """One delivery (or backfilled event) ended so."""
        self._delivery_child(outcome, event_type).inc()

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in the format `accept` asks for: OpenMetrics (which carries exemplars) or Prometheus text."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
