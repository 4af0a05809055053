"""`scalekit-bridge send-test`: the dashboard's "Send Test Event", for local use.

Signs one packaged sample delivery (there is one per documented Scalekit event
type) exactly as Scalekit would and POSTs it with the standard library's HTTP
client, so it also runs where the bridge's server dependencies are not wanted.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from importlib import resources
from typing import Any

from bridge.verify import SigningKey, signature_header

_SAMPLES = resources.files("bridge") / "samples"


def sample_types() -> list[str]:
    """Every documented Scalekit event type we carry a sample of."""
    return sorted(entry.name.removesuffix(".json") for entry in _SAMPLES.iterdir() if entry.name.endswith(".json"))


def sample(event_type: str) -> dict[str, Any]:
    """The packaged sample envelope for `event_type`; KeyError if there is none."""
    if event_type not in sample_types():
        raise KeyError(event_type)
    document: dict[str, Any] = json.loads((_SAMPLES / f"{event_type}.json").read_text(encoding="utf-8"))
    return document


def fresh_delivery(event_type: str) -> dict[str, Any]:
    """A sample with a new event id and time, so each test event is a distinct event."""
    envelope = sample(event_type)
    envelope["id"] = f"evt_test_{secrets.token_hex(8)}"
    envelope["occurred_at"] = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return envelope


def signed_headers(key: SigningKey, body: bytes) -> dict[str, str]:
    """The headers Scalekit sends with `body`: a fresh webhook-id, the current time, the signature."""
    webhook_id = f"msg_{secrets.token_hex(12)}"
    timestamp = str(int(time.time()))
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": signature_header(key, webhook_id, timestamp, body),
    }


def signed_request(url: str, key: SigningKey, body: bytes) -> urllib.request.Request:
    return urllib.request.Request(url, data=body, method="POST", headers=signed_headers(key, body))


def send(url: str, key: SigningKey, event_type: str, timeout: float = 15.0) -> tuple[int, str]:
    """POST one signed test delivery; returns the status and the response text."""
    body = json.dumps(fresh_delivery(event_type)).encode("utf-8")
    try:
        with urllib.request.urlopen(signed_request(url, key, body), timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
