"""One trace from the delivery to the consumer, read back from a real Jaeger (OTLP in, its query API out).

The bridge runs as `serve` in its own process with BRIDGE_TRACING=true, exporting to Jaeger's all-in-one
(built pinned, tests/tools.py); the directory-sync example consumes with its own tracer exporting to the
same Jaeger. The trace is then read through Jaeger's API, not from any in-memory exporter.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from bridge.dev.kafka import free_port, terminate
from bridge.dev.samples import sample
from bridge.dev.topics import read_topics
from examples.directory_sync.consumer import DirectorySync, process_span
from examples.directory_sync.store import DirectoryStore
from tests import tools
from tests.integration.conftest import SECRET

pytestmark = pytest.mark.integration

SERVER, PRODUCER, CONSUMER = 2, 4, 5  # OTLP's span kinds


@dataclass
class Jaeger:
    otlp: str
    query: str

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """Every span Jaeger holds of the trace, each with its service name under "service"."""
        try:
            with urllib.request.urlopen(f"{self.query}/api/v3/traces/{trace_id}", timeout=5) as response:  # noqa: S310
                found = json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        spans = []
        for resource_spans in found["result"]["resourceSpans"]:
            resource = {a["key"]: a["value"].get("stringValue") for a in resource_spans["resource"]["attributes"]}
            for scope in resource_spans["scopeSpans"]:
                for span in scope["spans"]:
                    span["service"] = resource["service.name"]
                    span["attrs"] = {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", [])}
                    spans.append(span)
        return spans

    async def until_trace_has(self, trace_id: str, names: set[str], timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            spans = await asyncio.to_thread(self.trace, trace_id)
            if names <= {span["name"] for span in spans}:
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"Jaeger holds {sorted(span['name'] for span in spans)}, not all of {names}")
            await asyncio.sleep(0.3)


_CONFIG = """
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces: {{receivers: [otlp], processors: [batch], exporters: [jaeger_storage_exporter]}}
  telemetry: {{metrics: {{level: none}}, logs: {{level: warn}}}}
extensions:
  healthcheckv2: {{use_v2: true, http: {{endpoint: "127.0.0.1:{health}"}}}}
  jaeger_query:
    storage: {{traces: memstore}}
    # Its own spans would go to an OTLP endpoint nobody runs; at exit it waited 10 s on them.
    enable_tracing: false
    http: {{endpoint: "127.0.0.1:{query}"}}
    grpc: {{endpoint: "127.0.0.1:{query_grpc}"}}
  jaeger_storage: {{backends: {{memstore: {{memory: {{max_traces: 10000}}}}}}}}
receivers:
  otlp: {{protocols: {{http: {{endpoint: "127.0.0.1:{otlp}"}}}}}}
processors:
  batch: {{timeout: 100ms}}
exporters:
  jaeger_storage_exporter: {{trace_storage: memstore}}
