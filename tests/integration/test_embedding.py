"""Embedding beyond docs/embedding.md's example: two Scalekit environments in one application, a host middleware
that read the body first, probes mounted on another sub-application. Against the real Kafka."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.app import metrics, readyz, setup_webhook
from bridge.config import Settings
from bridge.dev.samples import sample
from tests.helpers import signed_headers
from tests.integration.conftest import SECRET, settings_for

pytestmark = pytest.mark.integration

Client = Callable[..., Awaitable[TestClient]]
OTHER_SECRET = "whsec_b3RoZXItZW52aXJvbm1lbnQtc2VjcmV0LWJ5dGVz"


def environment(kafka_bootstrap: str, prefix: str, path: str, secret: str) -> Settings:
    return settings_for(kafka_bootstrap, prefix, BRIDGE_WEBHOOK_PATH=path, SCALEKIT_WEBHOOK_SECRET=secret)


async def until_ready(client: TestClient, path: str) -> None:
    async with asyncio.timeout(30):
        while (await client.get(path)).status != 200:
            await asyncio.sleep(0.1)


async def post(client: TestClient, path: str, envelope: dict, secret: str) -> tuple[int, dict]:
    body = json.dumps(envelope).encode()
    response = await client.post(path, data=body, headers=signed_headers(secret, body))
    return response.status, await response.json()


async def test_two_environments_in_one_application_each_take_only_their_own_deliveries(
    aiohttp_client: Client, kafka_bootstrap, kafka, unique
):
    app = web.Application()
    staging = setup_webhook(app, environment(kafka_bootstrap, f"s{unique}.", "/scalekit/staging", SECRET))
    production = setup_webhook(app, environment(kafka_bootstrap, f"p{unique}.", "/scalekit/production", OTHER_SECRET))
    app.router.add_get("/staging/readyz", staging.readyz)
    app.router.add_get("/production/readyz", production.readyz)
    app.router.add_get("/readyz", readyz)
    client = await aiohttp_client(app)
    await until_ready(client, "/readyz")
    staged, produced = sample("role.created") | {"id": "evt_staging"}, sample("role.created") | {"id": "evt_prod"}

    assert (await post(client, "/scalekit/staging", staged, SECRET))[0] == 201
    assert (await post(client, "/scalekit/production", produced, OTHER_SECRET))[0] == 201
    assert (await post(client, "/scalekit/staging", produced, OTHER_SECRET))[0] == 401
    assert (await post(client, "/scalekit/production", staged, SECRET))[0] == 401

    staged_records = await kafka.read_all(f"s{unique}.role.created")
    produced_records = await kafka.read_all(f"p{unique}.role.created")
    assert [r.header("ce_id") for r in staged_records] == [b"evt_staging"]
    assert [r.header("ce_id") for r in produced_records] == [b"evt_prod"]
    both = await (await client.get("/readyz")).json()
    assert set(both["webhooks"]) == {"/scalekit/staging", "/scalekit/production"} and both["ready"] is True


def test_a_second_webhook_on_a_path_already_taken_is_refused(kafka_bootstrap):
    app = web.Application()
    setup_webhook(app, environment(kafka_bootstrap, "a.", "/scalekit", SECRET))
    with pytest.raises(ValueError, match="already set up on /scalekit"):
        setup_webhook(app, environment(kafka_bootstrap, "b.", "/scalekit", OTHER_SECRET))


async def test_a_body_a_middleware_read_with_request_read_is_the_body_verified(
    aiohttp_client: Client, kafka_bootstrap, kafka, unique
):
    @web.middleware
    async def audit(request: web.Request, handler):
        await request.read()  # the host logs or checks the body first
        return await handler(request)

    app = web.Application(middlewares=[audit])
    webhook = setup_webhook(app, environment(kafka_bootstrap, f"m{unique}.", "/scalekit", SECRET))
    app.router.add_get("/readyz", webhook.readyz)
    client = await aiohttp_client(app)
    await until_ready(client, "/readyz")

    status, answer = await post(client, "/scalekit", sample("role.created") | {"id": "evt_read_first"}, SECRET)

    assert (status, answer["outcome"]) == (201, "published")
    assert [r.header("ce_id") for r in await kafka.read_all(f"m{unique}.role.created")] == [b"evt_read_first"]


async def test_a_body_a_middleware_consumed_is_a_loud_500_not_a_misleading_401(
    aiohttp_client: Client, kafka_bootstrap, unique, caplog
):
    @web.middleware
    async def consume(request: web.Request, handler):
        await request.content.read()  # gone: aiohttp keeps nothing read this way
        return await handler(request)

    app = web.Application(middlewares=[consume])
    webhook = setup_webhook(app, environment(kafka_bootstrap, f"c{unique}.", "/scalekit", SECRET))
    app.router.add_get("/readyz", webhook.readyz)
    app.router.add_get("/metrics", webhook.metrics)
    client = await aiohttp_client(app)
    await until_ready(client, "/readyz")

    status, answer = await post(client, "/scalekit", sample("role.created"), SECRET)

    assert (status, answer["error"]) == (500, "body_unavailable")
    assert "scalekit_bridge_internal_errors_total 1.0" in await (await client.get("/metrics")).text()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("read before the webhook handler" in message for message in errors)


async def test_probes_work_on_any_sub_application_and_say_so_where_no_webhook_is_in_reach(
    aiohttp_client: Client, kafka_bootstrap, unique
):
    root, webhooks, ops = web.Application(), web.Application(), web.Application()
    webhook = setup_webhook(webhooks, environment(kafka_bootstrap, f"x{unique}.", "/scalekit", SECRET))
    ops.router.add_get("/readyz", webhook.readyz)  # the webhook's own handler: found from anywhere
    ops.router.add_get("/metrics", webhook.metrics)
    ops.router.add_get("/lost-readyz", readyz)  # the module's: looks in ops and root only
    ops.router.add_get("/lost-metrics", metrics)
    root.add_subapp("/hooks", webhooks)
    root.add_subapp("/ops", ops)
    client = await aiohttp_client(root)

    await until_ready(client, "/ops/readyz")
    assert "scalekit_bridge_ready 1.0" in await (await client.get("/ops/metrics")).text()
    for lost in ("/ops/lost-readyz", "/ops/lost-metrics"):
        response = await client.get(lost)
        assert (response.status, (await response.json())["error"]) == (500, "no_single_webhook")
