"""Traces (BRIDGE_TRACING=true): the spans of one delivery, the context in its record, and what no span may hold.

The publisher is faked and spans are kept in memory here; tests/integration/test_traces.py reads
the same trace back from a real Jaeger, through a real broker and a consumer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
from datetime import UTC, datetime

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bridge import otel
from bridge.config import Settings
from bridge.core import StoredRecord
from bridge.envelope import KafkaMessage, Recovered, Replayed, rebuild_delivery
from bridge.errors import ConfigError
from bridge.metrics import Metrics
from bridge.replay import Tally, _Letter, _Planned, _publish
from bridge.service import Bridge
from bridge.testing import trace_context
from bridge.verify import VerifiedDelivery
from tests.fakes import RecordingProducer, writer_for
from tests.helpers import body_of, loopback, serving, signed_headers

SECRET = "whsec_" + base64.b64encode(b"t" * 32).decode()
PATH = "/webhooks/scalekit"
ENVELOPE = {
    "id": "evt_trace_1",
    "type": "user.created",
    "environment_id": "env_1",
    "organization_id": "org_trace",
    "occurred_at": "2026-11-30T10:00:00Z",
    "data": {"email": "ada.lovelace@example.com", "first_name": "Ada", "secret_note": "pineapple-42"},
}
INCOMING = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Traced:
    """A bridge on the public listener with tracing on, its spans in memory and its writes recorded."""

    def __init__(self, mode: str = "binary") -> None:
        env = {"SCALEKIT_WEBHOOK_SECRET": SECRET, "BRIDGE_CLOUDEVENTS_MODE": mode, **loopback()}
        self.metrics = Metrics(process_metrics=False)
        self.spans = InMemorySpanExporter()
        self.tracing = otel.configure(self.metrics.drop_spans, exporter=self.spans)
        self.producer = RecordingProducer()
        self.bridge = Bridge.assemble(Settings.from_env(env), self.producer, self.metrics, self.tracing)

    def finished(self):
        self.tracing.shutdown(5.0)
        return self.spans.get_finished_spans()


async def deliver(bridge: Bridge, body: bytes, headers: dict[str, str]):
    async with serving(bridge) as (public, admin):
        response = await public.post(PATH, data=body, headers=headers)
        metrics = await admin.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        return response.status, await metrics.text()


def by_name(spans, name: str):
    [span] = [span for span in spans if span.name == name]
    return span


def header(message: KafkaMessage, name: str) -> str:
    return dict(message.headers)[name].decode()


def traceparent_of(span) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


async def test_a_published_delivery_is_one_trace_whose_write_span_created_the_record():
    traced = Traced()
    body = body_of(ENVELOPE)
    status, _ = await deliver(traced.bridge, body, signed_headers(SECRET, body))
    spans = traced.finished()

    assert status == 201
    server, verify, mapping = by_name(spans, f"POST {PATH}"), by_name(spans, "verify"), by_name(spans, "map")
    send = by_name(spans, "send scalekit.user.created")
    assert server.kind == SpanKind.SERVER and send.kind == SpanKind.PRODUCER
    assert {span.context.trace_id for span in spans} == {server.context.trace_id}
    assert {span.parent.span_id for span in (verify, mapping, send)} == {server.context.span_id}
    assert server.attributes["scalekit_bridge.outcome"] == "published"
    assert server.attributes["http.response.status_code"] == 201
    assert server.status.status_code == StatusCode.OK
    assert dict(send.attributes) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "scalekit.user.created",
        "messaging.kafka.message.key": "org_trace",
        "messaging.destination.partition.id": "0",
        "messaging.kafka.offset": 0,
        "cloudevents.event_id": "evt_trace_1",
        "cloudevents.event_type": "user.created",
        "scalekit_bridge.outcome": "published",
    }
    [record] = traced.producer.handed
    assert header(record, "ce_traceparent") == traceparent_of(send)
    assert header(record, "traceparent") == traceparent_of(send)


async def test_the_record_extension_is_read_by_the_cloudevents_sdk_in_both_modes():
    for mode in ("binary", "structured"):
        traced = Traced(mode)
        body = body_of(ENVELOPE)
        context = {"traceparent": INCOMING, "tracestate": "a=1"}
        await deliver(traced.bridge, body, signed_headers(SECRET, body) | context)
        [record] = traced.producer.handed
        message = ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
        read = ce_kafka.from_structured if mode == "structured" else ce_kafka.from_binary
        event = read(message, JSONFormat())
        send = by_name(traced.finished(), "send scalekit.user.created")
        assert event.get_extension("traceparent") == traceparent_of(send), mode
        assert event.get_extension("tracestate") == "a=1", mode
        assert trace_context(event) == {"traceparent": traceparent_of(send), "tracestate": "a=1"}, mode


async def test_the_trace_context_is_the_bridges_own_and_never_part_of_the_rebuilt_envelope():
    for mode in ("binary", "structured"):
        traced = Traced(mode)
        body = body_of(ENVELOPE)
        context = {"tracestate": "a=1", "traceparent": INCOMING}
        await deliver(traced.bridge, body, signed_headers(SECRET, body) | context)
        [record] = traced.producer.handed
        assert rebuild_delivery(record.headers, record.value) == ENVELOPE, mode


async def test_a_dead_letter_carries_the_context_of_the_span_that_wrote_it():
    traced = Traced()
    body = b'{"id": "evt_x", "type": "no such/type", "data": {}}'  # no topic for it: dead-lettered, answered 201
    status, _ = await deliver(traced.bridge, body, signed_headers(SECRET, body))
    spans = traced.finished()

    assert status == 201
    [letter] = traced.producer.handed
    send = by_name(spans, "send scalekit.deadletter")
    assert letter.topic == "scalekit.deadletter"
    assert header(letter, "traceparent") == traceparent_of(send)
    server = by_name(spans, f"POST {PATH}")
    assert server.attributes["scalekit_bridge.outcome"] == "deadlettered"
    assert (server.status.status_code, server.attributes["error.type"]) == (StatusCode.ERROR, "deadlettered")


async def test_an_unsampled_delivery_exports_nothing_and_its_record_carries_the_unsampled_context(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    traced = Traced()
    body = body_of(ENVELOPE)
    status, _ = await deliver(traced.bridge, body, signed_headers(SECRET, body))

    assert status == 201 and traced.finished() == ()
    [record] = traced.producer.handed
    version, trace_id, _, flags = header(record, "ce_traceparent").split("-")
    assert version == "00" and int(flags, 16) & 1 == 0 and trace_id != "0" * 32  # the sampled bit is off
    assert header(record, "traceparent") == header(record, "ce_traceparent")


async def test_a_refused_delivery_says_why_in_fixed_words_and_writes_nothing():
    traced = Traced()
    body = body_of(ENVELOPE)
    status, _ = await deliver(traced.bridge, body, signed_headers(SECRET, body) | {"webhook-signature": "v1,AAAA"})
    spans = traced.finished()

    assert status == 401 and traced.producer.handed == []
    server, verify = by_name(spans, f"POST {PATH}"), by_name(spans, "verify")
    assert server.attributes["scalekit_bridge.outcome"] == "rejected"
    assert server.attributes["error.type"] == verify.attributes["error.type"] == "no_matching_signature"
    assert [span.name for span in spans if span.kind == SpanKind.PRODUCER] == []


async def test_an_incoming_well_formed_traceparent_is_the_parent():
    traced = Traced()
    body = body_of(ENVELOPE)
    await deliver(traced.bridge, body, signed_headers(SECRET, body) | {"traceparent": INCOMING})
    server = by_name(traced.finished(), f"POST {PATH}")
    assert f"{server.context.trace_id:032x}" == INCOMING.split("-")[1]
    assert f"{server.parent.span_id:016x}" == INCOMING.split("-")[2]


@pytest.mark.parametrize(
    "traceparent",
    [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",  # a field short
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # the all-zero trace id
        "zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-" + "x" * 4000,  # a later version, oversized
    ],
    ids=["short", "zero", "garbage", "oversized"],
)
async def test_a_malformed_or_oversized_traceparent_starts_a_new_trace_and_the_delivery_succeeds(traceparent):
    traced = Traced()
    body = body_of(ENVELOPE)
    status, _ = await deliver(traced.bridge, body, signed_headers(SECRET, body) | {"traceparent": traceparent})
    server = by_name(traced.finished(), f"POST {PATH}")
    assert status == 201
    assert server.parent is None
    assert f"{server.context.trace_id:032x}" != INCOMING.split("-")[1]


async def test_no_span_attribute_holds_a_header_value_a_body_value_or_a_secret():
    traced = Traced()
    body = body_of(ENVELOPE)
    headers = signed_headers(SECRET, body, webhook_id="msg_header_value_1") | {
        "user-agent": "Svix-Webhooks/1.99 agent-marker",
        "x-forwarded-for": "203.0.113.77",
    }
    await deliver(traced.bridge, body, headers)
    refused = signed_headers(SECRET, body) | {"webhook-signature": "v1,Zm9yZ2VkLXNpZ25hdHVyZQ=="}
    await deliver(traced.bridge, body, refused)
    spans = traced.finished()

    values = [str(value) for span in spans for value in span.attributes.values()]
    values += [str(value) for span in spans for event in span.events for value in event.attributes.values()]
    values += [span.status.description or "" for span in spans]
    forbidden = [
        SECRET,
        SECRET.removeprefix("whsec_"),
        headers["webhook-signature"].split(",", 1)[1],
        refused["webhook-signature"].split(",", 1)[1],
        headers["webhook-id"],
        headers["webhook-timestamp"],
        "agent-marker",
        "203.0.113.77",
        "ada.lovelace@example.com",
        "Ada",
        "pineapple-42",
        body.decode(),
    ]
    assert len(spans) >= 6
    assert [(secret, value) for secret in forbidden for value in values if secret in value] == []


async def test_the_latency_histograms_carry_the_trace_as_an_exemplar_in_openmetrics():
    traced = Traced()
    body = body_of(ENVELOPE)
    _, exposition = await deliver(traced.bridge, body, signed_headers(SECRET, body))
    server = by_name(traced.finished(), f"POST {PATH}")
    exemplar = f'# {{trace_id="{server.context.trace_id:032x}"}}'
    request_buckets = [line for line in exposition.splitlines() if line.startswith("scalekit_bridge_request_duration")]
    publish_buckets = [line for line in exposition.splitlines() if line.startswith("scalekit_bridge_publish_duration")]
    assert any(exemplar in line for line in request_buckets)
    assert any(exemplar in line for line in publish_buckets)


async def test_the_delivery_log_line_names_its_trace_and_span(caplog):
    traced = Traced()
    body = body_of(ENVELOPE)
    with caplog.at_level("INFO", logger="bridge.delivery"):
        await deliver(traced.bridge, body, signed_headers(SECRET, body))
    server = by_name(traced.finished(), f"POST {PATH}")
    [line] = [record.delivery for record in caplog.records if record.name == "bridge.delivery"]
    assert (line["trace_id"], line["span_id"]) == (f"{server.context.trace_id:032x}", f"{server.context.span_id:016x}")


async def test_a_replay_run_is_one_span_and_each_replayed_record_carries_its_own_producer_spans_context():
    spans = InMemorySpanExporter()
    tracing = otel.configure(lambda reason, count: None, exporter=spans)
    producer = RecordingProducer()
    writer = writer_for(producer, tracing=tracing)
    plans = []
    for n in range(2):
        body = body_of(ENVELOPE | {"id": f"evt_{n}"})
        origin = Replayed(VerifiedDelivery(f"msg_{n}", "1760000000", body, "v1,c2ln"), "2026-11-30T12:00:00Z")
        record = StoredRecord(KafkaMessage("scalekit.deadletter", None, body, ()), 0, n, 0)
        letter = _Letter(record, {}, None, datetime(2026, 11, 30, tzinfo=UTC))
        plans.append(_Planned(letter, origin, writer.plan(origin)))
    with tracing.run("replay"):
        await _publish(writer, producer, plans, Tally(dry_run=False))
    tracing.shutdown(5.0)
    finished = spans.get_finished_spans()

    run = by_name(finished, "replay")
    sends = [span for span in finished if span.kind == SpanKind.PRODUCER]
    assert {span.parent.span_id for span in sends} == {run.context.span_id} and len(sends) == 2
    assert [header(record, "ce_traceparent") for record in producer.handed] == [traceparent_of(s) for s in sends]
    assert [header(record, "traceparent") for record in producer.handed] == [traceparent_of(s) for s in sends]
    assert all(header(record, "ce_replayedat") == "2026-11-30T12:00:00Z" for record in producer.handed)
    assert [s.attributes["messaging.kafka.offset"] for s in sends] == [0, 1]


class Stuck(InMemorySpanExporter):
    """A collector that does not answer until released: the batch processor's queue fills up behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def export(self, spans):
        self.release.wait(10)
        return super().export(spans)


