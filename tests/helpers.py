"""Test-side signing with the `standardwebhooks` reference library, not with our own code."""

from __future__ import annotations

import json
import socket
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from standardwebhooks.webhooks import Webhook


def signed_headers(secret: str, body: bytes, *, webhook_id: str | None = None, timestamp: int | None = None) -> dict[str, str]:
    """Headers Scalekit would send with `body`, signed by the reference implementation."""
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = Webhook(secret).sign(
        webhook_id, datetime.fromtimestamp(timestamp, tz=timezone.utc), body.decode("utf-8")
    )
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def body_of(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope).encode("utf-8")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
