"""The HTTP surface: status codes, JSON error bodies and probes, on the real listeners (aiohttp's server
inside the connection guard, as `serve` runs them).

The publisher is faked here; delivery itself is proven against a real broker in tests/integration.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
from collections.abc import AsyncIterator

import pytest
import uvloop

from bridge.app import Listeners, listen
from bridge.config import Settings
from bridge.core import Ack, Outcome
from bridge.envelope import KafkaMessage
from bridge.errors import PublishFailed
from bridge.guard import Connection
from bridge.metrics import Metrics
from bridge.pipeline import Receipt
from bridge.service import Bridge
from tests.fakes import RecordingProducer
from tests.helpers import body_of, loopback, serving, signed_headers

SECRET = "whsec_" + base64.b64encode(b"h" * 32).decode()
ENVELOPE = {"id": "evt_1", "type": "role.created", "environment_id": "env_1", "data": {}}


class RefusingPublisher:
    """Stands in for Kafka being down: every write fails, nothing is ever acknowledged."""

    ready = False
    missing_topics: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.attempts: list[KafkaMessage] = []

    async def publish(self, message: KafkaMessage) -> Ack:
        self.attempts.append(message)
        raise PublishFailed("no broker acknowledgement within 8s")


@pytest.fixture
def bridge() -> Bridge:
    settings = Settings.from_env({"SCALEKIT_WEBHOOK_SECRET": SECRET, "BRIDGE_MAX_BODY_BYTES": "1024", **loopback()})
    return Bridge.assemble(settings, RefusingPublisher(), Metrics(process_metrics=False))


@pytest.fixture
async def clients(bridge):
    async with serving(bridge) as both:
        yield both


@pytest.fixture
def client(clients):
    return clients[0]


@pytest.fixture
def admin(clients):
    return clients[1]


async def post(client, body: bytes, headers: dict[str, str]):
    response = await client.post("/webhooks/scalekit", data=body, headers=headers)
    return response.status, await response.json(), response.headers


async def test_an_unverifiable_delivery_gets_401_with_a_json_reason_and_no_write(client, bridge):
    body = body_of(ENVELOPE)
    status, answer, _ = await post(client, body, signed_headers(SECRET, body) | {"webhook-signature": "v1,AAAA"})
    assert (status, answer["error"]) == (401, "no_matching_signature")
    assert bridge.publisher.attempts == []


async def test_an_oversized_body_gets_413_before_verification(client, bridge):
    body = b"x" * 1025
    status, answer, _ = await post(client, body, {"webhook-id": "m"})
    assert (status, answer["error"]) == (413, "payload_too_large")
    assert bridge.publisher.attempts == []


async def test_an_oversized_chunked_body_gets_413(client):
    async def chunks():
        for _ in range(3):
            yield b"y" * 600

    response = await client.post("/webhooks/scalekit", data=chunks())
    assert response.status == 413
    assert (await response.json())["error"] == "payload_too_large"


async def test_broker_trouble_gets_503_with_retry_after(client, bridge):
    body = body_of(ENVELOPE)
    status, answer, headers = await post(client, body, signed_headers(SECRET, body))
    assert (status, answer["error"]) == (503, "kafka_unavailable")
    assert headers["Retry-After"] == "5"
    assert len(bridge.publisher.attempts) == 1


async def test_a_failed_delivery_is_not_remembered_so_the_retry_publishes_again(client, bridge):
    body = body_of(ENVELOPE)
    headers = signed_headers(SECRET, body)
    for _ in range(2):
        assert (await post(client, body, headers))[0] == 503
    assert len(bridge.publisher.attempts) == 2


async def test_a_draining_instance_answers_503_and_writes_nothing(client, bridge):
    bridge.lifecycle.accepting = False
    body = body_of(ENVELOPE)
    status, answer, headers = await post(client, body, signed_headers(SECRET, body))
    assert (status, answer["error"], headers["Retry-After"]) == (503, "shutting_down", "5")
    assert bridge.publisher.attempts == []


async def test_wrong_method_is_405_with_allow_and_other_paths_404(client):
    wrong = await client.get("/webhooks/scalekit")
    assert (wrong.status, wrong.headers["Allow"]) == (405, "POST")
    missing = await client.post("/elsewhere", data=b"{}")
    assert missing.status == 404 and (await missing.json())["error"] == "not_found"


async def test_a_load_balancer_health_check_on_the_public_root_gets_200_and_no_more(client, bridge):
    """GKE Ingress and Azure's Application Gateway probe GET / on the serving port by default."""
    bridge.lifecycle.accepting = False  # a constant answer: readiness is Kubernetes' business, not the balancer's
    for method in (client.get, client.head):
        answer = await method("/")
        assert answer.status == 200 and answer.headers["Server"] == "scalekit-bridge"
    assert await (await client.get("/")).json() == {"status": "serving"}
    not_get = await client.post("/", data=b"{}")
    assert (not_get.status, not_get.headers["Allow"], (await not_get.json())["error"]) == (
        405, "GET,HEAD", "method_not_allowed"
    )
    assert (await client.get("/healthz")).status == 404  # the admin port's endpoints stay there
    assert bridge.publisher.attempts == []