async def test_a_backfill_run_is_one_span_and_each_record_carries_the_context_of_its_own_producer_span():
    spans = InMemorySpanExporter()
    tracing = otel.configure(lambda reason, count: None, exporter=spans)
    producer = RecordingProducer()
    writer = writer_for(producer, tracing=tracing)
    events = [ENVELOPE | {"id": f"evt_{n}"} for n in range(3)]
    with tracing.run("backfill"):
        sent = [await writer.send(Recovered(e["id"], body_of(e), "2026-11-30T12:00:00Z"), producer) for e in events]
        for each in sent:
            await writer.settle(each)
    tracing.shutdown(5.0)
    finished = spans.get_finished_spans()

    run = by_name(finished, "backfill")
    sends = [span for span in finished if span.kind == SpanKind.PRODUCER]
    assert run.parent is None and len(sends) == 3
    assert {span.parent.span_id for span in sends} == {run.context.span_id}
    assert [header(record, "ce_traceparent") for record in producer.handed] == [traceparent_of(s) for s in sends]
    assert [s.attributes["cloudevents.event_id"] for s in sends] == ["evt_0", "evt_1", "evt_2"]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_a_collector_that_is_down_costs_a_delivery_nothing_but_a_dropped_span_count(monkeypatch):
    metrics = Metrics(process_metrics=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    tracing = otel.configure(metrics.drop_spans)
    producer = RecordingProducer()
    settings = Settings.from_env({"SCALEKIT_WEBHOOK_SECRET": SECRET, **loopback()})
    bridge = Bridge.assemble(settings, producer, metrics, tracing)
    body = body_of(ENVELOPE)
    async with serving(bridge) as (public, _):
        statuses = [(await public.post(PATH, data=body, headers=signed_headers(SECRET, body))).status for _ in range(3)]
    for _ in range(100):
        if metrics.trace_spans_dropped.labels(reason="export_failed")._value.get() > 0:
            break
        await asyncio.sleep(0.05)

    assert statuses == [201, 201, 201] and len(producer.handed) == 3
    assert metrics.trace_spans_dropped.labels(reason="export_failed")._value.get() > 0


async def test_a_full_span_queue_drops_spans_and_counts_them_without_a_log_line_each(caplog, monkeypatch):
    metrics = Metrics(process_metrics=False)
    for variable, value in {
        "OTEL_BSP_MAX_QUEUE_SIZE": "2", "OTEL_BSP_SCHEDULE_DELAY": "60000", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2"
    }.items():
        monkeypatch.setenv(variable, value)
    stuck = Stuck()
    tracing = otel.configure(metrics.drop_spans, exporter=stuck)
    with caplog.at_level("WARNING"):
        for _ in range(20):
            with tracing.run("work"):
                pass
    stuck.release.set()
    # The queue holds 2 and the exporter took the first batch of 2: at least 15 of the 20 were dropped.
    assert metrics.trace_spans_dropped.labels(reason="queue_full")._value.get() >= 15
    assert [record for record in caplog.records if "Queue full" in record.getMessage()] == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
    ],
)
def test_a_bad_otel_variable_stops_the_start_naming_itself(variable, value, monkeypatch):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as refused:
        otel.configure(lambda reason, count: None)
    assert refused.value.variable == variable


