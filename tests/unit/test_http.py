"""The HTTP surface: status codes, JSON error bodies and probes.

The publisher is faked here; delivery itself is proven against a real broker in tests/integration.
"""

from __future__ import annotations

import base64
import json

import pytest

from bridge.app import Bridge, create_admin_app, create_app
from bridge.config import Settings
from bridge.core import Ack
from bridge.envelope import KafkaMessage
from bridge.errors import PublishFailed
from bridge.metrics import Metrics
from tests.helpers import body_of, signed_headers

SECRET = "whsec_" + base64.b64encode(b"h" * 32).decode()
ENVELOPE = {"id": "evt_1", "type": "role.created", "environment_id": "env_1", "data": {}}


class RefusingPublisher:
    """Stands in for Kafka being down: every write fails, nothing is ever acknowledged."""

    ready = False

    def __init__(self) -> None:
        self.attempts: list[KafkaMessage] = []

    async def publish(self, message: KafkaMessage) -> Ack:
        self.attempts.append(message)
        raise PublishFailed("no broker acknowledgement within 8s")


@pytest.fixture
def bridge() -> Bridge:
    settings = Settings.from_env({"SCALEKIT_WEBHOOK_SECRET": SECRET, "BRIDGE_MAX_BODY_BYTES": "1024"})
    return Bridge.assemble(settings, RefusingPublisher(), Metrics(process_metrics=False))


@pytest.fixture
async def client(aiohttp_client, bridge):
    return await aiohttp_client(create_app(bridge))


@pytest.fixture
async def admin(aiohttp_client, bridge):
    return await aiohttp_client(create_admin_app(bridge))


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


async def test_liveness_is_up_while_readiness_follows_kafka(admin, bridge):
    assert (await admin.get("/healthz")).status == 200
    ready = await admin.get("/readyz")
    assert ready.status == 503
    assert json.loads(await ready.text()) == {"ready": False, "kafka": "unreachable", "accepting": True}


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


async def test_an_unexpected_exception_is_answered_counted_and_logged_without_its_message(aiohttp_client, caplog):
    settings = Settings.from_env({"SCALEKIT_WEBHOOK_SECRET": SECRET})
    broken = Bridge.assemble(settings, BrokenPublisher(), Metrics(process_metrics=False))
    client = await aiohttp_client(create_app(broken))
    body = body_of(ENVELOPE)

    status, answer, _ = await post(client, body, signed_headers(SECRET, body))

    assert (status, answer["error"]) == (500, "internal_error")
    assert broken.metrics.registry.get_sample_value("scalekit_bridge_internal_errors_total") == 1
    logged = "\n".join(str(vars(record)) for record in caplog.records)
    assert "RuntimeError" in logged and "c2VjcmV0" not in logged