async def test_liveness_is_up_while_readiness_follows_kafka(admin, bridge):
    assert (await admin.get("/healthz")).status == 200
    ready = await admin.get("/readyz")
    assert ready.status == 503
    assert json.loads(await ready.text()) == {
        "ready": False, "kafka": "unreachable", "accepting": True, "draining": False
    }


async def test_readiness_says_when_it_is_down_because_the_instance_is_draining(admin, bridge):
    bridge.lifecycle.drain(30.0)
    answer = json.loads(await (await admin.get("/readyz")).text())
    assert (answer["ready"], answer["accepting"], answer["draining"]) == (False, False, True)


async def test_metrics_count_rejections_by_reason(client, admin):
    body = body_of(ENVELOPE)
    await post(client, body, signed_headers(SECRET, body, timestamp=1))
    text = await (await admin.get("/metrics")).text()
    assert 'scalekit_bridge_verification_failures_total{reason="timestamp_too_old"} 1.0' in text
    assert 'scalekit_bridge_deliveries_total{event_type="unknown",outcome="rejected"} 1.0' in text
    assert "scalekit_bridge_ready 0.0" in text


async def test_a_compressed_body_is_refused_with_415_and_never_verified(client, bridge):
    body = body_of(ENVELOPE)
    headers = signed_headers(SECRET, body) | {"Content-Encoding": "br"}
    status, answer, _ = await post(client, body, headers)
    assert (status, answer["error"]) == (415, "unsupported_content_encoding")
    assert bridge.publisher.attempts == []


class BrokenPublisher(RefusingPublisher):
    """A publisher with a bug: it raises something nobody planned for."""

    async def publish(self, message: KafkaMessage) -> Ack:
        raise RuntimeError("a bug, with input in its message: v1,c2VjcmV0")


async def test_an_unexpected_exception_is_answered_counted_and_logged_without_its_message(caplog):
    settings = Settings.from_env({"SCALEKIT_WEBHOOK_SECRET": SECRET, **loopback()})
    broken = Bridge.assemble(settings, BrokenPublisher(), Metrics(process_metrics=False))
    body = body_of(ENVELOPE)

    async with serving(broken) as (client, _admin):
        status, answer, _ = await post(client, body, signed_headers(SECRET, body))

    assert (status, answer["error"]) == (500, "internal_error")
    assert broken.metrics.registry.get_sample_value("scalekit_bridge_internal_errors_total") == 1
    logged = "\n".join(str(vars(record)) for record in caplog.records)
    assert "RuntimeError" in logged and "c2VjcmV0" not in logged


# --- what aiohttp's server and the guard do on the public port --------------------------------------


@pytest.fixture
async def accepting():
    """A bridge whose (fake) Kafka acknowledges everything, on real loopback sockets."""
    producer = RecordingProducer()
    settings = Settings.from_env({"SCALEKIT_WEBHOOK_SECRET": SECRET, **loopback()})
    bridge = Bridge.assemble(settings, producer, Metrics(process_metrics=False))
    async with serving(bridge):
        yield bridge, producer


