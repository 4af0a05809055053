"""Test-side signing with the `standardwebhooks` reference library, not with our own code;
and HTTP clients on a bridge's real listeners."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import ClientSession
from standardwebhooks.webhooks import Webhook

from bridge.testing import free_port

if TYPE_CHECKING:
    from bridge.service import Bridge

__all__ = ["body_of", "free_port", "loopback", "serving", "signed_headers"]


def loopback() -> dict[str, str]:
    """Settings that put both listeners on free loopback ports."""
    return {
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_ADMIN_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(free_port()),
        "BRIDGE_ADMIN_PORT": str(free_port()),
    }


@contextlib.asynccontextmanager
async def serving(bridge: Bridge) -> AsyncIterator[tuple[ClientSession, ClientSession]]:
    """`bridge`'s listeners, as `serve` opens them, and a client for each (public, admin)."""
    from bridge.app import listen

    listeners = await listen(bridge)
    public_port, admin_port = listeners.ports
    try:
        async with (
            ClientSession(base_url=f"http://127.0.0.1:{public_port}") as public,
            ClientSession(base_url=f"http://127.0.0.1:{admin_port}") as admin,
        ):
            yield public, admin
    finally:
        await listeners.close()


def signed_headers(
    secret: str, body: bytes, *, webhook_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    """Headers Scalekit would send with `body`, signed by the reference implementation."""
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = Webhook(secret).sign(webhook_id, datetime.fromtimestamp(timestamp, tz=UTC), body.decode("utf-8"))
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def body_of(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope).encode("utf-8")
