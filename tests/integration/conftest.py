"""A bridge wired to the session's real Kafka, with topics private to each test."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from bridge.app import Bridge, Listeners, create_admin_app, create_app, listen
from bridge.config import Settings
from bridge.metrics import Metrics
from bridge.publish import KafkaPublisher
from tests.helpers import body_of, free_port, signed_headers

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


@dataclass
class ListeningBridge:
    """A bridge on real sockets, with the public port's limits in force (what `serve` runs)."""

    bridge: Bridge
    port: int
    admin_port: int
    prefix: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.bridge.settings.webhook_path}"

    def refusals(self, reason: str) -> float:
        return self.bridge.metrics.http_refusals.labels(reason=reason)._value.get()


ListeningFactory = Callable[..., Awaitable[ListeningBridge]]


@pytest.fixture
async def listening_bridge(kafka_bootstrap, unique) -> AsyncIterator[ListeningFactory]:
    """Start `bridge.app.listen` on free loopback ports against the session broker; env overrides."""
    started: list[tuple[Listeners, KafkaPublisher]] = []

    async def start(**env: str) -> ListeningBridge:
        prefix = f"h{unique}."
        settings = Settings.from_env(
            {
                "SCALEKIT_WEBHOOK_SECRET": SECRET,
                "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "BRIDGE_HOST": "127.0.0.1",
                "BRIDGE_ADMIN_HOST": "127.0.0.1",
                "BRIDGE_PORT": str(free_port()),
                "BRIDGE_ADMIN_PORT": str(free_port()),
                "BRIDGE_TOPIC_PREFIX": prefix,
                "BRIDGE_DEADLETTER_TOPIC": f"{prefix}deadletter",
                **env,
            }
        )
        publisher = KafkaPublisher(
            settings.kafka, timeout=settings.publish_timeout, max_record_bytes=settings.max_body_bytes
        )
        await publisher.start()
        bridge = Bridge.assemble(settings, publisher, Metrics(process_metrics=False))
        listeners = await listen(bridge)
        started.append((listeners, publisher))
        port, admin_port = listeners.ports
        return ListeningBridge(bridge, port, admin_port, prefix)

    yield start
    for listeners, publisher in started:
        await listeners.close(timeout=1.0)
        await publisher.stop()