def signed_request(envelope: dict, *, version: str = "1.1", **extra: str) -> bytes:
    body = body_of(envelope)
    headers = signed_headers(SECRET, body) | {"Host": "bridge", "Content-Length": str(len(body))} | extra
    head = f"POST /webhooks/scalekit HTTP/{version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + body


async def exchange(port: int, data: bytes, *, until_closed: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        async with asyncio.timeout(5):
            return await reader.read() if until_closed else await reader.read(65536)
    finally:
        writer.close()


def statuses(raw: bytes) -> list[int]:
    """The status of every answer in `raw`, in order (an answer's head follows the last one's body;
    aiohttp answers an HTTP/1.0 request in HTTP/1.0)."""
    return [int(status) for status in re.findall(rb"HTTP/1\.[01] (\d{3}) ", raw)]


async def test_pipelined_requests_are_answered_in_the_order_they_were_sent(accepting):
    bridge, producer = accepting
    first = signed_request(ENVELOPE | {"id": "evt_first"})
    second = signed_request(ENVELOPE | {"id": "evt_second"}, Connection="close")

    raw = await exchange(bridge.settings.port, first + second)

    assert statuses(raw) == [201, 201]
    assert [dict(m.headers)["ce_id"] for m in producer.handed] == [b"evt_first", b"evt_second"]


async def test_a_refusal_ends_the_connection_and_nothing_pipelined_after_it_is_read(accepting):
    bridge, producer = accepting
    refused = b"POST /elsewhere HTTP/1.1\r\nHost: bridge\r\nContent-Length: 2\r\n\r\n{}"

    raw = await exchange(bridge.settings.port, refused + signed_request(ENVELOPE))

    assert statuses(raw) == [404]
    assert producer.handed == []


async def test_a_client_that_expects_100_continue_is_told_to_go_on(accepting):
    bridge, producer = accepting
    request = signed_request(ENVELOPE, Expect="100-continue", Connection="close")
    head, body = request.split(b"\r\n\r\n", 1)
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.settings.port)
    writer.write(head + b"\r\n\r\n")
    async with asyncio.timeout(5):
        interim = await reader.readuntil(b"\r\n\r\n")
        writer.write(body)
        final = await reader.read()
    writer.close()

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert statuses(final) == [201]
    assert len(producer.handed) == 1


async def test_answers_carry_a_date_and_no_version_banner_and_http_1_0_closes(accepting):
    bridge, _ = accepting

    raw = await exchange(bridge.settings.port, signed_request(ENVELOPE, version="1.0"))  # returns at the close

    head = raw.split(b"\r\n\r\n", 1)[0].decode().lower()
    assert statuses(raw) == [201]
    assert "\r\ndate: " in head and "keep-alive" not in head  # HTTP/1.0: closing is the default
    assert "\r\nserver: scalekit-bridge\r\n" in head + "\r\n"
    assert "aiohttp" not in head and "python" not in head
    assert json.loads(raw.split(b"\r\n\r\n", 1)[1]) == {"received": True, "outcome": "published"}


def test_under_uvloop_the_guard_keeps_its_deadlines_and_aiohttp_answers():
    """`serve` runs on uvloop by default; its timer and transport objects are not asyncio's."""

    async def scenario() -> tuple[bytes, bytes]:
        producer = RecordingProducer()
        settings = Settings.from_env(
            {"SCALEKIT_WEBHOOK_SECRET": SECRET, "BRIDGE_HEADER_TIMEOUT": "0.3", **loopback()}
        )
        bridge = Bridge.assemble(settings, producer, Metrics(process_metrics=False))
        async with serving(bridge):
            delivered = await exchange(bridge.settings.port, signed_request(ENVELOPE, Connection="close"))
            reader, writer = await asyncio.open_connection("127.0.0.1", bridge.settings.port)
            writer.write(b"POST /webhooks/scalekit HTTP/1.1\r\nHost: bri")
            async with asyncio.timeout(5):
                cut_off = await reader.read()
            writer.close()
        return delivered, cut_off

    delivered, cut_off = uvloop.run(scenario())

    assert statuses(delivered) == [201]
    assert statuses(cut_off) == [408]
    assert b'"header_timeout"' in cut_off


