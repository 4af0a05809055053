"""docs/embedding.md's "Inside your aiohttp service" example, run as written against a real Kafka.

`make_app()` is served by aiohttp's own test server, so its cleanup context starts and flushes the
producer as `web.run_app` would; every 201 is read back from the broker.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.dev.sendtest import signed_headers
from bridge.dev.topics import Record, read_topics
from bridge.testing import free_port, new_secret
from bridge.verify import SigningKey
from examples.aiohttp_service.service import make_app

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "docs" / "embedding.md"
Client = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, scalekit_kafka: str) -> dict[str, str]:
    """What the service's deployment would set: the secret, the broker, topics of this test's own."""
    prefix = f"embedded{secrets.token_hex(4)}."
    env = {
        "SCALEKIT_WEBHOOK_SECRET": new_secret(),
        "KAFKA_BOOTSTRAP_SERVERS": scalekit_kafka,
        "BRIDGE_TOPIC_PREFIX": prefix,
        "BRIDGE_DEADLETTER_TOPIC": prefix + "deadletter",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


async def post(client: TestClient, body: bytes, secret: str) -> tuple[int, dict[str, Any], str | None]:
    headers = signed_headers(SigningKey.from_secret(secret), body)
    response = await client.post("/webhooks/scalekit", data=body, headers=headers)
    return response.status, await response.json(), response.headers.get("Retry-After")


async def records(env: dict[str, str], topic: str) -> list[Record]:
    return await read_topics(env["KAFKA_BOOTSTRAP_SERVERS"], {topic}.__contains__, 30.0)


async def until_ready(client: TestClient) -> None:
    for _ in range(300):
        if (await client.get("/scalekit/readyz")).status == 200:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the embedded bridge never became ready")


def test_the_readme_shows_this_example_as_it_is():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Inside your aiohttp service", 1)[1].split("\n## ", 1)[0]
    shown = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert shown is not None
    source = (Path(__file__).parent / "service.py").read_text(encoding="utf-8")
    assert shown.group(1).strip() in source


async def test_a_signed_delivery_is_201_only_with_its_record_in_kafka(
    aiohttp_client: Client, environment, scalekit_event
):
    client = await aiohttp_client(make_app())
    await until_ready(client)
    event = scalekit_event("organization.created")

    status, answer, _ = await post(client, json.dumps(event).encode(), environment["SCALEKIT_WEBHOOK_SECRET"])

    assert (status, answer) == (201, {"received": True, "outcome": "published"})
    written = await records(environment, environment["BRIDGE_TOPIC_PREFIX"] + "organization.created")
    assert [record.header("ce_id") for record in written] == [event["id"].encode()]
    assert (await client.get("/")).status == 200  # the service's own routes are untouched


async def test_an_unverifiable_delivery_is_401_with_a_reason_and_nothing_is_written(
    aiohttp_client: Client, environment, scalekit_event
):
    client = await aiohttp_client(make_app())
    await until_ready(client)
    body = json.dumps(scalekit_event("organization.created")).encode()

    status, answer, _ = await post(client, body, new_secret())

    assert (status, answer["error"]) == (401, "no_matching_signature")
    assert await records(environment, environment["BRIDGE_TOPIC_PREFIX"] + "organization.created") == []


async def test_a_verified_but_malformed_delivery_is_dead_lettered_then_201(aiohttp_client: Client, environment):
    client = await aiohttp_client(make_app())
    await until_ready(client)

    status, answer, _ = await post(client, b"not json", environment["SCALEKIT_WEBHOOK_SECRET"])

    assert (status, answer["outcome"]) == (201, "deadlettered")
    letters = await records(environment, environment["BRIDGE_DEADLETTER_TOPIC"])
    assert [(letter.value, letter.header("deadletter-reason")) for letter in letters] == [
        (b"not json", b"body is not JSON")
    ]


async def test_with_kafka_down_deliveries_get_503_and_readiness_says_so(
    aiohttp_client: Client, environment, monkeypatch: pytest.MonkeyPatch, scalekit_event
):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")  # nothing listens there
    client = await aiohttp_client(make_app())
    body = json.dumps(scalekit_event("organization.created")).encode()

    status, answer, retry_after = await post(client, body, environment["SCALEKIT_WEBHOOK_SECRET"])
    ready = await client.get("/scalekit/readyz")

    assert (status, answer["error"], retry_after) == (503, "kafka_unavailable", "5")
    assert (ready.status, (await ready.json())["kafka"]) == (503, "unreachable")


async def test_the_host_exposes_the_bridge_metrics(aiohttp_client: Client, environment, scalekit_event):
    client = await aiohttp_client(make_app())
    await until_ready(client)
    await post(client, json.dumps(scalekit_event("role.created")).encode(), environment["SCALEKIT_WEBHOOK_SECRET"])

    exposition = await (await client.get("/scalekit/metrics")).text()

    assert 'scalekit_bridge_deliveries_total{event_type="role.created",outcome="published"} 1.0' in exposition
    assert "scalekit_bridge_ready 1.0" in exposition
