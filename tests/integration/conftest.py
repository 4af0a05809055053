"""A bridge wired to the session's real Kafka, with topics private to each test."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from bridge.app import Bridge, create_admin_app, create_app
from bridge.config import Settings
from bridge.metrics import Metrics
from bridge.publish import KafkaPublisher
from tests.helpers import body_of, signed_headers

SECRET = "whsec_" + base64.b64encode(b"integration-secret-bytes-32-long").decode()


@dataclass
class RunningBridge:
    bridge: Bridge
    client: Any
    admin: Any
    prefix: str

    @property
    def deadletter_topic(self) -> str:
        return self.bridge.settings.deadletter_topic

    def topic(self, event_type: str) -> str:
        return self.prefix + event_type

    async def deliver(
        self, payload: dict[str, Any] | bytes, *, secret: str = SECRET, webhook_id: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        body = payload if isinstance(payload, bytes) else body_of(payload)
        response = await self.client.post(
            self.bridge.settings.webhook_path, data=body, headers=signed_headers(secret, body, webhook_id=webhook_id)
        )
        return response.status, await response.json()


BridgeFactory = Callable[..., Awaitable[RunningBridge]]


@pytest.fixture
async def start_bridge(kafka_bootstrap, unique, aiohttp_client) -> AsyncIterator[BridgeFactory]:
    """Start a bridge whose topics are `t<unique>.<type>`; env overrides the defaults."""
    publishers: list[KafkaPublisher] = []

    async def start(**env: str) -> RunningBridge:
        prefix = f"t{unique}."
        settings = Settings.from_env(
            {
                "SCALEKIT_WEBHOOK_SECRET": SECRET,
                "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "BRIDGE_TOPIC_PREFIX": prefix,
                "BRIDGE_DEADLETTER_TOPIC": f"{prefix}deadletter",
                **env,
            }
        )
        publisher = KafkaPublisher(
            settings.kafka, timeout=settings.publish_timeout, max_record_bytes=settings.max_body_bytes
        )
        await publisher.start()
        publishers.append(publisher)
        bridge = Bridge.assemble(settings, publisher, Metrics())
        return RunningBridge(
            bridge, await aiohttp_client(create_app(bridge)), await aiohttp_client(create_admin_app(bridge)), prefix
        )

    yield start
    for publisher in publishers:
        await publisher.stop()