class TransportThatRecords(asyncio.Transport):
    """Keeps what the server writes and whether it reads, without a socket."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.reading = True
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += bytes(data)

    def writelines(self, list_of_data) -> None:
        for data in list_of_data:
            self.write(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


@pytest.fixture
async def recording() -> AsyncIterator[tuple[Listeners, RecordingProducer]]:
    """`serve`'s listeners for a bridge whose (fake) Kafka acknowledges everything."""
    producer = RecordingProducer()
    settings = Settings.from_env({"SCALEKIT_WEBHOOK_SECRET": SECRET, **loopback()})
    listeners = await listen(Bridge.assemble(settings, producer, Metrics(process_metrics=False)))
    yield listeners, producer
    await listeners.close()


def public_connection(listeners: Listeners) -> tuple[Connection, TransportThatRecords]:
    """A public-port connection as `serve` makes one (the guard around aiohttp's protocol), on a recording transport."""
    server = listeners.runners[0].server
    assert server is not None
    connection = listeners.guard.wrap(server)()
    assert isinstance(connection, Connection)
    transport = TransportThatRecords()
    connection.connection_made(transport)
    return connection, transport


async def until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_client_that_does_not_read_its_answers_is_not_read_from_either(recording):
    connection, transport = public_connection(recording[0])

    connection.pause_writing()  # the socket's send buffer is full: the client reads nothing
    connection.data_received(signed_request(ENVELOPE))
    await until(lambda: statuses(transport.written))

    assert statuses(transport.written) == [201]
    assert not transport.reading
    connection.resume_writing()
    assert transport.reading


async def test_a_pipelining_client_is_not_read_from_while_its_delivery_is_worked_on(recording):
    """Once a request's body is in, what the client sends next is taken in one read and then nothing more
    until the request is answered: a client that sends request after request without waiting makes the
    bridge hold one at a time, not a queue. A client that waits for its answers costs no pause at all."""
    _listeners, producer = recording
    producer.hold = asyncio.Event()  # Kafka's acknowledgement waits
    connection, transport = public_connection(recording[0])

    connection.data_received(signed_request(ENVELOPE | {"id": "evt_1"}))
    await until(lambda: producer.handed)
    assert transport.reading  # nothing more has come: no reason to stop reading

    connection.data_received(signed_request(ENVELOPE | {"id": "evt_2"}))  # pipelined behind the first
    assert not transport.reading

    producer.hold.set()
    await until(lambda: statuses(transport.written) == [201, 201])
    await until(lambda: transport.reading)  # both answered: the next request may come
    assert [dict(m.headers)["ce_id"] for m in producer.handed] == [b"evt_1", b"evt_2"]


async def test_a_request_whose_body_is_still_coming_is_read_until_it_is_in(recording):
    connection, transport = public_connection(recording[0])
    request = signed_request(ENVELOPE)
    head_and_some, rest = request[:-10], request[-10:]

    connection.data_received(head_and_some)
    await asyncio.sleep(0.05)
    assert transport.reading and not transport.written
    connection.data_received(rest)
    await until(lambda: statuses(transport.written))

    assert statuses(transport.written) == [201]


async def test_a_receipt_that_earns_no_201_is_a_counted_500_not_a_silent_hang():
    class Confused:
        """A pipeline with a bug: it returns a receipt for an outcome that earns no 201."""

        async def handle(self, headers, body):
            return Receipt(Outcome.REJECTED, "msg_1")

        def refuse_oversized(self, started):
            return None

    settings = Settings.from_env({"SCALEKIT_WEBHOOK_SECRET": SECRET, **loopback()})
    bridge = Bridge.assemble(settings, RecordingProducer(), Metrics(process_metrics=False))
    confused = dataclasses.replace(bridge, pipeline=Confused())

    async with serving(confused) as (client, _admin):
        status, answer, _ = await post(client, body_of(ENVELOPE), signed_headers(SECRET, body_of(ENVELOPE)))

    assert (status, answer["error"]) == (500, "internal_error")
    assert bridge.metrics.registry.get_sample_value("scalekit_bridge_internal_errors_total") == 1