def test_a_sampler_ratio_out_of_range_stops_the_start(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "5")
    with pytest.raises(ConfigError) as refused:
        otel.configure(lambda reason, count: None)
    assert refused.value.variable == "OTEL_TRACES_SAMPLER_ARG"


def test_the_spans_name_the_service_unless_the_standard_variables_say_otherwise(monkeypatch):
    resource = otel._resource()
    assert resource.attributes["service.name"] == "scalekit-bridge"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "bridge-eu")
    assert otel._resource().attributes["service.name"] == "bridge-eu"


def test_tracing_off_writes_records_without_any_trace_header():
    from bridge.tracing import OFF

    assert OFF.producer().context is None
    assert json.dumps(OFF.current_ids()) == "null"


async def test_a_malformed_tracestate_is_counted_and_its_text_never_reaches_the_log(caplog):
    """OpenTelemetry logs a malformed tracestate member with its text, at WARNING, once per request: a
    stranger's header in the log and a log flood for anyone. The bridge counts it instead."""
    traced = Traced()
    traced.tracing = otel.configure(traced.metrics.drop_spans, ignored=traced.metrics.ignore_trace_header,
                                    exporter=traced.spans)
    body = body_of(ENVELOPE)
    headers = {"traceparent": INCOMING, "tracestate": "vendor=ok,not a member: c2VjcmV0"}
    caplog.set_level("DEBUG")

    async with serving(traced.bridge) as (public, _):
        for _ in range(3):
            assert (await public.post(PATH, data=body, headers=headers | signed_headers(SECRET, body))).status == 201

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "c2VjcmV0" not in logged and "not a member" not in logged
    assert traced.metrics.trace_headers_ignored._value.get() == 3


def test_one_provider_per_process_however_often_a_bridge_starts_and_no_exit_handler_waits_for_it(monkeypatch):
    """Embedding and the test kit start and stop bridges many times: each start must not leave an export
    thread and an exit handler behind (the handler would hold the exit on a collector that does not answer)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", f"provider-reuse-{closed_port()}")  # a configuration of its own

    def started() -> object:
        tracing = otel.configure(lambda reason, count: None)
        with tracing.run("work"):
            pass
        tracing.shutdown(0.1)
        return tracing._shared.provider  # type: ignore[attr-defined]

    first = started()
    threads = threading.active_count()
    later = [started() for _ in range(5)]

    assert all(provider is first for provider in later)
    assert threading.active_count() <= threads  # no export or flush thread more than the first start left
    assert first._atexit_handler is None  # type: ignore[attr-defined]