"""


@pytest.fixture(scope="module")
def jaeger() -> Iterator[Jaeger]:
    binary = tools.required(tools.jaeger)
    ports = {name: free_port() for name in ("health", "query", "query_grpc", "otlp")}
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "jaeger.yaml"
        config.write_text(_CONFIG.format(**ports))
        with open(Path(scratch) / "jaeger.log", "wb") as log:
            process = subprocess.Popen([str(binary), "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
            try:
                _wait_until_healthy(process, ports["health"], Path(scratch) / "jaeger.log")
                yield Jaeger(f"http://127.0.0.1:{ports['otlp']}", f"http://127.0.0.1:{ports['query']}")
            finally:
                terminate(process, 10)


def _wait_until_healthy(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"Jaeger exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=1) as response:
                if json.load(response).get("healthy"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"Jaeger did not become healthy:\n{log.read_text()[-3000:]}")


def traced_bridge(bridge_process, kafka_bootstrap: str, jaeger: Jaeger, **env: str):
    return bridge_process(
        "serve",
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        BRIDGE_TRACING="on",
        OTEL_EXPORTER_OTLP_ENDPOINT=jaeger.otlp,
        OTEL_BSP_SCHEDULE_DELAY="100",
        **env,
    )


def consumer_tracer(jaeger: Jaeger) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "directory-sync"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{jaeger.otlp}/v1/traces")))
    return provider


def one(spans: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [span for span in spans if all(span.get(key) == value for key, value in match.items())]
    assert len(found) == 1, (match, [(span["name"], span["service"]) for span in spans])
    return found[0]


def leaves(node: Any) -> list[str]:
    """Every string in a JSON value."""
    if isinstance(node, dict):
        return [leaf for value in node.values() for leaf in leaves(value)]
    if isinstance(node, list):
        return [leaf for value in node for leaf in leaves(value)]
    return [node] if isinstance(node, str) else []


def trace_and_span(traceparent: bytes) -> tuple[str, str]:
    _, trace_id, span_id, _ = traceparent.decode().split("-")
    return trace_id, span_id


async def test_a_published_event_is_one_trace_from_the_delivery_to_the_consumers_process_span(
    bridge_process, kafka_bootstrap, jaeger, tmp_path
):
    bridge = traced_bridge(bridge_process, kafka_bootstrap, jaeger)
    await bridge.wait_for_readiness(200, 60)
    event = sample("organization.directory.user_created") | {"id": f"evt_{secrets.token_hex(8)}"}
    assert (await bridge.deliver(event))[0] == 201
    topic = bridge.prefix + "organization.directory.user_created"

    provider = consumer_tracer(jaeger)
    store = DirectoryStore(str(tmp_path / "directory.db"))
    sync = DirectorySync(
        store, bootstrap_servers=kafka_bootstrap, topic_prefix=bridge.prefix,
        group_id=f"g{secrets.token_hex(4)}", tracer=provider.get_tracer("directory-sync"),
    )
    stop = asyncio.Event()
    consuming = asyncio.create_task(sync.run(stop))
    try:
        async with asyncio.timeout(60):
            while sum(sync.outcomes.values()) < 1:
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await consuming
        store.close()
    provider.shutdown()

    [record] = await read_topics(kafka_bootstrap, {topic}.__contains__, 10)
    headers = dict(record.headers)
    trace_id, send_id = trace_and_span(headers["ce_traceparent"])
    assert headers["traceparent"] == headers["ce_traceparent"]
    spans = await jaeger.until_trace_has(
        trace_id, {"POST /webhooks/scalekit", "verify", "map", f"send {topic}", f"process {topic}"}
    )

    server = one(spans, name="POST /webhooks/scalekit", service="scalekit-bridge")
    send = one(spans, name=f"send {topic}")
    process = one(spans, name=f"process {topic}", service="directory-sync")
    assert (server["kind"], send["kind"], process["kind"]) == (SERVER, PRODUCER, CONSUMER)
    assert send["spanId"] == send_id and send["parentSpanId"] == server["spanId"]
    assert send["attrs"]["messaging.destination.name"] == topic
    assert send["attrs"]["messaging.destination.partition.id"] == str(record.partition)
    assert int(send["attrs"]["messaging.kafka.offset"]) == record.offset
    assert send["attrs"]["messaging.kafka.message.key"] == record.key.decode()
    assert server["attrs"]["scalekit_bridge.outcome"] == "published"
    assert process["parentSpanId"] == send_id
    assert [(link["traceId"], link["spanId"]) for link in process["links"]] == [(trace_id, send_id)]
    # What Jaeger holds of the bridge's spans: the event's id, type and key, never its data or the secret.
    held = [str(value) for span in spans if span["service"] == "scalekit-bridge" for value in span["attrs"].values()]
    allowed = {event["id"], event["type"], record.key.decode()}
    private = [value for value in leaves(event["data"]) if value not in allowed and len(value) > 3] + [SECRET]
    assert len(private) > 3
    assert [(value, attribute) for value in private for attribute in held if value in attribute] == []


async def test_a_dead_letter_is_one_trace_from_the_delivery_to_the_process_span_of_whoever_reads_it(
    bridge_process, kafka_bootstrap, jaeger
):
    bridge = traced_bridge(bridge_process, kafka_bootstrap, jaeger)
    await bridge.wait_for_readiness(200, 60)
    assert (await bridge.deliver({"id": "evt_dead_1", "type": "not a/type", "data": {}}))[0] == 201
    deadletter = bridge.prefix + "deadletter"

    [letter] = await read_topics(kafka_bootstrap, {deadletter}.__contains__, 10)
    trace_id, send_id = trace_and_span(dict(letter.headers)["traceparent"])
    provider = consumer_tracer(jaeger)
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    created = TraceContextTextMapPropagator().extract({"traceparent": dict(letter.headers)["traceparent"].decode()})
    process_span(provider.get_tracer("dead-letter-reader"), letter, created).end()
    provider.shutdown()

    # The reader's span comes through an exporter of its own: wait for it too, not only the bridge's.
    spans = await jaeger.until_trace_has(
        trace_id, {"POST /webhooks/scalekit", f"send {deadletter}", f"process {deadletter}"}
    )
    server = one(spans, name="POST /webhooks/scalekit")
    send = one(spans, name=f"send {deadletter}")
    process = one(spans, name=f"process {deadletter}")
    assert (send["spanId"], send["parentSpanId"]) == (send_id, server["spanId"])
    assert send["attrs"]["messaging.destination.partition.id"] == str(letter.partition)
    assert int(send["attrs"]["messaging.kafka.offset"]) == letter.offset
    assert server["attrs"]["scalekit_bridge.outcome"] == "deadlettered"
    assert server["status"].get("code") == 2  # STATUS_CODE_ERROR: someone has to look at a dead letter
    assert [(link["traceId"], link["spanId"]) for link in process["links"]] == [(trace_id, send_id)]


async def test_a_collector_that_never_answers_does_not_hold_the_exit_past_the_grace(bridge_process, kafka_bootstrap):
    """Spans stuck in an export to a collector that accepts and never answers are abandoned at the end of the
    drain: no exit handler of OpenTelemetry's waits out the exporter's timeout (10 s) after it."""
    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(1 << 20)

    silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        bridge = bridge_process(
            "serve", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, BRIDGE_TRACING="on", BRIDGE_SHUTDOWN_GRACE="3",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}", OTEL_BSP_SCHEDULE_DELAY="50",
        )
        await bridge.wait_for_readiness(200, 60)
        assert (await bridge.deliver(sample("role.created")))[0] == 201
        async with asyncio.timeout(10):
            while not held:  # the export is under way, and stuck
                await asyncio.sleep(0.05)
        started = time.monotonic()
        bridge.process.terminate()
        code, output = await asyncio.to_thread(bridge.output_after_exit, 30)
        took = time.monotonic() - started
    finally:
        silent.close()
        for writer in held:
            writer.close()

    assert code == 0, output
    assert took < 4.5, f"exit took {took:.1f}s after SIGTERM with a 3 s grace"
